"""Read a training worker's Prometheus gauges into `status.progress`."""

from __future__ import annotations

import math
from datetime import datetime

from loraplane.api.training_job import Progress
from loraplane.status.training import format_eta

PREFIX = "loraplane_worker_"


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
    if "step" not in gauges:
        return None
    step, total = int(gauges["step"]), int(gauges.get("total_steps", 0))
    ratio = gauges.get("progress_ratio", step / total if total else 0.0)
    return Progress(
        step=step,
        total_steps=total,
        epoch=gauges.get("epoch"),
        percent=round(max(0.0, min(100.0, 100 * ratio)), 1),
        loss=_rounded(gauges.get("loss")),
        eval_loss=_rounded(gauges.get("eval_loss")),
        learning_rate=gauges.get("learning_rate"),
        tokens_per_second=gauges.get("tokens_per_second"),
        eta=format_eta(gauges.get("eta_seconds")),
        updated_at=now,
    )
