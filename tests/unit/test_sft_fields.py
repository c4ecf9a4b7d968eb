"""Pass-through SFTConfig arguments: validated without torch, against the pinned TRL's fields."""

from __future__ import annotations

import pytest

from loraplane import sft_fields
from loraplane.api import sft_args


def test_known_fields_of_the_right_type_pass() -> None:
    args = {"weight_decay": 0.01, "optim": "adamw_torch", "save_total_limit": 2}
    assert sft_args.validate_sft_args(args) == []


def test_an_int_is_accepted_where_a_float_is_expected() -> None:
    assert sft_args.validate_sft_args({"weight_decay": 0}) == []


def test_a_typo_is_an_error_with_a_hint() -> None:
    [problem] = sft_args.validate_sft_args({"weightdecay": 0.1})
    assert problem.startswith("spec.training.sftArgs.weightdecay: not a field of TRL")
    assert "did you mean weight_decay?" in problem


def test_wrong_type_names_the_expected_one() -> None:
    [problem] = sft_args.validate_sft_args({"weight_decay": "lots"})
    assert problem == "spec.training.sftArgs.weight_decay: expected float, got str"


def test_a_bool_is_not_an_int() -> None:
    [problem] = sft_args.validate_sft_args({"dataloader_num_workers": True})
    assert "dataloader_num_workers: expected" in problem


@pytest.mark.parametrize(
    ("name", "pointer"),
    [
        ("output_dir", "spec.output"),
        ("learning_rate", "spec.training.learningRate"),
        ("hub_token", "spec.hfTokenSecretRef"),
        ("dataset_text_field", "spec.dataset.textField"),
        ("tf32", "spec.training.precision"),
        ("chat_template_path", "added tokens"),
    ],
)
def test_fields_owned_by_loraplane_or_the_spec_are_refused(name: str, pointer: str) -> None:
    [problem] = sft_args.validate_sft_args({name: "x"})
    assert problem.startswith(f"spec.training.sftArgs.{name}: not allowed here")
    assert pointer in problem


@pytest.mark.torch
def test_fields_file_matches_the_installed_trl() -> None:
    """Drift: the committed list is what the pinned TRL's SFTConfig has (`make crds` rewrites it)."""
    assert sft_fields.FIELDS_FILE.read_text() == sft_fields.render(), "run `make crds`"


def test_every_training_field_is_an_sft_config_field_of_the_pinned_trl() -> None:
    """`spec.training` uses SFTConfig's own names, so the worker passes them straight in."""
    from loraplane.api.training_job import TrainingSettings  # noqa: PLC0415

    known = sft_args.allowed_fields()["fields"]
    for name, field in TrainingSettings.model_fields.items():
        if name in TrainingSettings.NOT_SFT_FIELDS:
            continue  # loraplane's own: mapped to bf16/fp16, and the pass-through itself
        assert name in known, f"spec.training.{name} is not a field of SFTConfig"
        choices = known[name].get("choices")
        literal = getattr(field.annotation, "__args__", None)
        if choices and literal:
            assert set(literal) <= set(choices), f"spec.training.{name}: {set(literal) - set(choices)}"


def test_every_refused_name_is_a_field_of_the_pinned_trl() -> None:
    """The refusals are derived from the models; a name TRL does not have would be a stale marker."""
    known = sft_args.allowed_fields()["fields"]
    assert set(sft_args.refused_sft_args()) <= set(known)
