"""Finding the checkpoint a restarted pod resumes from.

transformers writes `checkpoint-N/` file by file, in place, so a pod killed mid-save leaves a folder
that looks like a checkpoint but is not one. A checkpoint counts only when its adapter weights,
adapter config and `trainer_state.json` (written last) are all there and the state parses and
agrees with the folder's step.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int


def _missing_file(folder: Path) -> str | None:
    if not any((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in ADAPTER_WEIGHTS):
        return "no adapter weights"
    if not (folder / ADAPTER_CONFIG).is_file():
        return f"no {ADAPTER_CONFIG}"
    return None


def incomplete_reason(folder: Path) -> str | None:
    """Why `folder` is not a usable checkpoint, or None when it is."""
    match = CHECKPOINT_NAME.match(folder.name)
    if match is None or not folder.is_dir():
        return "not a checkpoint-N folder"
    if (missing := _missing_file(folder)) is not None:
        return missing
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {TRAINER_STATE}"
    except (OSError, ValueError) as error:
        return f"unreadable {TRAINER_STATE}: {error}"
    if not isinstance(state, dict) or state.get("global_step") != int(match.group(1)):
        return f"{TRAINER_STATE} does not record step {match.group(1)}"
    return None


def newest_complete_checkpoint(checkpoints_dir: Path) -> Checkpoint | None:
    """The highest-step complete checkpoint under `checkpoints_dir`, skipping partial ones."""
    if not checkpoints_dir.is_dir():
        return None
    candidates = []
    for child in checkpoints_dir.iterdir():
        match = CHECKPOINT_NAME.match(child.name)
        if match is not None and child.is_dir():
            candidates.append(Checkpoint(child, int(match.group(1))))
    for checkpoint in sorted(candidates, key=lambda c: c.step, reverse=True):
        if incomplete_reason(checkpoint.path) is None:
            return checkpoint
    return None
