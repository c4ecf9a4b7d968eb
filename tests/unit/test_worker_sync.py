"""The worker's object-store side without a store: which errors keep their kind (and so their exit
code) once the spec field is added, and which configs have anything to sync."""

from __future__ import annotations

import pytest

from loraplane.api.worker import WorkerInput
from loraplane_worker.errors import EXIT_FAILURE, EXIT_INPUT_ERROR, exit_code_for
from loraplane_worker.storage import (
    DigestMismatchError,
    PermanentStoreError,
    StoreError,
    TransientStoreError,
)

pytestmark = pytest.mark.torch  # sync.py is a TrainerCallback module


def config(**output: object) -> WorkerInput:
    return WorkerInput.model_validate(
        {
            "model": {"nameOrPath": "/data/model"},
            "dataset": {"path": "/data/d.jsonl"},
            "output": {"dir": "/o", **output},
        }
    )


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PermanentStoreError("s3://b/k", "NoSuchKey", "no object under this prefix", 404), EXIT_INPUT_ERROR),
        (DigestMismatchError("s3://b/k", "aa", "bb"), EXIT_INPUT_ERROR),
        (TransientStoreError("s3://b/k", "EndpointUnreachable", "refused"), EXIT_FAILURE),
    ],
)
def test_naming_the_field_keeps_the_uri_the_code_and_the_exit_code(error: StoreError, code: int) -> None:
    from loraplane_worker import sync  # noqa: PLC0415 - transformers

    named = sync._naming("spec.dataset.s3", error)
    assert str(named).startswith(f"s3://b/k: {error.code}: spec.dataset.s3")
    assert exit_code_for(named) == code


def test_only_an_s3_output_uploads_or_resumes_from_the_store() -> None:
    from loraplane_worker import sync  # noqa: PLC0415 - transformers

    assert sync.callbacks(config()) == []
    assert sync.checkpoints_location(config()) is None
    stored = config(s3={"uri": "s3://runs/adapters/uid"})
    assert str(sync.checkpoints_location(stored)) == "s3://runs/adapters/uid/checkpoints"
    (callback,) = sync.callbacks(stored)
    assert isinstance(callback, sync.StoreCheckpoints)
