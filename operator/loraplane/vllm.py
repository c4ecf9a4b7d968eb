"""The one module that talks to vLLM's OpenAI-compatible server: list models, load and unload adapters.

Every answer is classified here, so the rest of the operator deals in reasons, never in status codes.
The contract this follows (vLLM 0.32, `docs/serving.md`):

- without `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` the routes do not exist and FastAPI answers a bare
  `404 {"detail": "Not Found"}`: that is `RuntimeLoadingDisabled`, never "adapter not found";
- `400 ... has already been loaded` on load: success only if `/v1/models` lists the name at the path;
- `500 ... LoRA rank N is greater than max_lora_rank M`: `RankTooHigh` (the server stays healthy);
- `404 NotFoundError` on load: the path holds no adapter (`LoadFailed`); on unload: not loaded;
- `401 {"error": "Unauthorized"}` on any `/v1` route of a server started with `--api-key` (or
  VLLM_API_KEY) when the `Authorization: Bearer` key is missing or wrong: `Unauthorized`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

Reason = Literal[
    "RankTooHigh",
    "RuntimeLoadingDisabled",
    "LoadFailed",
    "NotFound",
    "AlreadyLoaded",
    "Unreachable",
    "Unauthorized",
]

RANK_TOO_HIGH = re.compile(r"LoRA rank (\d+) is greater than max_lora_rank (\d+)")
RUNTIME_DISABLED_FIX = (
    "the vLLM server's runtime LoRA API is off (its load route answers 404 Not Found): start it with "
    "`--enable-lora` and the environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or annotate the "
    'Deployment with loraplane.io/manage-lora: "true" so that loraplane enables both'
)


UNAUTHORIZED = "{route} answered 401 Unauthorized: the server was started with an API key"


class VllmError(Exception):
    """A vLLM answer that is not a success, with the reason the operator acts on."""

    def __init__(self, reason: Reason, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.message = message
        self.status = status

    @property
    def transient(self) -> bool:
        """Worth retrying as is: the pod did not answer (starting, restarting, overloaded)."""
        return self.reason == "Unreachable"


@dataclass(frozen=True)
class Models:
    """What `GET /v1/models` lists: the base model and the adapters (name -> path)."""

    base_id: str | None = None
    base_root: str | None = None
    adapters: dict[str, str] = field(default_factory=dict)

    def holds(self, name: str, path: str) -> bool:
        return self.adapters.get(name) == path


def _error_message(body: str) -> str:
    """vLLM's own message from an error body (JSON `error.message` or `detail`), else the text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:2000]
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:2000]
        if "detail" in parsed:
            return str(parsed["detail"])[:2000]
    return body.strip()[:2000]


def is_route_missing(status: int, body: str) -> bool:
    """FastAPI's answer for a route that does not exist (the runtime API is switched off)."""
    if status != 404:
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return bool(parsed == {"detail": "Not Found"})


def classify(action: Literal["load", "unload"], status: int, body: str) -> VllmError:
    """The reason behind a non-2xx answer to a load or unload call."""
    message = _error_message(body)
    if status == 401:
        return VllmError("Unauthorized", UNAUTHORIZED.format(route=f"{action} call"), status)
    if is_route_missing(status, body):
        return VllmError("RuntimeLoadingDisabled", RUNTIME_DISABLED_FIX, status)
    if action == "load":
        if status == 400 and "already been loaded" in message:
            return VllmError("AlreadyLoaded", message, status)
        rank = RANK_TOO_HIGH.search(message)
        if rank:
            return VllmError(
                "RankTooHigh",
                f"LoRA rank {rank.group(1)} is greater than the server's --max-lora-rank {rank.group(2)}",
                status,
            )
        return VllmError("LoadFailed", message or f"HTTP {status}", status)
    if status == 404:
        return VllmError("NotFound", message, status)
    return VllmError("LoadFailed", message or f"HTTP {status}", status)


def parse_models(document: dict[str, Any]) -> Models:
    """Cards with no `parent` are base models; the others are adapters (`id` = name, `root` = path)."""
    base_id = base_root = None
    adapters: dict[str, str] = {}
    for card in document.get("data", []):
        if card.get("parent"):
            adapters[str(card["id"])] = str(card.get("root") or "")
        elif base_id is None:
            base_id, base_root = str(card["id"]), card.get("root")
    return Models(base_id=base_id, base_root=base_root, adapters=adapters)


@dataclass(frozen=True)
class Server:
    """One vLLM pod's API: its address and the key it expects, if started with `--api-key`."""

    url: str
    api_key: str | None = field(default=None, repr=False)  # never in a log line or a traceback
    timeout_s: float = 30.0

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def _call(
        self, session: aiohttp.ClientSession, method: str, route: str, payload: dict[str, Any] | None
    ) -> tuple[int, str]:
        try:
            async with session.request(
                method,
                f"{self.url}{route}",
                json=payload,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise VllmError(
                "Unreachable", f"{method} {self.url}{route}: {error or type(error).__name__}"
            ) from error

    async def models(self, session: aiohttp.ClientSession) -> Models:
        status, body = await self._call(session, "GET", "/v1/models", None)
        if status == 401:
            raise VllmError("Unauthorized", UNAUTHORIZED.format(route="GET /v1/models"), status)
        if status != 200:
            raise VllmError(
                "Unreachable", f"GET /v1/models answered {status}: {_error_message(body)}", status
            )
        return parse_models(json.loads(body))

    async def load(self, session: aiohttp.ClientSession, name: str, path: str) -> None:
        """Load an adapter. Raises VllmError; `AlreadyLoaded` is for the caller to confirm via models()."""
        payload = {"lora_name": name, "lora_path": path}
        status, body = await self._call(session, "POST", "/v1/load_lora_adapter", payload)
        if status != 200:
            raise classify("load", status, body)

    async def complete(
        self, session: aiohttp.ClientSession, model: str, prompt: str, max_tokens: int
    ) -> dict[str, Any]:
        """A greedy completion with the chosen tokens' log-probabilities (`POST /v1/completions`, the
        OpenAI API). Raises VllmError (`LoadFailed` for a refused request) with the server's words."""
        payload = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "logprobs": 1,
        }
        status, body = await self._call(session, "POST", "/v1/completions", payload)
        if status == 401:
            raise VllmError("Unauthorized", UNAUTHORIZED.format(route="POST /v1/completions"), status)
        if status != 200:
            raise VllmError("LoadFailed", f"completion answered {status}: {_error_message(body)}", status)
        return dict(json.loads(body))

    async def unload(self, session: aiohttp.ClientSession, name: str) -> bool:
        """Unload an adapter; False when the server did not hold it."""
        status, body = await self._call(session, "POST", "/v1/unload_lora_adapter", {"lora_name": name})
        if status == 200:
            return True
        error = classify("unload", status, body)
        if error.reason == "NotFound":
            return False
        raise error


def session() -> aiohttp.ClientSession:
    """A client session that ignores proxy variables: pods are reached at their own addresses."""
    return aiohttp.ClientSession(trust_env=False)
