"""Pure functions over an adapter's versions: the history of what it served (`record_version`), and
the effect check (`check_due`, `compare`, `with_check`): once per version, a greedy completion of
the probe prompt with the base model and with the adapter on one pod; the same tokens and
log-probabilities mean the adapter changes nothing (vLLM serves an adapter whose module names match
nothing as the plain base model, without an error)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from loraplane.api.adapter import (
    DEFAULT_PROBE_PROMPT,
    HISTORY_LIMIT,
    AdapterVersion,
    EffectCheck,
    LoraAdapter,
    LoraAdapterStatus,
)
from loraplane.api.training_job import Evaluation
from loraplane.status.conditions import Observed, merge
from loraplane.status.resolution import Wanted

CONDITION = "AdapterHasNoEffect"
# Greedy tokens of a probe, and how far apart two log-probabilities may be and still count as equal:
# the same weights give the same figures up to float noise of the LoRA kernels' summation order.
PROBE_TOKENS = 8
LOGPROB_TOLERANCE = 1e-3


# --- history ---------------------------------------------------------------------------------------------


def record_version(
    history: list[AdapterVersion],
    wanted: Wanted,
    every_pod_holds: bool,
    now: dt.datetime,
    limit: int = HISTORY_LIMIT,
) -> list[AdapterVersion]:
    """The history (newest first) once this pass is seen: when every serving pod holds the wanted
    version and it is not the one serving already, the serving one stops now and the new one starts
    now. The oldest entries beyond `limit` are dropped."""
    current = history[0] if history else None
    # The digest too: an OnDemand adapter keeps its path (the served name's link) from version to version.
    if not every_pod_holds or (
        current is not None and (current.path, current.sha256) == (wanted.path, wanted.sha256)
    ):
        return history
    older = [e.model_copy() for e in history]
    if older and older[0].serving_until is None:
        older[0].serving_until = now
    evaluation = Evaluation.model_validate(wanted.evaluation) if wanted.evaluation else None
    entry = AdapterVersion(
        training_job=wanted.training_job,
        path=wanted.path,
        sha256=wanted.sha256,
        evaluation=evaluation,
        serving_since=now,
    )
    return [entry, *older][:limit]


# --- the effect check ------------------------------------------------------------------------------------


def probe_prompt(adapter: LoraAdapter) -> str:
    return adapter.spec.probe_prompt or DEFAULT_PROBE_PROMPT


def check_due(status: LoraAdapterStatus, every_pod_holds: bool) -> str | None:
    """The path to check now: the version every pod holds, unless it was checked already (the status
    remembers it, so an operator restart does not check it again). None: nothing to do."""
    if not every_pod_holds or status.path is None:
        return None
    if status.effect_check is not None and status.effect_check.path == status.path:
        return None
    return status.path


@dataclass(frozen=True)
class Completion:
    """The greedy tokens of one completion and their log-probabilities."""

    tokens: tuple[str, ...]
    logprobs: tuple[float | None, ...]

    @classmethod
    def of(cls, answer: dict[str, Any]) -> Completion:
        """From a `/v1/completions` answer asked with `logprobs`."""
        choice = (answer.get("choices") or [{}])[0]
        found = choice.get("logprobs") or {}
        tokens = found.get("tokens")
        if tokens is None:
            return cls((str(choice.get("text", "")),), ())
        return cls(tuple(str(t) for t in tokens), tuple(found.get("token_logprobs") or ()))


@dataclass(frozen=True)
class CheckResult:
    """What one check found for one path: the AdapterHasNoEffect condition to record."""

    path: str
    status: str  # "True": no effect, "False": it changes the answer, "Unknown": the check failed
    reason: str
    message: str

    @property
    def observed(self) -> Observed:
        return Observed(CONDITION, self.status, self.reason, self.message)  # type: ignore[arg-type]


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=0.0, abs_tol=LOGPROB_TOLERANCE)


def compare(path: str, prompt: str, base: Completion, adapted: Completion) -> CheckResult:
    """No effect when the adapter's greedy tokens are the base model's and every log-probability is
    within LOGPROB_TOLERANCE of the base's."""
    text = "".join(adapted.tokens)
    same_tokens = base.tokens == adapted.tokens
    same_logprobs = len(base.logprobs) == len(adapted.logprobs) and all(
        _close(a, b) for a, b in zip(base.logprobs, adapted.logprobs, strict=True)
    )
    if same_tokens and same_logprobs:
        message = (
            f"the adapter answers {prompt!r} exactly as the base model ({text!r}, log-probabilities "
            f"within {LOGPROB_TOLERANCE}): its weights change nothing (zero B matrices, or target modules "
            "the model does not have); it keeps serving"
        )
        return CheckResult(path, "True", "NoEffect", message)
    if same_tokens:
        gap = max(
            (
                abs(a - b)
                for a, b in zip(base.logprobs, adapted.logprobs, strict=False)
                if a is not None and b is not None
            ),
            default=0.0,
        )
        message = (
            f"same greedy tokens as the base model on {prompt!r}, log-probabilities differ by up to {gap:.3g}"
        )
        return CheckResult(path, "False", "ChangesLogprobs", message)
    message = f"the adapter answers {prompt!r} with {text!r}, the base model with {''.join(base.tokens)!r}"
    return CheckResult(path, "False", "ChangesOutput", message)


def failed(path: str, error: str) -> CheckResult:
    """The check could not run (a pod that did not answer, a refused request): reported, not retried
    for this version; Ready does not depend on it."""
    return CheckResult(path, "Unknown", "ProbeFailed", f"the effect check of {path} failed: {error}")


def with_check(
    status: LoraAdapterStatus, result: CheckResult, generation: int | None, now: dt.datetime
) -> LoraAdapterStatus:
    """The status with a check's result: its condition, and the path recorded as checked."""
    new = status.model_copy()
    new.conditions = merge(status.conditions, [result.observed], generation, now)
    if status.effect_check is None or status.effect_check.path != result.path:
        new.effect_check = EffectCheck(path=result.path, checked_at=now)
    return new
