"""Which checkpoint a restarted pod resumes from, on hand-made checkpoint folders."""

from __future__ import annotations

import json
from pathlib import Path

from loraplane_worker.resume import incomplete_reason, newest_complete_checkpoint


def checkpoint(
    root: Path, step: int, *, weights: bool = True, config: bool = True, state: str | None = "ok"
) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    if config:
        (folder / "adapter_config.json").write_text("{}")
    if state == "ok":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state is not None:
        (folder / "trainer_state.json").write_text(state)
    return folder


def test_no_folder_or_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert newest_complete_checkpoint(tmp_path / "absent") is None
    (tmp_path / "runs").mkdir()
    assert newest_complete_checkpoint(tmp_path) is None


def test_the_highest_step_wins_numerically(tmp_path: Path) -> None:
    checkpoint(tmp_path, 9)
    checkpoint(tmp_path, 10)
    checkpoint(tmp_path, 2)
    found = newest_complete_checkpoint(tmp_path)
    assert found is not None
    assert found.step == 10
    assert found.path == tmp_path / "checkpoint-10"


def test_partial_checkpoints_are_skipped(tmp_path: Path) -> None:
    checkpoint(tmp_path, 100)
    checkpoint(tmp_path, 200, state=None)  # killed before trainer_state.json (written last)
    checkpoint(tmp_path, 300, weights=False)
    checkpoint(tmp_path, 400, state='{"global_st')  # killed while writing the state
    checkpoint(tmp_path, 500, state=json.dumps({"global_step": 499}))
    (tmp_path / "checkpoint-600").write_text("a file, not a folder")
    (tmp_path / "tmp-checkpoint-700").mkdir()
    found = newest_complete_checkpoint(tmp_path)
    assert found is not None
    assert found.step == 100


def test_reasons_say_what_is_missing(tmp_path: Path) -> None:
    assert incomplete_reason(checkpoint(tmp_path, 1)) is None
    assert incomplete_reason(checkpoint(tmp_path, 2, state=None)) == "no trainer_state.json"
    assert incomplete_reason(checkpoint(tmp_path, 3, weights=False)) == "no adapter weights"
    assert incomplete_reason(checkpoint(tmp_path, 4, config=False)) == "no adapter_config.json"
    empty_weights = checkpoint(tmp_path, 5)
    (empty_weights / "adapter_model.safetensors").write_bytes(b"")
    assert incomplete_reason(empty_weights) == "no adapter weights"
