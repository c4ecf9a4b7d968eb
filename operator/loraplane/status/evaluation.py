"""A run's evaluation figures and the promotion decision they feed: pure functions, no API calls.

`evaluation_of` turns the worker's report into `status.evaluation`; `decide` judges a
`spec.adapter.promotion` policy against it (and, when the LoraAdapter already serves another job's
adapter, against that job's `status.evaluation`). The handler only fetches the inputs and applies
the outcome: publish, or leave the adapter in storage with `Promoted=False`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loraplane.api.training_job import Evaluation, PromotionPolicy
from loraplane.api.worker import EvaluationReport
from loraplane.status.conditions import Observed

CONDITION = "Promoted"
PROMOTED = "Promoted"
# Why a policy refused to publish, each with the figures in the condition's message.
NO_EVALUATION = "NoEvaluation"
EVAL_LOSS_TOO_HIGH = "EvalLossTooHigh"
NOT_BETTER_THAN_BASE = "NotBetterThanBase"
NOT_BETTER_THAN_SERVING = "NotBetterThanServing"
EVAL_DATA_DIFFERS = "EvalDataDiffers"
SERVING_NOT_EVALUATED = "ServingNotEvaluated"
CONFLICT = "Conflict"
REFUSALS = (
    NO_EVALUATION,
    EVAL_LOSS_TOO_HIGH,
    NOT_BETTER_THAN_BASE,
    NOT_BETTER_THAN_SERVING,
    EVAL_DATA_DIFFERS,
    SERVING_NOT_EVALUATED,
    CONFLICT,
)


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    try:
        return round(math.exp(loss), 4)
    except OverflowError:  # a loss above ~709: no finite perplexity to show
        return None


def relative_improvement(base_loss: float | None, loss: float | None) -> float | None:
    """(base - loss) / base: 0.1 is 10% below the base model. None when either is unknown or the base
    loss is not positive (no relative change of a zero loss)."""
    if base_loss is None or loss is None or base_loss <= 0:
        return None
    return (base_loss - loss) / base_loss


def change_text(base_loss: float | None, loss: float | None) -> str | None:
    """The change of the eval loss against the base, as `kubectl get` shows it: `-12.3%`."""
    improvement = relative_improvement(base_loss, loss)
    return None if improvement is None else f"{-100 * improvement:+.1f}%"


def evaluation_of(report: EvaluationReport | None) -> Evaluation | None:
    """`status.evaluation` from the worker's report (None: the run had no eval data)."""
    if report is None:
        return None
    improvement = relative_improvement(report.base_loss, report.loss)
    return Evaluation(
        base_loss=report.base_loss,
        loss=report.loss,
        change=change_text(report.base_loss, report.loss),
        relative_improvement=None if improvement is None else round(improvement, 6),
        base_perplexity=_perplexity(report.base_loss),
        perplexity=_perplexity(report.loss),
        base_mean_token_accuracy=report.base_mean_token_accuracy,
        mean_token_accuracy=report.mean_token_accuracy,
        examples=report.examples,
        digest=report.digest,
    )


@dataclass(frozen=True)
class ServedVersion:
    """What the LoraAdapter serves now, when it is another job's adapter. `job` is None when its source
    is not a training job (a volume path, Hugging Face); `evaluation` is None when that job is gone or
    recorded no evaluation."""

    job: str | None
    evaluation: Evaluation | None


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    message: str

    def condition(self) -> Observed:
        return Observed(CONDITION, "True" if self.promote else "False", self.reason, self.message)


def _figure(value: float) -> str:
    return f"{value:.4g}"


def _figures(evaluation: Evaluation) -> str:
    assert evaluation.loss is not None
    text = f"eval loss {_figure(evaluation.loss)}"
    if evaluation.base_loss is not None:
        change = change_text(evaluation.base_loss, evaluation.loss)
        text += f" against the base model's {_figure(evaluation.base_loss)}"
        text += f" ({change})" if change else ""
    if evaluation.digest:
        text += f" on {evaluation.examples} examples ({evaluation.digest[:19]})"
    return text


def _short(digest: str | None) -> str:
    return digest[:19] if digest else "none recorded"


def decide(policy: PromotionPolicy, evaluation: Evaluation | None, served: ServedVersion | None) -> Decision:
    """Whether the policy lets this run's adapter be published. The first criterion missed gives the
    reason; the message carries the figures and the threshold."""
    if evaluation is None or evaluation.loss is None:
        return Decision(
            False,
            NO_EVALUATION,
            "the run recorded no eval loss (set spec.evalDataset, spec.dataset.evalSplit or evalFraction; "
            "a loss that was not finite is not recorded), so spec.adapter.promotion cannot be judged",
        )
    figures = _figures(evaluation)
    met: list[str] = []
    if policy.max_eval_loss is not None:
        if evaluation.loss > policy.max_eval_loss:
            return Decision(
                False,
                EVAL_LOSS_TOO_HIGH,
                f"{figures}: above promotion.maxEvalLoss {_figure(policy.max_eval_loss)}",
            )
        met.append(f"at most maxEvalLoss {_figure(policy.max_eval_loss)}")
    if policy.min_relative_improvement is not None:
        wanted = policy.min_relative_improvement
        improvement = relative_improvement(evaluation.base_loss, evaluation.loss)
        if evaluation.base_loss is None:
            return Decision(
                False,
                NO_EVALUATION,
                f"{figures}: the run recorded no base model eval loss, so "
                f"promotion.minRelativeImprovement {wanted:g} cannot be judged",
            )
        if improvement is None or improvement < wanted:
            return Decision(
                False,
                NOT_BETTER_THAN_BASE,
                f"{figures}: promotion.minRelativeImprovement {wanted:g} needs an eval loss of at most "
                f"{_figure(evaluation.base_loss * (1 - wanted))}",
            )
        met.append(f"at least {100 * wanted:g}% below the base")
    if policy.not_worse_than_serving:
        if served is None:
            met.append("no other version served")
        else:
            refusal = _against_served(evaluation, served, figures)
            if refusal is not None:
                return refusal
            served_loss = served.evaluation.loss if served.evaluation else None
            met.append(f"not above the served version's {_figure(served_loss or 0)} (job {served.job})")
    return Decision(True, PROMOTED, f"{figures}: " + ", ".join(met))


def _against_served(evaluation: Evaluation, served: ServedVersion, figures: str) -> Decision | None:
    if served.job is None:
        return Decision(
            False,
            SERVING_NOT_EVALUATED,
            f"{figures}; the LoraAdapter serves files that no training job evaluated, so "
            "promotion.notWorseThanServing cannot compare (set it false to replace them anyway)",
        )
    other = served.evaluation
    if other is None or other.loss is None:
        return Decision(
            False,
            SERVING_NOT_EVALUATED,
            f"{figures}; the served version (job {served.job}) recorded no eval loss (the job is gone or "
            "had no eval data), so promotion.notWorseThanServing cannot compare",
        )
    if not evaluation.digest or evaluation.digest != other.digest:
        # Losses on different examples do not compare: refuse rather than guess.
        return Decision(
            False,
            EVAL_DATA_DIFFERS,
            f"{figures}; the served version (job {served.job}, eval loss {_figure(other.loss)}) was "
            f"evaluated on other data ({_short(other.digest)}, {other.examples} examples), so "
            "promotion.notWorseThanServing cannot compare: evaluate both on the same data",
        )
    if evaluation.loss is not None and evaluation.loss > other.loss:
        return Decision(
            False,
            NOT_BETTER_THAN_SERVING,
            f"{figures}: above the served version's {_figure(other.loss)} (job {served.job}) "
            "on the same data",
        )
    return None
