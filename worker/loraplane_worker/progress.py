"""Live progress: Prometheus gauges on an HTTP port, and one JSON line per logging step on stdout.

The operator scrapes the gauges into `status.progress`, so they are plain gauges without labels:
one `name value` line each. A value not known yet (no eval run, no ETA before the first step) is
NaN. `loraplane_worker_resumed_from_step` is 0 for a run that started fresh.

Tokens per second are real token counts, not estimates from batch shapes: TRL's SFTTrainer logs
`num_tokens`, the running total of non-padding tokens (attention-mask sums, gathered over all
processes), and the rate is its growth over the training time between two logs (time spent in
evaluations and checkpoint saves in between is left out).

`ProgressReporter` is pure (no torch); `trainer_callback` wraps it in a transformers TrainerCallback
and imports transformers only when called.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server

from loraplane.api.worker import GAUGE_HELP, METRIC_PREFIX, WorkerGauge
from loraplane.api.worker import WorkerGauge as G

if TYPE_CHECKING:
    from transformers import TrainerCallback

NAN = float("nan")
# One definition of the gauges, shared with the operator that scrapes them.
GAUGES: dict[WorkerGauge, str] = GAUGE_HELP
_UNKNOWN_AT_START = (G.LOSS, G.EVAL_LOSS, G.LEARNING_RATE, G.TOKENS_PER_SECOND, G.ETA_SECONDS)


class ProgressMetrics:
    """The gauges, in a registry of their own so the endpoint serves exactly these."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {
            name: Gauge(METRIC_PREFIX + name, help_text, registry=self.registry)
            for name, help_text in GAUGES.items()
        }
        for name in _UNKNOWN_AT_START:
            self.gauges[name].set(NAN)
        self._server: Any = None

    def set(self, name: WorkerGauge, value: float | None) -> None:
        self.gauges[name].set(NAN if value is None else value)

    def text(self) -> str:
        return generate_latest(self.registry).decode("utf-8")

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint in a daemon thread; returns the bound port (useful with port 0)."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@dataclass
class ProgressSnapshot:
    step: int
    total_steps: int
    epoch: float | None
    loss: float | None
    eval_loss: float | None
    learning_rate: float | None
    tokens_per_second: float | None
    eta_seconds: float | None
    resumed_from_step: int | None

    @property
    def progress_ratio(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps > 0 else 0.0

    def log_line(self) -> dict[str, Any]:
        def number(value: float | None, digits: int = 6) -> float | None:
            return None if value is None or math.isnan(value) else round(value, digits)

        return {
            "event": "progress",
            "step": self.step,
            "totalSteps": self.total_steps,
            "epoch": number(self.epoch, 4),
            "loss": number(self.loss),
            "evalLoss": number(self.eval_loss),
            "learningRate": number(self.learning_rate, 10),
            "tokensPerSecond": number(self.tokens_per_second, 1),
            "percent": round(100 * self.progress_ratio, 2),
            "etaSeconds": number(self.eta_seconds, 1),
            "resumedFromStep": self.resumed_from_step,
        }


def emit(event: Mapping[str, Any], stream: IO[str] | None = None) -> None:
    """One JSON object per line on stdout, flushed so a log shipper sees it at once."""
    out = stream or sys.stdout
    out.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
    out.flush()


class ProgressReporter:
    """Turns trainer events into gauge values and progress log lines."""

    def __init__(
        self,
        metrics: ProgressMetrics,
        resumed_from_step: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        stream: IO[str] | None = None,
    ) -> None:
        self.metrics = metrics
        self.resumed_from_step = resumed_from_step
        self.clock = clock
        self.stream = stream
        self.snapshot = ProgressSnapshot(0, 0, None, None, None, None, None, None, resumed_from_step)
        self._begin_step = 0
        self._begin_time = clock()
        self._tokens_mark: tuple[float, float] | None = None  # (time, num_tokens) at the previous log
        metrics.set(G.RESUMED_FROM_STEP, resumed_from_step or 0)

    def set_trainable_parameters(self, count: int) -> None:
        self.metrics.set(G.TRAINABLE_PARAMETERS, count)

    def train_begin(self, step: int, total_steps: int) -> None:
        self._begin_step = step
        self._begin_time = self.clock()
        # TRL's token count starts at 0 in every process, also after a resume.
        self._tokens_mark = (self._begin_time, 0.0)
        self._advance(step, total_steps, None)

    def step_end(self, step: int, total_steps: int, epoch: float | None) -> None:
        self._advance(step, total_steps, epoch)

    def pause_end(self) -> None:
        """After an evaluation or a checkpoint save: time spent there is not training throughput."""
        if self._tokens_mark is not None:
            self._tokens_mark = (self.clock(), self._tokens_mark[1])

    def log(self, step: int, total_steps: int, epoch: float | None, logs: Mapping[str, Any]) -> None:
        """One trainer log: a training log has `loss`, an evaluation log `eval_loss`, the summary neither."""
        if "loss" not in logs and "eval_loss" not in logs:
            return
        snapshot = self.snapshot
        if "loss" in logs:
            snapshot.loss = float(logs["loss"])
            self.metrics.set(G.LOSS, snapshot.loss)
        if "learning_rate" in logs:
            snapshot.learning_rate = float(logs["learning_rate"])
            self.metrics.set(G.LEARNING_RATE, snapshot.learning_rate)
        if "eval_loss" in logs:
            snapshot.eval_loss = float(logs["eval_loss"])
            self.metrics.set(G.EVAL_LOSS, snapshot.eval_loss)
        if "num_tokens" in logs:
            now, tokens = self.clock(), float(logs["num_tokens"])
            if self._tokens_mark is not None:
                since, tokens_then = self._tokens_mark
                if now > since and tokens >= tokens_then:
                    snapshot.tokens_per_second = (tokens - tokens_then) / (now - since)
                    self.metrics.set(G.TOKENS_PER_SECOND, snapshot.tokens_per_second)
            self._tokens_mark = (now, tokens)
        self._advance(step, total_steps, epoch)
        emit(snapshot.log_line(), self.stream)

    def _advance(self, step: int, total_steps: int, epoch: float | None) -> None:
        snapshot = self.snapshot
        snapshot.step, snapshot.total_steps = step, total_steps
        if epoch is not None:
            snapshot.epoch = float(epoch)
        done_here = step - self._begin_step
        elapsed = self.clock() - self._begin_time
        if done_here > 0 and elapsed > 0 and total_steps > 0:
            snapshot.eta_seconds = max(0, total_steps - step) * elapsed / done_here
        self.metrics.set(G.STEP, step)
        self.metrics.set(G.TOTAL_STEPS, total_steps)
        self.metrics.set(G.EPOCH, snapshot.epoch or 0.0)
        self.metrics.set(G.PROGRESS_RATIO, snapshot.progress_ratio)
        self.metrics.set(G.ETA_SECONDS, snapshot.eta_seconds)


def parse_metrics(text: str) -> dict[str, float]:
    """The gauges from the endpoint's text, by short name: how simply a client can read them."""
    values = {}
    for line in text.splitlines():
        if line.startswith(METRIC_PREFIX):
            name, _, value = line.partition(" ")
            values[name.removeprefix(METRIC_PREFIX)] = float(value)
    return values


def trainer_callback(reporter: ProgressReporter) -> TrainerCallback:
    """A transformers TrainerCallback feeding `reporter`; only the main process reports."""
    from transformers import TrainerCallback  # noqa: PLC0415 - keeps this module free of torch

    class ProgressCallback(TrainerCallback):  # type: ignore[misc]  # transformers is not followed by mypy
        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.is_world_process_zero:
                reporter.train_begin(state.global_step, state.max_steps)

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if state.is_world_process_zero:
                reporter.step_end(state.global_step, state.max_steps, state.epoch)

        def on_evaluate(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            reporter.pause_end()

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            reporter.pause_end()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if state.is_world_process_zero and logs:
                reporter.log(state.global_step, state.max_steps, state.epoch, logs)

    return ProgressCallback()
