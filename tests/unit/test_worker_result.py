"""The termination message: compact JSON within Kubernetes' 4096 bytes, and the exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplane.api.worker import TrainingReport, read_report
from loraplane_worker import errors
from loraplane_worker.result import (
    MAX_MESSAGE_BYTES,
    failure_message,
    fit_message,
    module_leaf_names,
    success_message,
    write_termination_message,
)


def result(**changes: object) -> TrainingReport:
    values: dict[str, object] = {
        "adapter_dir": "/output/uid-1",
        "sha256": "ab" * 32,
        "size_bytes": 33808,
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "base_model": "facebook/opt-350m",
        "train_loss": 2.3456789,
        "eval_loss": 2.5,
        "steps": 60,
        "trainable_parameters": 786432,
        "all_parameters": 331982848,
        "resumed_from_step": 40,
        "merged_dir": None,
    }
    values.update(changes)
    return TrainingReport.model_validate(values)


def test_success_message_is_the_shared_models_wire_form() -> None:
    text = success_message(result())
    assert read_report(text) == result(train_loss=2.345679), "what the operator reads back"
    message = json.loads(text)
    assert message == {
        "adapterDir": "/output/uid-1",
        "sha256": "ab" * 32,
        "sizeBytes": 33808,
        "r": 8,
        "loraAlpha": 16,
        "targetModules": ["q_proj", "v_proj"],
        "baseModel": "facebook/opt-350m",
        "trainLoss": 2.345679,
        "evalLoss": 2.5,
        "steps": 60,
        "trainableParameters": 786432,
        "allParameters": 331982848,
        "resumedFromStep": 40,
    }, "camelCase, absent fields left out"


def test_a_diverged_loss_is_reported_as_absent_not_as_invalid_json() -> None:
    message = json.loads(success_message(result(train_loss=float("nan"), eval_loss=float("inf"))))
    assert "trainLoss" not in message
    assert "evalLoss" not in message


def test_optional_fields_are_dropped_first_to_fit() -> None:
    many_modules = [f"module_number_{i}" for i in range(400)]
    text = success_message(result(target_modules=many_modules))
    assert len(text.encode()) <= MAX_MESSAGE_BYTES
    message = json.loads(text)
    assert "targetModules" not in message
    assert message["sha256"] == "ab" * 32
    assert message["evalLoss"] == 2.5


def test_huge_strings_are_shortened_and_the_json_stays_valid() -> None:
    text = success_message(result(adapter_dir="/output/" + "é" * 5000, merged_dir="/m/" + "x" * 3000))
    assert len(text.encode()) <= MAX_MESSAGE_BYTES
    message = json.loads(text)
    assert message["adapterDir"].startswith("/output/é")
    assert message["adapterDir"].endswith("…")
    assert message["sha256"] == "ab" * 32


def test_fit_message_leaves_a_small_payload_alone() -> None:
    assert fit_message({"a": 1, "b": "two"}, ["a"]) == '{"a":1,"b":"two"}'


def test_failure_message_is_one_line_and_says_whether_input_was_wrong() -> None:
    message = json.loads(failure_message(errors.DatasetFieldError("no column 'text';\ncolumns are a, b")))
    assert message == {
        "error": "DatasetFieldError",
        "message": "no column 'text'; columns are a, b",
        "inputError": True,
    }
    crash = json.loads(failure_message(RuntimeError("CUDA out of memory. " * 1000)))
    assert crash["inputError"] is False
    assert crash["error"] == "RuntimeError"
    assert len(failure_message(RuntimeError("x" * 10000)).encode()) <= MAX_MESSAGE_BYTES


def test_all_linear_module_names_are_made_compact() -> None:
    names = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.0.mlp.up_proj",
    ]
    assert module_leaf_names(names) == ["q_proj", "up_proj"]
    assert module_leaf_names("all-linear") == ["all-linear"]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.ConfigError("x"), 65),
        (errors.DatasetFieldError("x"), 65),
        (errors.ModelNotFoundError("x"), 65),
        (errors.QuantizationUnavailableError("x"), 65),
        (errors.TargetModuleError("x"), 65),
        (RuntimeError("CUDA out of memory"), 1),
        (OSError("connection reset"), 1),
    ],
)
def test_exit_codes_separate_input_errors_from_the_rest(error: BaseException, code: int) -> None:
    assert errors.exit_code_for(error) == code
    assert errors.EXIT_INPUT_ERROR == 65
    assert errors.EXIT_FAILURE == 1


def test_the_message_goes_where_kubernetes_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "termination-log"
    monkeypatch.setenv("TERMINATION_MESSAGE_PATH", str(target))
    assert write_termination_message('{"a":1}') == target
    assert target.read_text() == '{"a":1}'
