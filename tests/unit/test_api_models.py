"""The API models: examples validate, wire format is camelCase, bad input names its field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loraplane.api import LoraAdapter, LoraTrainingJob
from loraplane.api.training_job import ALL_LINEAR, LoraSettings, LoraTrainingJobSpec
from manifests import EXAMPLES, INVALID, Invalid, load_documents

MODELS = {"LoraTrainingJob": LoraTrainingJob, "LoraAdapter": LoraAdapter}


def example_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        docs += [(f"{path.relative_to(EXAMPLES)}:{d['kind']}", d) for d in load_documents(path)]
    return docs


@pytest.mark.parametrize(("where", "doc"), example_documents(), ids=[w for w, _ in example_documents()])
def test_every_example_validates(where: str, doc: dict) -> None:
    model = MODELS.get(doc["kind"])
    if model is None:
        assert doc["apiVersion"] in ("v1", "apps/v1"), f"{where}: unexpected kind"
        return
    parsed = model.model_validate(doc)
    assert parsed.metadata["name"]


def test_loraplane_kinds_appear_in_examples() -> None:
    kinds = {doc["kind"] for _, doc in example_documents()}
    assert {"LoraTrainingJob", "LoraAdapter"} <= kinds


def test_the_classic_example_keeps_the_guide_settings() -> None:
    docs = load_documents(EXAMPLES / "opt-350m-english-quotes.yaml")
    job = LoraTrainingJob.model_validate(next(d for d in docs if d["kind"] == "LoraTrainingJob"))
    assert job.spec.base_model.name == "facebook/opt-350m"
    assert job.spec.dataset.name == "Abirate/english_quotes"
    assert job.spec.dataset.text_field == "quote"
    assert (job.spec.lora.r, job.spec.lora.lora_alpha, job.spec.lora.lora_dropout) == (16, 32, 0.05)
    assert job.spec.lora.target_modules == ["q_proj", "v_proj"]
    assert job.spec.training.num_train_epochs == 3
    assert job.spec.training.per_device_train_batch_size == 4
    assert job.spec.training.learning_rate == pytest.approx(2e-4)


def test_wire_format_is_camel_case_and_round_trips() -> None:
    spec = LoraTrainingJobSpec.model_validate(
        {
            "baseModel": {"name": "facebook/opt-350m"},
            "dataset": {"name": "Abirate/english_quotes", "textField": "quote"},
            "output": {"volume": {"claimName": "out"}},
            "training": {"perDeviceTrainBatchSize": 2, "sftArgs": {"weight_decay": 0.01}},
        }
    )
    wire = spec.to_wire()
    assert wire["training"]["perDeviceTrainBatchSize"] == 2
    assert wire["lora"]["loraAlpha"] == 32
    # Pass-through keys keep TRL's own snake_case names.
    assert wire["training"]["sftArgs"] == {"weight_decay": 0.01}
    assert LoraTrainingJobSpec.model_validate(wire) == spec


def test_lora_fields_are_peft_names() -> None:
    """The worker passes `lora` straight into peft.LoraConfig: the Python names must be PEFT's."""
    names = set(LoraSettings.model_fields) - {"quantization"}
    assert names == {"r", "lora_alpha", "lora_dropout", "target_modules", "bias", "task_type", "use_rslora"}
    assert LoraSettings().target_modules == [ALL_LINEAR]


def test_unknown_fields_are_rejected_with_their_name() -> None:
    with pytest.raises(ValidationError) as raised:
        LoraSettings.model_validate({"rank": 8})
    assert "rank" in str(raised.value)


def _loc(error: dict) -> str:
    return ".".join(str(p) for p in error["loc"])


@pytest.mark.parametrize("case", [c for c in INVALID if not c.server_only], ids=lambda c: c.id)
def test_invalid_manifest_is_rejected_naming_the_field(case: Invalid) -> None:
    with pytest.raises(ValidationError) as raised:
        MODELS[case.kind].model_validate(case.manifest())
    locations = [_loc(e) for e in raised.value.errors()]
    assert any(loc == case.field or loc.startswith(case.field + ".") for loc in locations), locations


def test_the_invalid_table_is_large_enough() -> None:
    assert len(INVALID) >= 15
    assert sum(c.server_only for c in INVALID) >= 5
