"""Progress: gauge values, the metrics text the operator parses, and the JSON log lines."""

from __future__ import annotations

import io
import json
import math
import urllib.request

from loraplane_worker.progress import GAUGES, ProgressMetrics, ProgressReporter, parse_metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reporter(resumed_from_step: int | None = None) -> tuple[ProgressReporter, Clock, io.StringIO]:
    clock, stream = Clock(), io.StringIO()
    return ProgressReporter(ProgressMetrics(), resumed_from_step, clock=clock, stream=stream), clock, stream


def test_metrics_text_is_plain_unlabelled_gauges() -> None:
    metrics = ProgressMetrics()
    text = metrics.text()
    for name in GAUGES:
        assert f"# TYPE loraplane_worker_{name} gauge" in text
        assert f"\nloraplane_worker_{name} " in text
    assert "{" not in text  # no labels: `name value` per line
    values = parse_metrics(text)
    assert set(values) == set(GAUGES)
    assert math.isnan(values["eval_loss"])
    assert values["resumed_from_step"] == 0


def test_steps_give_ratio_and_eta_from_this_runs_rate() -> None:
    progress, clock, _ = reporter(resumed_from_step=40)
    progress.train_begin(step=40, total_steps=100)
    clock.now += 30
    progress.step_end(step=50, total_steps=100, epoch=0.5)
    values = parse_metrics(progress.metrics.text())
    assert values["step"] == 50
    assert values["total_steps"] == 100
    assert values["progress_ratio"] == 0.5
    assert values["eta_seconds"] == 150  # 10 steps in 30 s, 50 left
    assert values["resumed_from_step"] == 40
    assert values["epoch"] == 0.5


def test_a_training_log_sets_loss_lr_tokens_and_prints_one_json_line() -> None:
    progress, clock, stream = reporter()
    progress.train_begin(step=0, total_steps=20)
    clock.now += 4
    progress.step_end(step=10, total_steps=20, epoch=1.0)
    progress.log(10, 20, 1.0, {"loss": 1.25, "learning_rate": 1e-4, "num_tokens": 2000.0})
    values = parse_metrics(progress.metrics.text())
    assert values["loss"] == 1.25
    assert values["learning_rate"] == 1e-4
    assert values["tokens_per_second"] == 500
    [line] = stream.getvalue().splitlines()
    assert json.loads(line) == {
        "event": "progress",
        "step": 10,
        "totalSteps": 20,
        "epoch": 1.0,
        "loss": 1.25,
        "evalLoss": None,
        "learningRate": 0.0001,
        "tokensPerSecond": 500.0,
        "percent": 50.0,
        "etaSeconds": 4.0,
        "resumedFromStep": None,
    }


def test_time_spent_evaluating_is_not_counted_against_throughput() -> None:
    progress, clock, _ = reporter()
    progress.train_begin(step=0, total_steps=20)
    clock.now += 2
    progress.log(5, 20, 0.5, {"loss": 2.0, "num_tokens": 1000.0})
    clock.now += 60  # an evaluation
    progress.log(5, 20, 0.5, {"eval_loss": 1.5})
    progress.pause_end()
    clock.now += 2
    progress.log(10, 20, 1.0, {"loss": 1.0, "num_tokens": 2000.0})
    values = parse_metrics(progress.metrics.text())
    assert values["tokens_per_second"] == 500
    assert values["eval_loss"] == 1.5


def test_the_final_summary_log_prints_nothing() -> None:
    progress, _, stream = reporter()
    progress.log(20, 20, 2.0, {"train_runtime": 12.0, "train_loss": 1.1})
    assert stream.getvalue() == ""


def test_the_endpoint_serves_the_gauges() -> None:
    metrics = ProgressMetrics()
    port = metrics.serve("127.0.0.1", 0)
    try:
        metrics.set("step", 7)
        metrics.set("trainable_parameters", 8192)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            values = parse_metrics(response.read().decode())
    finally:
        metrics.close()
    assert values["step"] == 7
    assert values["trainable_parameters"] == 8192
