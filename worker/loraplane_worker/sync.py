"""A training run's object-store side: inputs copied to local disk before training, checkpoints
uploaded as they are saved, a retry's resume point fetched from the store, the results uploaded.

The trainer only ever sees local folders (the pod's emptyDir): the base model and the data are
copied there first, and checkpoints are written there as they are today. What makes a pod on
another node able to carry on is the upload: `StoreCheckpoints.on_save` copies each checkpoint to
`<run>/checkpoints/checkpoint-N/` once the trainer has finished writing it, its manifest last, and
`restore_checkpoint` brings the newest one that has its manifest back before the local resume rule
(`resume.py`) runs. The adapter goes to `<run>/` and the merged model to `<run>/merged/`, each with
its manifest last (the adapter's records the weights' sha256), so a reader never takes a half
upload for a finished one.

Every store failure is a `StoreError` (storage.py) naming the URI and the store's code; here the
spec field it came from is added to the message, so the job's condition says what to fix.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from loraplane.api.storage import S3Location, S3Path
from loraplane.api.worker import WorkerInput
from loraplane_worker import resume
from loraplane_worker.config import checkpoints_dir
from loraplane_worker.progress import emit
from loraplane_worker.storage import ObjectStore, PermanentStoreError, StoreError, TransientStoreError

CHECKPOINTS = "checkpoints"
MERGED = "merged"
# The adapter's files are linked here (same disk, no copy) so its upload holds only the adapter,
# not the checkpoints and merged model beside it in the output folder.
ADAPTER_UPLOAD = ".adapter.upload"


def _store(location: S3Location) -> ObjectStore:
    return ObjectStore(location.connection)


def _naming(field: str, error: StoreError) -> StoreError:
    """The same error (kind, URI, code) with the spec field that holds the URI in its message."""
    kind = PermanentStoreError if error.permanent else TransientStoreError
    message = f"{field}: {error.message}" if error.message else field
    named = kind(error.uri, error.code, message, error.status)
    named.__cause__ = error.__cause__
    return named


def fetch_inputs(config: WorkerInput) -> None:
    """Copy the base model and the data from the store into their local folders (main process only;
    the others wait and read the same disk)."""
    wanted = [
        ("spec.baseModel.s3", config.model.s3, config.model.name_or_path),
        ("spec.dataset.s3", config.dataset.s3, config.dataset.path),
    ]
    if config.eval_dataset is not None:
        wanted.append(("spec.evalDataset.s3", config.eval_dataset.s3, config.eval_dataset.path))
    for field, location, local in wanted:
        if location is None or local is None:
            continue
        try:
            files = _store(location).download_prefix(location.path, Path(local))
        except StoreError as error:
            raise _naming(field, error) from None
        size = sum(path.stat().st_size for path in files)
        emit({"event": "fetched", "uri": location.uri, "to": local, "files": len(files), "bytes": size})


def checkpoints_location(config: WorkerInput) -> S3Path | None:
    return config.output.s3.path.child(CHECKPOINTS) if config.output.s3 is not None else None


def restore_checkpoint(config: WorkerInput) -> int | None:
    """Fetch the newest complete checkpoint of the store into the local checkpoints folder, unless
    a local one is as new. Returns the step fetched, or None."""
    where = checkpoints_location(config)
    if where is None or config.output.s3 is None:
        return None
    store = _store(config.output.s3)
    try:
        found = store.newest_complete_checkpoint(where)
        if found is None:
            return None
        local = resume.newest_complete_checkpoint(checkpoints_dir(config))
        if local is not None and local.step >= found.step:
            return None
        target = store.download_checkpoint(found, checkpoints_dir(config))
    except StoreError as error:
        raise _naming("spec.output.s3", error) from None
    emit({"event": "checkpoint_fetched", "step": found.step, "uri": found.location.uri, "to": str(target)})
    return found.step


@dataclass
class StoreCheckpoints(TrainerCallback):  # type: ignore[misc]  # transformers is not followed by mypy
    """Upload each checkpoint once the trainer has written it (all processes' parts of it)."""

    location: S3Location
    checkpoints: S3Path

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        # Every process writes its own RNG state into the folder; wait until all have.
        PartialState().wait_for_everyone()
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir or "") / f"checkpoint-{state.global_step}"
        reason = resume.incomplete_reason(folder)
        if reason is not None:
            emit({"event": "checkpoint_not_uploaded", "checkpoint": str(folder), "reason": reason})
            return
        store = _store(self.location)
        try:
            target = store.upload_checkpoint(folder, self.checkpoints)
            # The trainer keeps `save_total_limit` checkpoints on disk; the store keeps as many.
            pruned = store.prune_checkpoints(self.checkpoints, args.save_total_limit or 0)
        except StoreError as error:
            raise _naming("spec.output.s3", error) from None
        emit({"event": "checkpoint_uploaded", "step": state.global_step, "uri": target.uri, "pruned": pruned})


def callbacks(config: WorkerInput) -> list[TrainerCallback]:
    where = checkpoints_location(config)
    if where is None or config.output.s3 is None:
        return []
    return [StoreCheckpoints(config.output.s3, where)]


@dataclass(frozen=True)
class Uploaded:
    uri: str
    sha256: str | None
    merged_uri: str | None


def upload_results(config: WorkerInput, output_dir: Path, merged_dir: Path | None) -> Uploaded | None:
    """The merged model (when written), then the adapter: the adapter's manifest is the run's last
    write, so a complete adapter in the store means a complete run."""
    location = config.output.s3
    if location is None:
        return None
    store = _store(location)
    merged_uri = None
    try:
        if merged_dir is not None:
            target = location.path.child(MERGED)
            store.upload_tree(merged_dir, target)
            merged_uri = target.uri
        staging = output_dir / ADAPTER_UPLOAD
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for path in output_dir.iterdir():
            if path.is_file() and not path.name.startswith("."):
                os.link(path, staging / path.name)
        manifest = store.upload_adapter(staging, location.path)
        shutil.rmtree(staging, ignore_errors=True)
    except StoreError as error:
        raise _naming("spec.output.s3", error) from None
    emit({"event": "adapter_uploaded", "uri": location.uri, "sha256": manifest.sha256})
    return Uploaded(location.uri, manifest.sha256, merged_uri)
