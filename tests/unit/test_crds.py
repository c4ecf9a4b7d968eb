"""The committed CRDs are exactly what the models generate, and are valid structural schemas."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from loraplane import crdgen
from manifests import ROOT

GENERATED = crdgen.render_all()
COPIES = [ROOT / "crds", ROOT / "charts" / "loraplane" / "files" / "crds"]


@pytest.mark.parametrize("folder", COPIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_crds_match_the_models(folder) -> None:
    committed = {p.name: p.read_text() for p in folder.glob("*.yaml")}
    assert committed == GENERATED, f"{folder} drifted from the models: run `make crds`"


def test_a_model_change_shows_as_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift test above can fail: change a description and the rendering differs."""
    from loraplane.api.training_job import LoraSettings, LoraTrainingJobSpec  # noqa: PLC0415

    def rebuild() -> None:
        LoraSettings.model_rebuild(force=True)
        LoraTrainingJobSpec.model_rebuild(force=True)

    monkeypatch.setattr(LoraSettings.model_fields["r"], "description", "LoRA rank, any size.")
    rebuild()
    try:
        assert crdgen.render_all() != GENERATED
    finally:
        monkeypatch.undo()
        rebuild()
    assert crdgen.render_all() == GENERATED


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def crd_schemas() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, text in GENERATED.items():
        crd = yaml.safe_load(text)
        out.append((name, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
    return out


@pytest.mark.parametrize(("name", "schema"), crd_schemas(), ids=[n for n, _ in crd_schemas()])
def test_schema_is_structural_and_documented(name: str, schema: dict[str, Any]) -> None:
    for path, node in walk(schema):
        assert "$ref" not in node, f"{name}{path}: not structural"
        assert "anyOf" not in node, f"{name}{path}: not structural"
        assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), f"{name}{path}: no type"
        if path.startswith((".spec", ".status")) and path.count(".") >= 2 and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{name}{path}: every field needs a description (kubectl explain)"
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message"), f"{name}{path}: CEL rule without a message: {rule['rule']}"


def test_every_cel_rule_below_the_root_names_its_field() -> None:
    """Rules on a group name a field when they judge one field; rules on a whole group need not, nor
    do rules on a scalar (an `s3://` URI), which the API server reports at that field itself."""
    for name, schema in crd_schemas():
        for path, node in walk(schema):
            for rule in node.get("x-kubernetes-validations", []):
                if path == "":
                    continue  # the object's root: a fieldPath may only name declared properties
                if node.get("type") not in ("object", None):
                    continue
                whole_group = rule["rule"].startswith(("has(self.", "[has(self.", "self == oldSelf"))
                assert whole_group or "fieldPath" in rule, f"{name}{path}: {rule}"


def test_kubectl_facing_metadata() -> None:
    crds = {yaml.safe_load(t)["spec"]["names"]["kind"]: yaml.safe_load(t)["spec"] for t in GENERATED.values()}
    job, adapter = crds["LoraTrainingJob"], crds["LoraAdapter"]
    assert job["names"]["shortNames"] == ["ltj"]
    assert adapter["names"]["shortNames"] == ["lad"]
    assert job["names"]["categories"] == adapter["names"]["categories"] == ["lora"]
    for spec in (job, adapter):
        assert spec["versions"][0]["subresources"] == {"status": {}}
    job_columns = [c["name"] for c in job["versions"][0]["additionalPrinterColumns"]]
    assert job_columns == ["Status", "Progress", "Loss", "ETA", "Eval Loss", "Vs Base", "Age"]
    adapter_columns = [c["name"] for c in adapter["versions"][0]["additionalPrinterColumns"]]
    assert {"Ready", "Replicas", "Mode", "Age"} <= set(adapter_columns)


def test_spec_of_a_training_job_is_immutable() -> None:
    schema = dict(crd_schemas())["loraplane.io_loratrainingjobs.yaml"]
    rules = [r["rule"] for r in schema["properties"]["spec"]["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules


def test_api_reference_matches_the_models() -> None:
    from loraplane import apidocs  # noqa: PLC0415

    assert (ROOT / "docs" / "api.md").read_text() == apidocs.render(), "docs/api.md drifted: run `make crds`"
