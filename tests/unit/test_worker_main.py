"""The entry point's failure path, which needs no torch: a bad config ends with exit code 65."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from loraplane_worker import __main__ as entry
from loraplane_worker.__main__ import main, overrides_of, parse_args


def test_a_bad_config_exits_65_with_a_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message_path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(message_path))
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {name_or_path: m}\ndataset: {path: /d.jsonl}\noutput: {dir: /o}\nlora: {r: 1024}\n"
    )
    assert main(["--config", str(config)]) == 65
    message = json.loads(message_path.read_text())
    assert message["error"] == "ConfigError"
    assert message["inputError"] is True
    assert "lora.r" in message["message"]
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["event"] == "error"


def test_shorthands_stay_strings_and_come_before_set() -> None:
    args = parse_args(["--model", "123", "--output-dir", "/o", "--set", "lora.r=8"])
    assert overrides_of(args) == ['model.nameOrPath="123"', 'output.dir="/o"', "lora.r=8"]


@pytest.mark.parametrize(
    ("child_code", "child_message", "expected_code", "expected_error"),
    [
        (0, '{"sha256":"ab","steps":4}', 0, None),
        (1, '{"error":"DatasetFieldError","message":"no column","inputError":true}', 65, "DatasetFieldError"),
        (1, '{"error":"RuntimeError","message":"NCCL timeout","inputError":false}', 1, "RuntimeError"),
        (1, "", 1, "RuntimeError"),  # killed before it could write anything
    ],
)
def test_the_data_parallel_launcher_passes_on_the_main_process_result(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    child_code: int,
    child_message: str,
    expected_code: int,
    expected_error: str | None,
) -> None:
    seen: dict[str, Any] = {}

    def torchrun(command: list[str], env: dict[str, str], check: bool) -> subprocess.CompletedProcess[str]:
        seen["command"] = command
        if child_message:
            Path(env["TERMINATION_MESSAGE_PATH"]).write_text(child_message)
        return subprocess.CompletedProcess(command, child_code)

    message_path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(message_path))
    monkeypatch.setattr(subprocess, "run", torchrun)
    assert entry.launch_data_parallel(["--config", "c.yaml"], processes=4) == expected_code
    assert seen["command"][1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]
    assert seen["command"][-3:] == ["loraplane_worker", "--config", "c.yaml"]
    written = json.loads(message_path.read_text())
    if expected_error is None:
        assert written == json.loads(child_message)
    else:
        assert written["error"] == expected_error
        assert written["inputError"] is (expected_code == 65)


def test_one_pod_runs_torchrun_standalone() -> None:
    assert entry.torchrun_options(2, 1, {}, "h") == ["--standalone", "--nproc-per-node=2"]


@pytest.mark.parametrize(("index", "is_host"), [("0", "true"), ("1", "false")])
def test_many_nodes_meet_by_c10d_at_index_0_within_the_timeout(index: str, is_host: str) -> None:
    env = {
        "JOB_COMPLETION_INDEX": index,
        "LORAPLANE_RDZV_ENDPOINT": "j-train-0.j-train.ns.svc.cluster.local:29400",
        "LORAPLANE_RDZV_ID": "uid-1",
        "LORAPLANE_RDZV_TIMEOUT_SECONDS": "90",
    }
    options = entry.torchrun_options(1, 2, env, "j-train-1.j-train.ns.svc.cluster.local")
    assert "--nnodes=2" in options
    assert "--rdzv-backend=c10d" in options
    assert "--rdzv-endpoint=j-train-0.j-train.ns.svc.cluster.local:29400" in options
    assert "--rdzv-id=uid-1" in options
    assert f"--rdzv-conf=join_timeout=90,read_timeout=90,is_host={is_host}" in options
    assert "--local-addr=j-train-1.j-train.ns.svc.cluster.local" in options


def test_a_node_whose_peer_never_resolves_reports_a_rendezvous_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_path = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(message_path))
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("LORAPLANE_RDZV_ENDPOINT", "no-such-host.invalid:29400")
    monkeypatch.setenv("LORAPLANE_RDZV_TIMEOUT_SECONDS", "0")
    assert entry.launch_data_parallel(["--config", "c.yaml"], processes=1, nodes=2) == 69
    written = json.loads(message_path.read_text())
    assert written["error"] == "RendezvousTimeout"
    assert "no-such-host.invalid" in written["message"]
    assert "did not all join" in written["message"]
