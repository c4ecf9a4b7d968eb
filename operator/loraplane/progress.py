"""Read a training worker's Prometheus gauges into `status.progress`."""

from __future__ import annotations

import math
from datetime import datetime

from loraplane.api.training_job import Progress
from loraplane.api.worker import METRIC_PREFIX as PREFIX
from loraplane.api.worker import WorkerGauge as G
from loraplane.status.training import format_eta


def parse_gauges(text: str) -> dict[str, float]:
    """Unlabelled gauges by short name. NaN (the worker's "not known yet") is left out."""
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(PREFIX):
            continue
        name, _, value = line.partition(" ")
        try:
            number = float(value.split()[0])
        except (ValueError, IndexError):
            continue
        if not math.isnan(number):
            gauges[name.removeprefix(PREFIX)] = number
    return gauges


def _rounded(value: float | None) -> float | None:
    """Four significant digits: what a person reads in `kubectl get`, not float noise."""
    return None if value is None else float(f"{value:.4g}")


def to_progress(gauges: dict[str, float], now: datetime) -> Progress | None:
    if G.STEP not in gauges:
        return None
    step, total = int(gauges[G.STEP]), int(gauges.get(G.TOTAL_STEPS, 0))
    ratio = gauges.get(G.PROGRESS_RATIO, step / total if total else 0.0)
    return Progress(
        step=step,
        total_steps=total,
        epoch=gauges.get(G.EPOCH),
        percent=round(max(0.0, min(100.0, 100 * ratio)), 1),
        loss=_rounded(gauges.get(G.LOSS)),
        eval_loss=_rounded(gauges.get(G.EVAL_LOSS)),
        learning_rate=gauges.get(G.LEARNING_RATE),
        tokens_per_second=gauges.get(G.TOKENS_PER_SECOND),
        eta=format_eta(gauges.get(G.ETA_SECONDS)),
        updated_at=now,
    )
