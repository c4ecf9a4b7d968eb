"""Probe results → verdicts (thresholds), and what a probe does without a usable handler."""

from __future__ import annotations

import pytest

from loraplane_devcluster.nodeagent.probes import (
    ProbeResult,
    ProbeSettings,
    ProbeTarget,
    ProbeTracker,
    resolve_port,
    run_probe,
)

OK = ProbeResult(True)
FAIL = ProbeResult(False, "connection refused")


def tracker(kind: str, success: int = 1, failure: int = 3) -> ProbeTracker:
    settings = ProbeSettings(
        initial_delay_s=0, period_s=1, timeout_s=1, success_threshold=success, failure_threshold=failure
    )
    return ProbeTracker(kind, settings)  # type: ignore[arg-type]


def test_settings_default_like_the_api() -> None:
    settings = ProbeSettings.of({"httpGet": {"port": 80}})
    assert settings == ProbeSettings(0, 10, 1, 1, 3)


def test_readiness_starts_failed_and_passes_after_success_threshold() -> None:
    probe = tracker("readiness", success=2)
    assert probe.verdict is False
    assert probe.record(OK) is False
    assert probe.verdict is False
    assert probe.record(OK) is True
    assert probe.verdict is True


def test_readiness_fails_only_after_failure_threshold_in_a_row() -> None:
    probe = tracker("readiness", failure=3)
    probe.record(OK)
    assert probe.verdict is True
    assert probe.record(FAIL) is False
    assert probe.record(FAIL) is False
    assert probe.record(OK) is False  # the run of failures is broken
    assert probe.record(FAIL) is False
    assert probe.record(FAIL) is False
    assert probe.record(FAIL) is True
    assert probe.verdict is False
    assert probe.last_message == "connection refused"


def test_liveness_starts_passed_and_reports_the_change_to_failed_once() -> None:
    probe = tracker("liveness", failure=2)
    assert probe.verdict is True
    assert probe.record(FAIL) is False
    assert probe.record(FAIL) is True
    assert probe.verdict is False
    assert probe.record(FAIL) is False


def test_startup_starts_not_started() -> None:
    probe = tracker("startup")
    assert probe.verdict is False
    assert probe.record(OK) is True
    assert probe.verdict is True


def test_named_ports_resolve_through_the_container_ports() -> None:
    assert resolve_port("http", {"http": 8000}) == 8000
    assert resolve_port(9090, {}) == 9090
    assert resolve_port("9090", {}) == 9090
    with pytest.raises(ValueError, match="no port named 'metrics'"):
        resolve_port("metrics", {"http": 8000})


TARGET = ProbeTarget(pod_ip="127.0.1.250", ports={}, pid=1, env={})


def test_a_probe_without_a_usable_handler_fails_with_a_reason() -> None:
    assert run_probe({"grpc": {"port": 1}}, TARGET) == ProbeResult(
        False, "gRPC probes are not supported by the dev node"
    )
    assert run_probe({}, TARGET).ok is False
    unknown_port = run_probe({"httpGet": {"port": "metrics"}}, TARGET)
    assert unknown_port.ok is False
    assert "no port named" in unknown_port.message
