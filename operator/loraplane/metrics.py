"""The operator's own Prometheus metrics, served on the metrics port (the chart's Service)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("loraplane_reconciles_total", "Reconciliations, by kind.", ["kind"])
RECONCILE_ERRORS = Counter(
    "loraplane_reconcile_errors_total", "Reconciliations that failed, by kind.", ["kind"]
)
TRAINING_JOBS = Gauge(
    "loraplane_training_jobs", "LoraTrainingJobs by state (the Succeeded reason).", ["state"]
)
TRAINING_PROGRESS = Gauge(
    "loraplane_training_progress_percent", "Training progress of each running job.", ["namespace", "name"]
)
ADAPTER_LOAD_SECONDS = Histogram(
    "loraplane_adapter_load_seconds",
    "Time to load an adapter into one vLLM pod.",
    buckets=(0.05, 0.25, 1, 5, 30),
)
ADAPTERS_LOADED = Gauge(
    "loraplane_adapters_loaded", "Adapters held by each serving pod.", ["namespace", "pod"]
)
ADAPTER_LOAD_FAILURES = Counter(
    "loraplane_adapter_load_failures_total", "Adapter loads that failed, by reason.", ["namespace", "reason"]
)
PODS_WAITING_ON_GATE = Gauge(
    "loraplane_pods_waiting_on_gate",
    "Serving pods whose readiness gate is not open yet (alert when it stays above zero: while the operator "
    "is down, no new serving pod becomes Ready).",
    ["namespace", "deployment"],
)
