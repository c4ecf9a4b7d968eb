"""The worker's config file: shape, defaults, and errors that name the key (no torch needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loraplane.api.training_job import ALL_LINEAR
from loraplane.api.worker import WorkerInput
from loraplane_worker.config import (
    check_known_keys,
    check_target_modules,
    checkpoints_dir,
    dataset_file_format,
    load_config,
    parse_config,
    resolve_precision,
    set_path,
)
from loraplane_worker.errors import ConfigError, TargetModuleError

MINIMAL = {
    "model": {"nameOrPath": "facebook/opt-350m"},
    "dataset": {"name": "Abirate/english_quotes"},
    "output": {"dir": "/output/uid-1"},
}


def with_(**sections: Any) -> dict[str, Any]:
    document = {key: dict(value) for key, value in MINIMAL.items()}
    for section, values in sections.items():
        document[section] = {**document.get(section, {}), **values} if isinstance(values, dict) else values
    return document


def test_the_defaults_are_the_apis() -> None:
    config = parse_config(MINIMAL)
    assert config.lora.r == 16
    assert config.lora.lora_alpha == 32
    assert config.lora.target_modules == [ALL_LINEAR], "one default, the API's"
    assert config.dataset.column == "text"
    assert config.lora.quantization == "none"
    assert config.training.precision == "auto"
    assert config.metrics.port == 9400
    assert config.served_base_model == "facebook/opt-350m"
    assert str(checkpoints_dir(config)) == "/output/uid-1/checkpoints"


def test_base_model_name_is_what_the_adapter_records() -> None:
    config = parse_config(with_(output={"baseModelName": "served-name"}))
    assert config.served_base_model == "served-name"


def test_snake_case_names_are_accepted_for_local_runs() -> None:
    document = {"model": {"name_or_path": "m"}, "dataset": {"path": "/d.jsonl", "text_field": "t"},
                "output": {"dir": "/o", "base_model_name": "b"}, "training": {"max_steps": 5}}  # fmt: skip
    config = parse_config(document)
    assert config.model.name_or_path == "m"
    assert config.training.max_steps == 5


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (with_(lora={"r": 0}), "lora.r"),
        (with_(lora={"r": 513}), "lora.r"),
        (with_(lora={"r": "eight"}), "lora.r"),
        (with_(surprise={"a": 1}), "surprise: unknown key"),
        (with_(output={"dirr": "/x"}), "output.dirr: unknown key; did you mean 'dir'?"),
        (with_(lora={"lora_rank": 4}), "lora.lora_rank: unknown key"),
        (with_(training={"learnig_rate": 1e-3}), "did you mean 'learning_rate'?"),
        (with_(training={"weight_decay": 0.1}), "go under training.sftArgs"),
        ({"dataset": {"name": "d"}, "output": {"dir": "/o"}}, "model: required"),
        (with_(dataset={"path": "/data.jsonl"}), "exactly one of dataset.name"),
        (with_(dataset={"evalSplit": "test", "evalFraction": 0.1}), "at most one of dataset.evalSplit"),
        (with_(dataset={"evalFraction": 1.5}), "dataset.evalFraction"),
        (
            with_(dataset={"textField": "quote", "messagesField": "messages"}),
            "at most one of dataset.textField",
        ),
        (with_(lora={"quantization": "2bit"}), "lora.quantization"),
        (with_(training={"precision": "fp8"}), "training.precision"),
        (with_(training={"maxLength": 4}), "training.maxLength"),
        (with_(metrics={"port": 70000}), "metrics.port"),
        (with_(lora={"use_dora": True}), "lora.use_dora: unknown key"),
        (with_(lora={"targetModules": ["all-linear", "q_proj"]}), "all-linear"),
    ],
)
def test_errors_name_the_key(document: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match="invalid config") as caught:
        parse_config(document)
    assert expected in str(caught.value)


def test_all_linear_becomes_the_string_peft_expects() -> None:
    config = parse_config(with_(lora={"targetModules": ["all-linear"]}))
    assert config.lora.peft_kwargs()["target_modules"] == ALL_LINEAR
    assert "quantization" not in config.lora.peft_kwargs()


@pytest.mark.parametrize(
    "key",
    ["output_dir", "report_to", "resume_from_checkpoint", "dataset_text_field", "bf16", "chat_template_path"],
)
def test_training_keys_the_worker_owns_are_refused_with_the_operators_words(key: str) -> None:
    with pytest.raises(ConfigError, match=f"training.sftArgs.{key}: not allowed here"):
        parse_config(with_(training={"sftArgs": {key: "x"}}))


def test_chat_column_replaces_the_text_default() -> None:
    config = parse_config(with_(dataset={"messagesField": "conversation"}))
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
    assert config.training.max_steps == 5
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
    """The operator's tests import the worker's config; torch must stay out of that path, and the
    worker needs only the API package of the operator's (what its image installs)."""
    code = (
        "import sys, loraplane_worker.config, loraplane_worker.result, loraplane_worker.resume, "
        "loraplane_worker.progress, loraplane_worker.errors; "
        "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('loraplane.')))"
    )
    root = Path(__file__).resolve().parents[2]
    output = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{root / 'worker'}:{root / 'operator'}"},
    ).stdout
    torch_loaded, operator_modules = output.strip().split(" ", 1)
    assert torch_loaded == "False"
    assert all(name.startswith("loraplane.api") for name in eval(operator_modules)), operator_modules


def test_fsdp_is_transformers_own_settings_and_ddp_adds_none() -> None:
    from loraplane_worker.train import build_sft_config, sharding_kwargs  # noqa: PLC0415 - torch

    assert sharding_kwargs("auto") == sharding_kwargs("ddp") == {}
    document = {
        "model": {"nameOrPath": "m"},
        "dataset": {"path": "/data/d.jsonl"},
        "output": {"dir": "/tmp/out"},
        "training": {"distributed": "fsdp"},
    }
    config = build_sft_config(WorkerInput.model_validate(document), "fp32", has_eval=False, cuda=False)
    assert config.fsdp
    assert config.fsdp_config["version"] == 2
    assert config.fsdp_config["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert config.fsdp_config["state_dict_type"] == "FULL_STATE_DICT"
    assert config.fsdp_config["reshard_after_forward"] is True
    # What the Trainer hands accelerate's FullyShardedDataParallelPlugin, as transformers read it.
    plugin = config.fsdp_plugin_args
    assert plugin is not None
    assert plugin["fsdp_version"] == 2
    assert plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert plugin["state_dict_type"] == "FULL_STATE_DICT"
    assert plugin["reshard_after_forward"] is True
    ddp = build_sft_config(WorkerInput.model_validate({**document, "training": {}}), "fp32", False, False)
    assert ddp.fsdp_plugin_args is None
