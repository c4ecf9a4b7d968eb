"""The operator's direct API calls give up on a server that stops answering and are tried again on a
fresh connection, writes too (the client's default is to wait for ever, and to retry only reads)."""

import socket
import threading

import pytest
from kubernetes.client import Configuration, CoreV1Api, CustomObjectsApi

from loraplane import kube


@pytest.mark.parametrize("method", ["GET", "PATCH"])
def test_a_call_the_server_never_answers_times_out_and_is_retried_on_new_connections(
    monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()  # and never answer
            except OSError:
                return
            accepted.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setattr(kube, "API_TIMEOUT_S", (1.0, 0.2))
    configuration = Configuration(host=f"http://127.0.0.1:{listener.getsockname()[1]}")
    configuration.retries = kube.API_RETRIES
    client = kube._TimedApiClient(configuration)
    call = (
        (lambda: CoreV1Api(client).read_namespace("default"))
        if method == "GET"
        else lambda: CustomObjectsApi(client).patch_namespaced_custom_object_status(
            "loraplane.io", "v1alpha1", "ns", "loraadapters", "a", {"status": {}}
        )
    )
    try:
        with pytest.raises(Exception, match=r"(?i)timed? ?out"):
            call()
        assert len(accepted) == 3  # the first try and two read retries, each on its own connection
    finally:
        listener.close()
        for connection in accepted:
            connection.close()


def test_a_call_that_names_its_own_timeout_keeps_it(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []

    def call_api(self: object, *args: object, _request_timeout: object = None) -> None:
        seen.append(_request_timeout)

    monkeypatch.setattr(kube.ApiClient, "call_api", call_api)
    client = kube._TimedApiClient(Configuration(host="http://127.0.0.1:1"))
    client.call_api("GET", "/x", _request_timeout=3)
    client.call_api("GET", "/x")
    assert seen == [3, kube.API_TIMEOUT_S]
