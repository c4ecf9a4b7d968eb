"""The run's outcome, as the pod's termination message (what the operator reads when the pod ends).

Kubernetes keeps at most 4096 bytes of a termination message, so the JSON is compact and optional
fields are dropped, least useful first, until it fits; it stays valid JSON whatever the paths hold.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loraplane.api.worker import (
    MAX_TERMINATION_MESSAGE_BYTES,
    TERMINATION_MESSAGE_PATH,
    TERMINATION_MESSAGE_PATH_ENV,
    FailureReport,
    TrainingReport,
)
from loraplane_worker.errors import InputError

DEFAULT_TERMINATION_MESSAGE_PATH = TERMINATION_MESSAGE_PATH
MAX_MESSAGE_BYTES = MAX_TERMINATION_MESSAGE_BYTES
# Dropped in this order when the message is too long; the rest is what the operator needs to publish.
OPTIONAL_FIELDS = tuple(TrainingReport.model_fields[name].alias or name for name in TrainingReport.OPTIONAL)


def module_leaf_names(target_modules: Iterable[str] | str) -> list[str]:
    """`model.layers.0.self_attn.q_proj`, ... -> `q_proj`: what PEFT's `all-linear` writes, made compact."""
    if isinstance(target_modules, str):
        return [target_modules]
    return sorted({name.rsplit(".", 1)[-1] for name in target_modules})


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)


def _size(payload: dict[str, Any]) -> int:
    return len(_dumps(payload).encode("utf-8"))


def fit_message(payload: dict[str, Any], optional: Iterable[str] = (), limit: int = MAX_MESSAGE_BYTES) -> str:
    """Compact JSON of `payload` within `limit` bytes: drop `optional` keys in order, then shorten strings."""
    payload = dict(payload)
    for key in optional:
        if _size(payload) <= limit:
            break
        payload.pop(key, None)
    while _size(payload) > limit:
        strings = [(len(v.encode()), k) for k, v in payload.items() if isinstance(v, str) and len(v) > 1]
        if not strings:
            raise ValueError(f"cannot fit {sorted(payload)} into {limit} bytes")
        length, key = max(strings)
        # Cut by bytes (the limit is in bytes), never inside a character, and mark the cut.
        keep = max(1, length - (_size(payload) - limit) - len("…".encode()))
        payload[key] = payload[key].encode()[:keep].decode("utf-8", errors="ignore") + "…"
    return _dumps(payload)


def _finite(value: float | None) -> float | None:
    # JSON has no NaN/Infinity; a diverged loss is reported as absent rather than breaking the parser.
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 6)


def success_message(result: TrainingReport) -> str:
    update: dict[str, Any] = {
        "train_loss": _finite(result.train_loss),
        "eval_loss": _finite(result.eval_loss),
    }
    if result.evaluation is not None:
        figures = ("base_loss", "loss", "base_mean_token_accuracy", "mean_token_accuracy")
        update["evaluation"] = result.evaluation.model_copy(
            update={name: _finite(getattr(result.evaluation, name)) for name in figures}
        )
    finite = result.model_copy(update=update)
    return fit_message(finite.to_wire(), OPTIONAL_FIELDS)


def failure_message(error: BaseException) -> str:
    """`{"error": class, "message": one line, "inputError": bool}`."""
    text = " ".join(str(error).split()) or repr(error)
    report = FailureReport(
        error=type(error).__name__, message=text, input_error=isinstance(error, InputError)
    )
    return fit_message(report.model_dump(by_alias=True, mode="json"))


def termination_message_path() -> Path | None:
    """Where Kubernetes reads the message, or None on a local run (no env, no /dev/termination-log)."""
    configured = os.environ.get(TERMINATION_MESSAGE_PATH_ENV)
    if configured:
        return Path(configured)
    default = Path(DEFAULT_TERMINATION_MESSAGE_PATH)
    # The kubelet creates the file in every container; creating it ourselves outside a pod would be wrong.
    return default if default.exists() else None


def write_termination_message(message: str) -> Path | None:
    path = termination_message_path()
    if path is not None:
        path.write_text(message, encoding="utf-8")
    return path
