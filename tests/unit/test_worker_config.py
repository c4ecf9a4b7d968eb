"""The worker's config file: shape, defaults, and errors that name the key (no torch needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loraplane_worker.config import (
    ALL_LINEAR,
    check_known_keys,
    check_target_modules,
    dataset_file_format,
    load_config,
    parse_config,
    resolve_precision,
    set_path,
)
from loraplane_worker.errors import ConfigError, TargetModuleError

MINIMAL = {
    "model": {"name_or_path": "facebook/opt-350m"},
    "dataset": {"name": "Abirate/english_quotes"},
    "output": {"dir": "/output/uid-1"},
}


def with_(**sections: Any) -> dict[str, Any]:
    document = {key: dict(value) for key, value in MINIMAL.items()}
    for section, values in sections.items():
        document[section] = {**document.get(section, {}), **values} if isinstance(values, dict) else values
    return document


def test_the_documented_example_parses_with_its_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.lora.r == 16
    assert config.lora.lora_alpha == 32
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.dataset.column == "text"
    assert config.quantization == "none"
    assert config.precision == "auto"
    assert config.metrics.port == 9400
    assert config.served_base_model == "facebook/opt-350m"
    assert str(config.checkpoints_dir) == "/output/uid-1/checkpoints"


def test_base_model_name_is_what_the_adapter_records() -> None:
    config = parse_config(with_(output={"base_model_name": "served-name"}))
    assert config.served_base_model == "served-name"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (with_(lora={"r": 0}), "lora.r"),
        (with_(lora={"r": 513}), "lora.r"),
        (with_(lora={"r": "eight"}), "lora.r"),
        (with_(surprise={"a": 1}), "surprise: unknown key"),
        (with_(output={"dirr": "/x"}), "output.dirr: unknown key"),
        ({"dataset": {"name": "d"}, "output": {"dir": "/o"}}, "model: required"),
        (with_(dataset={"path": "/data.jsonl"}), "exactly one of dataset.name"),
        (with_(dataset={"eval_split": "test", "eval_fraction": 0.1}), "at most one of dataset.eval_split"),
        (with_(dataset={"eval_fraction": 1.5}), "dataset.eval_fraction"),
        (
            with_(dataset={"text_field": "quote", "messages_field": "messages"}),
            "at most one of dataset.text_field",
        ),
        (with_(quantization="2bit"), "quantization"),
        (with_(precision="fp8"), "precision"),
        (with_(metrics={"port": 70000}), "metrics.port"),
    ],
)
def test_errors_name_the_key(document: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match="invalid config") as caught:
        parse_config(document)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("use_dora", True, "DoRA"),
        ("modules_to_save", ["lm_head"], "modules_to_save"),
        ("trainable_token_indices", [5], "token embeddings"),
    ],
)
def test_lora_options_vllm_refuses_are_errors(key: str, value: object, why: str) -> None:
    with pytest.raises(ConfigError, match=f"lora.{key}: .*{why}"):
        parse_config(with_(lora={key: value}))


def test_further_lora_options_pass_through_and_vllm_needs_are_forced() -> None:
    config = parse_config(with_(lora={"init_lora_weights": "gaussian", "use_dora": False}))
    kwargs = config.lora.peft_kwargs()
    assert kwargs["init_lora_weights"] == "gaussian"
    assert kwargs["use_dora"] is False
    assert kwargs["modules_to_save"] is None


@pytest.mark.parametrize("value", [["all-linear"], "all-linear"])
def test_all_linear_becomes_the_string_peft_expects(value: object) -> None:
    assert parse_config(with_(lora={"target_modules": value})).lora.target_modules == ALL_LINEAR


def test_all_linear_stands_alone() -> None:
    with pytest.raises(ConfigError, match="all-linear"):
        parse_config(with_(lora={"target_modules": ["all-linear", "q_proj"]}))


@pytest.mark.parametrize(
    "key", ["output_dir", "report_to", "resume_from_checkpoint", "dataset_text_field", "bf16"]
)
def test_training_keys_the_worker_owns_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=f"training.{key} is set by the worker"):
        parse_config(with_(training={key: "x"}))


@pytest.mark.parametrize("value", [0, -3, True, "64"])
def test_max_length_below_one_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match=r"training\.max_length"):
        parse_config(with_(training={"max_length": value}))


def test_chat_column_replaces_the_text_default() -> None:
    config = parse_config(with_(dataset={"messages_field": "conversation"}))
    assert config.dataset.is_chat
    assert config.dataset.column == "conversation"


def test_unknown_library_option_is_named_with_the_closest_known_one() -> None:
    with pytest.raises(
        ConfigError, match=r"training.learnig_rate: unknown option; did you mean 'learning_rate'"
    ):
        check_known_keys("training", ["max_steps", "learnig_rate"], ["max_steps", "learning_rate"])


def test_file_format_comes_from_the_extension_or_the_override() -> None:
    assert dataset_file_format("/d/train.jsonl") == "json"
    assert dataset_file_format("/d/train.parquet") == "parquet"
    assert dataset_file_format("/d/notes.txt") == "text"
    assert dataset_file_format("/d/data.bin", "csv") == "csv"
    with pytest.raises(ConfigError, match=r"dataset.path '/d/data.bin'.*dataset.format"):
        dataset_file_format("/d/data.bin")


def test_precision_auto_picks_by_hardware() -> None:
    assert resolve_precision("auto", cuda=True, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", cuda=True, bf16_supported=False) == "fp16"
    assert resolve_precision("auto", cuda=False, bf16_supported=False) == "fp32"
    assert resolve_precision("fp16", cuda=False, bf16_supported=False) == "fp16"


LLAMA_MODULES = [
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.self_attn.v_proj",
    "model.layers.0.mlp.down_proj",
    "lm_head",
]


def test_target_modules_match_like_peft() -> None:
    check_target_modules(["q_proj", "down_proj"], LLAMA_MODULES, LLAMA_MODULES)
    check_target_modules(ALL_LINEAR, LLAMA_MODULES, LLAMA_MODULES)
    check_target_modules(r".*\.q_proj", LLAMA_MODULES, LLAMA_MODULES)


def test_a_missing_target_module_is_named_with_the_linear_layers() -> None:
    with pytest.raises(TargetModuleError) as caught:
        check_target_modules(["q_proj", "query_key_value"], LLAMA_MODULES, LLAMA_MODULES)
    message = str(caught.value)
    assert "'query_key_value' is not a module" in message
    assert "down_proj, q_proj, v_proj" in message
    assert "lm_head" not in message


def test_file_and_overrides_combine(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "model: {name_or_path: m}\ndataset: {path: /d.jsonl}\noutput: {dir: /o}\ntraining: {max_steps: 100}\n"
    )
    config = load_config(path, ["lora.r=8", "training.max_steps=5", "lora.target_modules=[q_proj, k_proj]"])
    assert config.lora.r == 8
    assert config.training["max_steps"] == 5
    assert config.lora.target_modules == ["q_proj", "k_proj"]


def test_flags_alone_make_a_config() -> None:
    config = load_config(None, ['model.name_or_path="123"', "dataset.path=/d.jsonl", "output.dir=/o"])
    assert config.model.name_or_path == "123"


@pytest.mark.parametrize("assignment", ["lora.r", "=8"])
def test_a_malformed_override_is_an_error(assignment: str) -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        set_path({}, assignment)


def test_unreadable_or_non_mapping_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)


def test_the_config_module_does_not_import_torch() -> None:
    """The operator's tests import the worker's config; torch must stay out of that path."""
    code = (
        "import sys, loraplane_worker.config, loraplane_worker.result, loraplane_worker.resume, "
        "loraplane_worker.progress, loraplane_worker.errors; print('torch' in sys.modules)"
    )
    worker_dir = Path(__file__).resolve().parents[2] / "worker"
    output = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(worker_dir)},
    ).stdout
    assert output.strip() == "False"
