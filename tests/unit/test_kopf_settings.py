"""What `main.configure` sets on kopf: the chart's objectWorkers is kopf's worker limit, and Events
are posted a bounded number at a time."""

from typing import Any

import kopf
import pytest

from loraplane import main
from loraplane.settings import Settings


def test_object_workers_bound_kopfs_workers_and_events_are_posted_twenty_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[Any] = []
    monkeypatch.setattr(main.prometheus_client, "start_http_server", lambda *a, **kw: served.append(a))
    monkeypatch.setattr(main, "get_settings", lambda: Settings(object_workers=40))
    settings = kopf.OperatorSettings()
    assert settings.queueing.worker_limit is None  # kopf's own default: unbounded
    main.configure(settings=settings)
    assert settings.queueing.worker_limit == 40
    assert settings.queueing.idle_timeout == 0.5
    assert settings.posting.worker_limit == 20
    assert served  # the metrics server was started
