"""The vLLM client's classification of answers (as observed on vLLM 0.32), and its calls against a
local HTTP server that answers the way vLLM does."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from loraplane.vllm import Server, VllmError, classify, is_route_missing, parse_models, session


def error_body(message: str, type_: str) -> str:
    return json.dumps({"error": {"message": message, "type": type_}})


ALREADY = error_body(
    "The lora adapter 'b1' has already been loaded. If you want to load the adapter in place, set "
    "'load_inplace' to True.",
    "InvalidUserInput",
)
NO_ADAPTER = json.dumps(
    {"error": {"message": "Loading lora bad failed: No adapter found for /x", "type": "NotFoundError"}}
)
RANK = error_body(
    "Call to add_lora method failed: Worker failed with error "
    "'LoRA rank 16 is greater than max_lora_rank 8.'",
    "InternalServerError",
)
UNKNOWN = json.dumps(
    {"error": {"message": "The lora adapter 'zz' cannot be found.", "type": "NotFoundError"}}
)
ROUTE_MISSING = json.dumps({"detail": "Not Found"})


def test_a_bare_fastapi_404_means_the_runtime_api_is_off_and_says_how_to_fix_it() -> None:
    error = classify("load", 404, ROUTE_MISSING)
    assert error.reason == "RuntimeLoadingDisabled"
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in error.message
    assert "--enable-lora" in error.message
    assert is_route_missing(404, ROUTE_MISSING)
    assert not is_route_missing(404, NO_ADAPTER)


def test_a_missing_adapter_on_load_is_load_failed_with_vllms_message() -> None:
    error = classify("load", 404, NO_ADAPTER)
    assert error.reason == "LoadFailed"
    assert error.message == "Loading lora bad failed: No adapter found for /x"


def test_already_loaded_is_its_own_reason_for_the_caller_to_confirm() -> None:
    assert classify("load", 400, ALREADY).reason == "AlreadyLoaded"


def test_a_rank_above_the_ceiling_is_rank_too_high_with_both_numbers() -> None:
    error = classify("load", 500, RANK)
    assert error.reason == "RankTooHigh"
    assert error.message == "LoRA rank 16 is greater than the server's --max-lora-rank 8"


def test_unloading_an_unknown_name_is_not_found_and_a_500_is_load_failed() -> None:
    assert classify("unload", 404, UNKNOWN).reason == "NotFound"
    assert classify("unload", 404, ROUTE_MISSING).reason == "RuntimeLoadingDisabled"
    assert classify("load", 500, "plain text").message == "plain text"


def test_models_separates_the_base_card_from_adapter_cards() -> None:
    models = parse_models(
        {
            "data": [
                {"id": "tiny-llama", "root": "/models/model", "parent": None},
                {"id": "a1", "root": "/models/adapters/1", "parent": "tiny-llama"},
            ]
        }
    )
    assert (models.base_id, models.base_root) == ("tiny-llama", "/models/model")
    assert models.adapters == {"a1": "/models/adapters/1"}
    assert models.holds("a1", "/models/adapters/1")
    assert not models.holds("a1", "/models/adapters/2")


class FakeVllm(BaseHTTPRequestHandler):
    """Answers like vLLM 0.32 with the runtime API on; `adapters` is its state."""

    adapters: dict[str, str] = {}
    seen_auth: list[str | None] = []

    def _reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        cards = [{"id": "base", "root": "/m", "parent": None}]
        cards += [{"id": n, "root": p, "parent": "base"} for n, p in self.adapters.items()]
        self._reply(200, json.dumps({"data": cards}))

    def do_POST(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization"))
        body: dict[str, Any] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = body["lora_name"]
        if self.path == "/v1/load_lora_adapter":
            if name in self.adapters:
                self._reply(400, ALREADY)
            elif "bad" in body["lora_path"]:
                self._reply(404, NO_ADAPTER)
            else:
                self.adapters[name] = body["lora_path"]
                self._reply(200, f"Success: LoRA adapter '{name}' added successfully.")
        elif self.path == "/v1/unload_lora_adapter":
            if self.adapters.pop(name, None) is None:
                self._reply(404, UNKNOWN)
            else:
                self._reply(200, "Success")
        else:
            self._reply(404, ROUTE_MISSING)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def fake_vllm() -> Iterator[str]:
    FakeVllm.adapters, FakeVllm.seen_auth = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVllm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_load_confirm_unload_against_a_server_that_answers_like_vllm(fake_vllm: str) -> None:
    async def scenario() -> None:
        server = Server(fake_vllm, api_key="k", timeout_s=5)
        async with session() as client:
            await server.load(client, "a1", "/adapters/1")
            assert (await server.models(client)).holds("a1", "/adapters/1")
            with pytest.raises(VllmError) as again:
                await server.load(client, "a1", "/adapters/1")
            assert again.value.reason == "AlreadyLoaded"
            with pytest.raises(VllmError) as bad:
                await server.load(client, "a2", "/bad")
            assert bad.value.reason == "LoadFailed"
            assert await server.unload(client, "a1") is True
            assert await server.unload(client, "a1") is False

    asyncio.run(scenario())
    assert set(FakeVllm.seen_auth) == {"Bearer k"}


def test_a_server_that_does_not_answer_is_unreachable_and_transient() -> None:
    async def scenario() -> VllmError:
        async with session() as client:
            with pytest.raises(VllmError) as error:
                await Server("http://127.0.0.1:9", timeout_s=2).models(client)
            return error.value

    error = asyncio.run(scenario())
    assert error.reason == "Unreachable"
    assert error.transient


def test_a_server_that_wants_an_api_key_is_unauthorized_and_the_key_stays_out_of_reprs() -> None:
    error = classify("load", 401, json.dumps({"error": "Unauthorized"}))
    assert error.reason == "Unauthorized"
    assert not error.transient
    assert "sk-secret-value" not in repr(Server("http://127.0.0.1:8000", api_key="sk-secret-value"))
