"""The operator's direct API calls give up on a server that stops answering, and a GET is tried again
on a fresh connection (the client's default is to wait for ever)."""

import socket
import threading

import pytest
from kubernetes.client import Configuration, CoreV1Api

from loraplane import kube


def test_a_get_the_server_never_answers_times_out_and_is_retried_on_new_connections(
    monkeypatch: pytest.MonkeyPatch,
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
    configuration.retries = 2
    try:
        with pytest.raises(Exception, match=r"(?i)timed? ?out"):
            CoreV1Api(kube._TimedApiClient(configuration)).read_namespace("default")
        assert len(accepted) == 3  # the first try and two retries, each on its own connection
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
