"""The evaluation figures in status and the promotion decision: pure functions, every reason."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from loraplane.api.training_job import AdapterPublication, Evaluation, PromotionPolicy
from loraplane.api.worker import EvaluationReport, TrainingReport
from loraplane.status import evaluation as ev
from loraplane.status.evaluation import ServedVersion, decide, evaluation_of
from loraplane_worker.result import success_message

DIGEST = "sha256:" + "a" * 64
OTHER_DIGEST = "sha256:" + "b" * 64


def figures(
    loss: float | None = 2.0, base_loss: float | None = 2.5, digest: str | None = DIGEST
) -> Evaluation:
    found = evaluation_of(EvaluationReport(base_loss=base_loss, loss=loss, examples=20, digest=digest))
    assert found is not None
    return found


def test_evaluation_of_a_report_has_change_perplexity_and_digest() -> None:
    report = EvaluationReport(
        base_loss=2.5,
        loss=2.0,
        base_mean_token_accuracy=0.31,
        mean_token_accuracy=0.42,
        examples=20,
        digest=DIGEST,
    )
    found = evaluation_of(report)
    assert found is not None
    assert found.change == "-20.0%"
    assert found.relative_improvement == pytest.approx(0.2)
    assert found.perplexity == pytest.approx(math.exp(2.0), rel=1e-4)
    assert found.base_perplexity == pytest.approx(math.exp(2.5), rel=1e-4)
    assert (found.base_mean_token_accuracy, found.mean_token_accuracy) == (0.31, 0.42)
    assert (found.examples, found.digest) == (20, DIGEST)
    assert evaluation_of(None) is None


def test_a_worse_adapter_shows_a_positive_change_and_unknowns_stay_unknown() -> None:
    assert figures(loss=2.75, base_loss=2.5).change == "+10.0%"
    missing = figures(base_loss=None)
    assert (missing.change, missing.relative_improvement, missing.base_perplexity) == (None, None, None)
    assert figures(loss=2.0, base_loss=0.0).change is None, "no relative change of a zero loss"
    assert figures(loss=1000.0).perplexity is None, "exp overflows: no perplexity rather than a crash"


def test_policy_needs_a_criterion() -> None:
    with pytest.raises(ValidationError, match="at least one of"):
        PromotionPolicy()
    with pytest.raises(ValidationError, match="at least one of"):
        PromotionPolicy(not_worse_than_serving=False)
    assert PromotionPolicy(not_worse_than_serving=True).not_worse_than_serving
    with pytest.raises(ValidationError):
        PromotionPolicy(min_relative_improvement=1.0)
    with pytest.raises(ValidationError):
        PromotionPolicy(max_eval_loss=0)
    publication = AdapterPublication.model_validate(
        {"deployment": "vllm", "promotion": {"minRelativeImprovement": 0.05, "maxEvalLoss": 3}}
    )
    assert publication.promotion == PromotionPolicy(min_relative_improvement=0.05, max_eval_loss=3)


def test_no_evaluation_refuses_with_the_fix() -> None:
    decision = decide(PromotionPolicy(max_eval_loss=3), None, None)
    assert (decision.promote, decision.reason) == (False, ev.NO_EVALUATION)
    assert "evalFraction" in decision.message
    assert decide(PromotionPolicy(max_eval_loss=3), figures(loss=None), None).reason == ev.NO_EVALUATION


def test_no_base_loss_cannot_judge_a_relative_margin_but_can_an_absolute_one() -> None:
    refused = decide(PromotionPolicy(min_relative_improvement=0.05), figures(base_loss=None), None)
    assert (refused.promote, refused.reason) == (False, ev.NO_EVALUATION)
    assert "no base model eval loss" in refused.message
    assert decide(PromotionPolicy(max_eval_loss=3), figures(base_loss=None), None).promote


def test_eval_loss_too_high_carries_both_figures() -> None:
    decision = decide(PromotionPolicy(max_eval_loss=0.001), figures(), None)
    assert (decision.promote, decision.reason) == (False, ev.EVAL_LOSS_TOO_HIGH)
    assert "eval loss 2 against the base model's 2.5 (-20.0%)" in decision.message
    assert "maxEvalLoss 0.001" in decision.message
    assert decision.condition().status == "False"
    assert decision.condition().type == "Promoted"


def test_the_absolute_limit_is_inclusive() -> None:
    assert decide(PromotionPolicy(max_eval_loss=2.0), figures(loss=2.0), None).promote


def test_not_better_than_base_says_what_loss_it_needed() -> None:
    decision = decide(PromotionPolicy(min_relative_improvement=0.25), figures(loss=2.0, base_loss=2.5), None)
    assert (decision.promote, decision.reason) == (False, ev.NOT_BETTER_THAN_BASE)
    assert "minRelativeImprovement 0.25 needs an eval loss of at most 1.875" in decision.message
    # Exactly the margin passes; a worse adapter fails even a zero margin.
    assert decide(
        PromotionPolicy(min_relative_improvement=0.2), figures(loss=2.0, base_loss=2.5), None
    ).promote
    worse = decide(PromotionPolicy(min_relative_improvement=0), figures(loss=2.6, base_loss=2.5), None)
    assert worse.reason == ev.NOT_BETTER_THAN_BASE
    zero = decide(PromotionPolicy(min_relative_improvement=0), figures(loss=0.0, base_loss=0.0), None)
    assert zero.reason == ev.NOT_BETTER_THAN_BASE, "no relative margin over a zero base loss"


def test_the_first_criterion_missed_is_the_reason() -> None:
    policy = PromotionPolicy(max_eval_loss=1.0, min_relative_improvement=0.5)
    assert decide(policy, figures(), None).reason == ev.EVAL_LOSS_TOO_HIGH


def test_promoted_lists_every_criterion_met() -> None:
    policy = PromotionPolicy(max_eval_loss=3, min_relative_improvement=0.1, not_worse_than_serving=True)
    decision = decide(policy, figures(), None)
    assert (decision.promote, decision.reason) == (True, ev.PROMOTED)
    assert decision.condition().status == "True"
    for part in ("at most maxEvalLoss 3", "at least 10% below the base", "no other version served"):
        assert part in decision.message


def test_not_worse_than_serving_on_the_same_data() -> None:
    policy = PromotionPolicy(not_worse_than_serving=True)
    served = ServedVersion("v1", figures(loss=1.9))
    refused = decide(policy, figures(loss=2.0), served)
    assert (refused.promote, refused.reason) == (False, ev.NOT_BETTER_THAN_SERVING)
    assert "above the served version's 1.9 (job v1)" in refused.message
    equal = decide(policy, figures(loss=1.9), served)
    assert equal.promote, "not worse: an equal loss passes"
    better = decide(policy, figures(loss=1.5), served)
    assert better.promote
    assert "not above the served version's 1.9 (job v1)" in better.message


def test_other_eval_data_is_refused_not_compared() -> None:
    policy = PromotionPolicy(not_worse_than_serving=True)
    decision = decide(policy, figures(loss=1.0), ServedVersion("v1", figures(loss=1.9, digest=OTHER_DIGEST)))
    assert (decision.promote, decision.reason) == (False, ev.EVAL_DATA_DIFFERS)
    assert OTHER_DIGEST[:19] in decision.message
    unrecorded = decide(policy, figures(loss=1.0), ServedVersion("v1", figures(loss=1.9, digest=None)))
    assert unrecorded.reason == ev.EVAL_DATA_DIFFERS


def test_a_served_version_without_figures_is_not_comparable() -> None:
    policy = PromotionPolicy(not_worse_than_serving=True)
    gone = decide(policy, figures(), ServedVersion("v1", None))
    assert (gone.promote, gone.reason) == (False, ev.SERVING_NOT_EVALUATED)
    assert "job v1" in gone.message
    files = decide(policy, figures(), ServedVersion(None, None))
    assert files.reason == ev.SERVING_NOT_EVALUATED
    assert "no training job evaluated" in files.message


def test_without_the_serving_criterion_a_served_version_is_not_consulted() -> None:
    decision = decide(PromotionPolicy(max_eval_loss=3), figures(), ServedVersion("v1", figures(loss=0.1)))
    assert decision.promote


def test_every_refusal_reason_is_listed() -> None:
    assert set(ev.REFUSALS) >= {
        ev.NO_EVALUATION,
        ev.EVAL_LOSS_TOO_HIGH,
        ev.NOT_BETTER_THAN_BASE,
        ev.NOT_BETTER_THAN_SERVING,
        ev.EVAL_DATA_DIFFERS,
        ev.SERVING_NOT_EVALUATED,
    }


def test_the_evaluation_survives_the_termination_message_and_non_finite_figures_are_dropped() -> None:
    report = TrainingReport(
        adapter_dir="/output/x",
        sha256="c" * 64,
        r=8,
        lora_alpha=16,
        target_modules=[f"module_{i:04d}_with_a_long_name" for i in range(200)],
        evaluation=EvaluationReport(base_loss=2.5, loss=float("nan"), examples=20, digest=DIGEST),
    )
    message = success_message(report)
    assert len(message.encode()) <= 4096
    back = TrainingReport.model_validate_json(message)
    assert back.target_modules is None, "dropped first"
    assert back.evaluation == EvaluationReport(base_loss=2.5, loss=None, examples=20, digest=DIGEST)
