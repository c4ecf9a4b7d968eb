"""Entry point for `kopf run -m loraplane.main`: operator-wide settings, then every kind's handlers."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import prometheus_client

from loraplane import GROUP
from loraplane.handlers import adapters, training_jobs  # noqa: F401 - registers the handlers
from loraplane.settings import get_settings


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = get_settings()
    logging.getLogger().setLevel(config.log_level)
    # kopf's own bookkeeping lives in annotations under our prefix, never in status: the status schema
    # is strict (structural), and handlers return nothing, so nothing of kopf's lands there to be pruned.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    settings.posting.reporting_component = "loraplane"
    settings.execution.max_workers = 8
    settings.watching.server_timeout = 300
    # A burst (a thousand LoraTrainingJobs applied at once, and their Jobs and pods) would otherwise
    # hold every object in flight together, and Python keeps what a peak took: 287 MiB RSS after
    # 1,000 jobs unbounded, 173 MiB with 50 at a time (docs/serving.md, "What bounds it now"). An idle
    # worker keeps its place for `idle_timeout` after its last event, so it lets go sooner than 5 s.
    settings.queueing.worker_limit = config.object_workers
    settings.queueing.idle_timeout = 0.5
    # Events are posted by one worker per object, unbounded in kopf: deleting 1,000 adapters posted
    # 1,000 Events at once, which kube-apiserver answered with 429 (its limit on requests in flight).
    # Twenty at a time, each letting go 0.2 s after its object's last Event, post ~100 a second.
    settings.posting.worker_limit = 20
    settings.posting.idle_timeout = 0.2
    try:
        prometheus_client.start_http_server(config.metrics_port, addr=config.pod_ip)
    except OSError as error:
        # Fail loudly (the pod restarts and shows why) rather than run without metrics.
        raise kopf.PermanentError(
            f"cannot serve metrics on {config.pod_ip}:{config.metrics_port}: {error}"
        ) from error
