"""The training worker on the tiny local Llama: real TRL/PEFT training on the CPU, a few steps each.

Offline (HF_HUB_OFFLINE=1), no GPU. Runs in-process where a test needs to watch training from a
callback, and through the real entry point (`python -m loraplane_worker`) where the exit code and
the termination message are what is tested.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402 - after HF_HUB_OFFLINE, which huggingface_hub reads at import
from datasets import Dataset  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors import safe_open  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402

from loraplane.api.worker import WorkerInput  # noqa: E402
from loraplane_devcluster.testing import wait_until  # noqa: E402
from loraplane_devcluster.tinymodel import TinyModel, ensure_tiny_model  # noqa: E402
from loraplane_worker import errors  # noqa: E402
from loraplane_worker.config import parse_config  # noqa: E402
from loraplane_worker.data import examples_digest  # noqa: E402
from loraplane_worker.progress import parse_metrics  # noqa: E402
from loraplane_worker.result import success_message  # noqa: E402
from loraplane_worker.train import run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SERVED_NAME = "tiny-llama"
PROMPT = '"The quiet river'


@pytest.fixture(scope="session")
def tiny() -> TinyModel:
    return ensure_tiny_model()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def document(tiny: TinyModel, out_dir: Path, **sections: Any) -> dict[str, Any]:
    """A small, fast config: 4 steps of 4 examples of at most 64 tokens."""
    base: dict[str, Any] = {
        "model": {"name_or_path": str(tiny.model_dir)},
        "dataset": {"path": str(tiny.text_dataset)},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "training": {
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "max_length": 64,
            "learning_rate": 1e-2,
            "logging_steps": 1,
            "save_steps": 2,
            "gradient_checkpointing": False,
        },
        "output": {"dir": str(out_dir), "base_model_name": SERVED_NAME},
        "metrics": {"port": 0},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    return base


def config(tiny: TinyModel, out_dir: Path, **sections: Any) -> WorkerInput:
    return parse_config(document(tiny, out_dir, **sections))


def logits(model: Any, tokenizer: Any) -> Any:
    inputs = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


class Scrape(TrainerCallback):
    """Reads the worker's metrics endpoint from inside training, after a chosen step."""

    def __init__(self, port: int, at_step: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.at_step = at_step
        self.values: dict[str, float] = {}

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if state.global_step == self.at_step:
            with urllib.request.urlopen(self.url, timeout=10) as response:
                self.values = parse_metrics(response.read().decode())


class CrashAfterSave(TrainerCallback):
    """Stands in for a killed pod: fails right after the checkpoint of `step` is on disk."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if state.global_step == self.step:
            raise RuntimeError(f"simulated crash after the checkpoint of step {self.step}")


class FirstStep(TrainerCallback):
    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.step = state.global_step


def test_text_adapter_is_vllm_ready_merges_and_reports_progress(tiny: TinyModel, tmp_path: Path) -> None:
    port = free_port()
    scrape = Scrape(port, at_step=2)
    settings = config(
        tiny,
        tmp_path / "out",
        dataset={"eval_fraction": 0.1},
        output={"merge": True},
        metrics={"port": port},
    )
    result = run(settings, callbacks=[scrape])
    assert result is not None

    # Progress was served while training ran.
    assert scrape.values["step"] == 2
    assert scrape.values["total_steps"] == 4
    assert scrape.values["progress_ratio"] == 0.5
    assert scrape.values["trainable_parameters"] == result.trainable_parameters > 0
    assert scrape.values["loss"] > 0
    assert scrape.values["tokens_per_second"] > 0

    # The adapter is what vLLM accepts.
    out = tmp_path / "out"
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == SERVED_NAME
    assert adapter_config["modules_to_save"] is None
    assert adapter_config["use_dora"] is False
    assert adapter_config["r"] == 8
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    assert not (out / ".adapter.partial").exists()

    # The result matches the files.
    message = json.loads(success_message(result))
    weights = (out / "adapter_model.safetensors").read_bytes()
    assert message["sha256"] == hashlib.sha256(weights).hexdigest()
    assert message["sizeBytes"] == len(weights)
    assert message["steps"] == 4
    assert message["evalLoss"] is not None
    assert "resumedFromStep" not in message, "a fresh run: absent, not null"
    assert message["mergedDir"] == str(out / "merged")

    # The adapter loads with PEFT and changes the model; the merged model equals base + adapter.
    tokenizer = AutoTokenizer.from_pretrained(tiny.model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny.model_dir)
    base_logits = logits(base, tokenizer)
    adapted = PeftModel.from_pretrained(base, str(out))
    adapted_logits = logits(adapted, tokenizer)
    assert not torch.allclose(base_logits, adapted_logits, atol=1e-4)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert torch.allclose(logits(merged, tokenizer), adapted_logits, atol=1e-4)
    assert AutoTokenizer.from_pretrained(out / "merged").get_vocab() == tokenizer.get_vocab()


def test_a_crashed_run_resumes_from_its_newest_complete_checkpoint(tiny: TinyModel, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config(tiny, out), callbacks=[CrashAfterSave(step=2)])
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / "adapter_config.json").exists(), "a failed run must not leave an adapter behind"

    # A save killed half-way leaves a folder without its trainer state; it must be skipped.
    partial = out / "checkpoints" / "checkpoint-3"
    partial.mkdir()
    shutil.copy(out / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors", partial)

    first = FirstStep()
    result = run(config(tiny, out), callbacks=[first])
    assert result is not None
    assert first.step == 2
    assert result.resumed_from_step == 2
    assert result.steps == 4
    assert (out / "adapter_model.safetensors").is_file()


def test_the_base_model_and_the_adapter_are_evaluated_on_the_same_recorded_data(
    tiny: TinyModel, tmp_path: Path
) -> None:
    """Two runs that train differently on the same held-out data: the base model's figures are the
    same (they are the base model's, taken with the adapter disabled), the adapters' differ, and both
    record the same digest; another seed holds out other examples, so another digest."""
    eval_data = {"dataset": {"eval_fraction": 0.2}}
    fast = run(config(tiny, tmp_path / "fast", training={"learning_rate": 1e-2, "max_steps": 6}, **eval_data))
    slow = run(config(tiny, tmp_path / "slow", training={"learning_rate": 1e-4, "max_steps": 6}, **eval_data))
    assert fast is not None
    assert fast.evaluation is not None
    assert slow is not None
    assert slow.evaluation is not None
    assert fast.evaluation.examples == slow.evaluation.examples == 40  # 20% of 200 quotes
    assert fast.evaluation.digest == slow.evaluation.digest
    assert fast.evaluation.digest is not None
    assert fast.evaluation.digest.startswith("sha256:")
    assert fast.evaluation.base_loss == pytest.approx(slow.evaluation.base_loss, rel=1e-5)
    assert fast.evaluation.base_mean_token_accuracy == pytest.approx(slow.evaluation.base_mean_token_accuracy)
    assert fast.evaluation.loss is not None
    assert fast.evaluation.base_loss is not None
    assert fast.evaluation.loss < fast.evaluation.base_loss, "lr 1e-2 on the tiny model learns"
    assert fast.evaluation.loss != pytest.approx(slow.evaluation.loss, rel=1e-4)
    assert fast.eval_loss == fast.evaluation.loss
    assert 0 <= fast.evaluation.mean_token_accuracy <= 1  # type: ignore[operator]
    message = json.loads(success_message(fast))
    assert message["evaluation"]["digest"] == fast.evaluation.digest

    other = run(config(tiny, tmp_path / "other", training={"max_steps": 1, "seed": 7}, **eval_data))
    assert other is not None
    assert other.evaluation is not None
    assert other.evaluation.digest != fast.evaluation.digest


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_eval_data_of_its_own_is_evaluated_before_and_after_training_and_recorded_by_digest(
    tiny: TinyModel, tmp_path: Path
) -> None:
    """`evalDataset`: a file of its own, here with another text column than the training data's,
    read like the training data; the base model and the adapter are evaluated on exactly its
    examples (empty ones dropped), and the digest is of those, whatever the column is called."""
    quotes = [json.loads(line)["text"] for line in tiny.text_dataset.read_text().splitlines()]
    train = jsonl(tmp_path / "train.jsonl", [{"text": q} for q in quotes[:176]])
    held_out = [{"body": q} for q in quotes[176:]]
    eval_file = jsonl(tmp_path / "eval.jsonl", [*held_out, {"body": "  "}])
    result = run(
        config(
            tiny,
            tmp_path / "out",
            dataset={"path": str(train)},
            eval_dataset={"path": str(eval_file), "text_field": "body"},
            training={"max_steps": 6},
        )
    )
    assert result is not None
    evaluation = result.evaluation
    assert evaluation is not None
    assert evaluation.examples == len(held_out) == 24, "the blank line is dropped, nothing else"
    assert evaluation.digest == examples_digest(Dataset.from_list([{"text": q} for q in quotes[176:]]))
    assert evaluation.base_loss is not None
    assert evaluation.loss is not None
    assert evaluation.loss < evaluation.base_loss, "lr 1e-2 on the tiny model learns"
    assert 0 <= evaluation.base_mean_token_accuracy <= 1  # type: ignore[operator]
    assert 0 <= evaluation.mean_token_accuracy <= 1  # type: ignore[operator]
    assert result.eval_loss == evaluation.loss
    assert json.loads(success_message(result))["evaluation"]["digest"] == evaluation.digest


def test_input_errors_are_specific_and_write_nothing(tiny: TinyModel, tmp_path: Path) -> None:
    """Each bad input fails before training with its own error, at the earliest point it can be known;
    the output folder gets no adapter."""
    no_template = tmp_path / "no-chat-template"
    shutil.copytree(tiny.model_dir, no_template)
    (no_template / "chat_template.jinja").unlink()
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny.model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny.model_dir, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    # A chat template that spends more tokens around every exchange than maxLength allows (plain
    # text: it adds no tokens to the vocabulary).
    wordy = tmp_path / "wordy-template"
    shutil.copytree(tiny.model_dir, wordy)
    (wordy / "chat_template.jinja").write_text(
        "{% for m in messages %}the quiet river said this to the brave bridge: "
        "{{ m['content'] }}\n{% endfor %}"
    )
    not_chat = jsonl(tmp_path / "not-chat.jsonl", [{"messages": "hello"}])
    no_roles = jsonl(tmp_path / "no-roles.jsonl", [{"messages": [{"speaker": "a", "text": "hi"}]}] * 8)
    numbers = jsonl(tmp_path / "numbers.jsonl", [{"text": i} for i in range(8)])
    blank = jsonl(tmp_path / "blank.jsonl", [{"text": ""}] * 50)
    few = jsonl(
        tmp_path / "few.jsonl", [{"text": "one"}, {"text": "two"}, {"text": "three"}] + [{"text": " "}] * 9
    )
    one = jsonl(tmp_path / "one.jsonl", [{"text": "just one example"}])
    five = jsonl(tmp_path / "five.jsonl", [{"text": f"example {i}"} for i in range(5)])
    blank_csv = tmp_path / "blank.csv"
    blank_csv.write_text("text,author\n" + ",someone\n" * 8)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    chat = {"path": str(tiny.chat_dataset), "text_field": None, "messages_field": "messages"}
    cases: list[tuple[dict[str, Any], type[errors.InputError], str]] = [
        ({"lora": {"target_modules": ["query_key_value"]}}, errors.TargetModuleError, "q_proj"),
        ({"training": {"learnig_rate": 1e-3}}, errors.ConfigError, "did you mean 'learning_rate'"),
        ({"lora": {"lora_rank": 4}}, errors.ConfigError, "lora.lora_rank: unknown key"),
        ({"training": {"lr_scheduler_type": "sideways"}}, errors.ConfigError, "sideways"),
        ({"training": {"sft_args": {"chat_template_path": "/t.jinja"}}}, errors.ConfigError, "added tokens"),
        (
            {"model": {"name_or_path": str(tmp_path / "absent")}},
            errors.ModelNotFoundError,
            "no such directory",
        ),
        ({"model": {"name_or_path": str(no_weights)}}, errors.ModelFilesError, "no weights in the directory"),
        (
            {"model": {"name_or_path": str(no_tokenizer)}},
            errors.ModelFilesError,
            "no tokenizer in the directory",
        ),
        ({"dataset": {"path": str(tmp_path / "absent.jsonl")}}, errors.DatasetNotFoundError, "absent.jsonl"),
        ({"dataset": {"path": str(empty)}}, errors.EmptyDatasetError, "empty"),
        ({"dataset": {"path": str(blank)}}, errors.EmptyDatasetError, "column 'text' of the training data"),
        ({"dataset": {"path": str(blank)}}, errors.EmptyDatasetError, "holds only empty strings (50 rows"),
        (
            {"dataset": {"path": str(blank_csv)}},
            errors.EmptyDatasetError,
            "column 'text' of the training data",
        ),
        ({"dataset": {"path": str(few)}}, errors.TooFewExamplesError, "3 non-empty examples"),
        ({"dataset": {"path": str(few)}}, errors.TooFewExamplesError, "one optimizer step takes 4"),
        ({"dataset": {"path": str(numbers)}}, errors.DatasetFieldError, "does not hold text; it holds int64"),
        (
            {"dataset": {"path": str(one), "eval_fraction": 0.5}},
            errors.TooFewExamplesError,
            "evalFraction 0.5",
        ),
        (
            {"dataset": {"path": str(five), "eval_fraction": 0.5}},
            errors.TooFewExamplesError,
            "after dataset.evalFraction 0.5 held out 3",
        ),
        ({"model": {"name_or_path": "no-such-org/no-model"}}, errors.ModelNotFoundError, "HF_HUB_OFFLINE"),
        (
            {"eval_dataset": {"path": str(tmp_path / "absent-eval.jsonl")}},
            errors.DatasetNotFoundError,
            "evalDataset.path",
        ),
        (
            {"eval_dataset": {"path": str(numbers)}},
            errors.DatasetFieldError,
            "evalDataset.textField: column 'text' does not hold text",
        ),
        ({"eval_dataset": {"path": str(blank)}}, errors.EmptyDatasetError, "column 'text' of the eval data"),
        (
            {"dataset": {"path": None, "name": "no-such-org/no-dataset"}},
            errors.DatasetNotFoundError,
            "no-such-org/no-dataset",
        ),
        ({"dataset": {"text_field": "quote"}}, errors.DatasetFieldError, "text, author, topic"),
        (
            {"dataset": {"path": str(not_chat), "text_field": None, "messages_field": "messages"}},
            errors.DatasetFieldError,
            "does not hold chat messages",
        ),
        (
            {"dataset": {"path": str(no_roles), "text_field": None, "messages_field": "messages"}},
            errors.DatasetFieldError,
            "it holds lists of records with keys speaker, text",
        ),
        (
            {"model": {"name_or_path": str(no_template)}, "dataset": chat},
            errors.ChatTemplateError,
            "no chat template",
        ),
        (
            {"model": {"name_or_path": str(wordy)}, "dataset": chat, "training": {"max_length": 8}},
            errors.MaxLengthError,
            "training.maxLength 8 leaves no room for content",
        ),
    ]
    if not torch.cuda.is_available():
        cases.append(
            ({"lora": {"quantization": "4bit"}}, errors.QuantizationUnavailableError, "needs a CUDA GPU")
        )
    for index, (sections, error_class, expected) in enumerate(cases):
        out = tmp_path / f"out-{index}"
        with pytest.raises(error_class) as caught:
            run(config(tiny, out, **sections))
        assert expected in str(caught.value), f"{sections}: {caught.value}"
        assert not (out / "adapter_config.json").exists()


def test_empty_examples_are_dropped_and_the_rest_trains(tiny: TinyModel, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in tiny.text_dataset.read_text().splitlines()][:16]
    mixed = jsonl(tmp_path / "mixed.jsonl", [*rows, *([{"text": "", "author": "", "topic": ""}] * 10)])
    result = run(config(tiny, tmp_path / "out", dataset={"path": str(mixed)}, training={"max_steps": 1}))
    assert result is not None
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def run_entry_point(args: list[str], message: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / part) for part in ("operator", "worker", "devcluster")),
        "HF_HUB_OFFLINE": "1",
        "TERMINATION_MESSAGE_PATH": str(message),
    }
    return subprocess.run(
        [sys.executable, "-m", "loraplane_worker", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_entry_point_exits_65_when_the_text_field_is_missing(tiny: TinyModel, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(json.dumps(document(tiny, tmp_path / "out")))  # JSON is YAML
    message = tmp_path / "termination-log"
    finished = run_entry_point(["--config", str(config_file), "--set", "dataset.text_field=quote"], message)
    assert finished.returncode == errors.EXIT_INPUT_ERROR, finished.stderr[-3000:]
    failure = json.loads(message.read_text())
    assert failure["error"] == "DatasetFieldError"
    assert failure["inputError"] is True
    assert "'quote'" in failure["message"]
    assert "text, author, topic" in failure["message"]


def test_entry_point_trains_a_chat_adapter_on_all_linear_layers(tiny: TinyModel, tmp_path: Path) -> None:
    """Chat data, `all-linear`, flags instead of a file: an adapter vLLM takes, on the base vocabulary."""
    out = tmp_path / "out"
    message = tmp_path / "termination-log"
    sets = [
        f"dataset.path={tiny.chat_dataset}",
        "dataset.text_field=null",
        "dataset.messages_field=messages",
        "lora.target_modules=[all-linear]",
        "lora.r=4",
        "training.max_steps=2",
        "training.max_length=64",
        "training.per_device_train_batch_size=4",
        "training.gradient_checkpointing=false",
        "training.save_steps=100",
        "training.logging_steps=1",
        f"output.base_model_name={SERVED_NAME}",
        "metrics.port=0",
    ]
    args = ["--model", str(tiny.model_dir), "--output-dir", str(out)]
    for item in sets:
        args += ["--set", item]
    finished = run_entry_point(args, message)
    assert finished.returncode == 0, finished.stderr[-3000:]

    result = json.loads(message.read_text())
    weights = out / "adapter_model.safetensors"
    assert result["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert result["steps"] == 2
    assert result["targetModules"] == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]
    events = [json.loads(line) for line in finished.stdout.splitlines() if line.startswith("{")]
    assert [event["step"] for event in events if event["event"] == "progress"] == [1, 2]
    assert events[-1]["event"] == "result"
    assert "trainable params:" in finished.stdout

    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] is None
    assert adapter_config["base_model_name_or_path"] == SERVED_NAME
    with safe_open(str(weights), framework="pt") as tensors:
        names = list(tensors.keys())
    assert names
    assert all("lora_A" in name or "lora_B" in name for name in names)
    assert not any("embed_tokens" in name or "lm_head" in name for name in names)
    # The adapter loads on the untouched base model: no resized vocabulary.
    base = AutoModelForCausalLM.from_pretrained(tiny.model_dir)
    vocab = base.get_input_embeddings().num_embeddings
    adapted = PeftModel.from_pretrained(base, str(out))
    assert adapted.get_input_embeddings().num_embeddings == vocab == len(AutoTokenizer.from_pretrained(out))


def test_entry_point_runs_data_parallel_processes(
    tiny: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LORAPLANE_NPROC=2 on the CPU stands in for two GPUs: torchrun, DDP, one result from rank 0."""
    out = tmp_path / "out"
    message = tmp_path / "termination-log"
    args = [
        "--model",
        str(tiny.model_dir),
        "--dataset-path",
        str(tiny.text_dataset),
        "--output-dir",
        str(out),
    ]
    for item in [
        "training.max_steps=2",
        "training.max_length=64",
        "training.per_device_train_batch_size=4",
        "training.gradient_checkpointing=false",
        "training.logging_steps=1",
        "metrics.port=0",
    ]:
        args += ["--set", item]
    monkeypatch.setenv("LORAPLANE_NPROC", "2")
    finished = run_entry_point(args, message)
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(message.read_text())
    assert result["steps"] == 2
    assert result["sha256"] == hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest()
    # `auto` on CPUs: data parallel, said in the result and once in the log.
    assert (result["distributed"], result["distributedReason"]) == ("ddp", "CPU pods run data parallel")
    assert finished.stdout.count('"event":"sharding"') == 1
    progress = [json.loads(line) for line in finished.stdout.splitlines() if '"event":"progress"' in line]
    # Only rank 0 reports, and one step covers both processes' batches: 2 x 4 of the 200 rows.
    assert [event["step"] for event in progress] == [1, 2]
    rows = sum(1 for _ in tiny.text_dataset.open())
    steps_per_epoch = -(-rows // (2 * 4))
    assert progress[0]["epoch"] == pytest.approx(1 / steps_per_epoch, abs=1e-4)


def test_fsdp_on_cpu_processes_is_refused_not_run_as_ddp(
    tiny: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """accelerate (1.15) enables FSDP only on accelerators; on 2 CPU processes it would quietly run
    DDP. The worker says so as an input error instead of training an unsharded model called FSDP."""
    out = tmp_path / "out"
    message = tmp_path / "termination-log"
    args = ["--model", str(tiny.model_dir), "--dataset-path", str(tiny.text_dataset)]
    args += ["--output-dir", str(out)]
    for item in ["training.max_steps=1", "training.distributed=fsdp", "metrics.port=0"]:
        args += ["--set", item]
    monkeypatch.setenv("LORAPLANE_NPROC", "2")
    finished = run_entry_point(args, message)
    assert finished.returncode == errors.EXIT_INPUT_ERROR, finished.stderr[-3000:]
    failure = json.loads(message.read_text())
    assert failure["error"] == "ConfigError"
    assert failure["inputError"] is True
    said = "training.distributed: fsdp: accelerate runs these 2 processes as MULTI_CPU, not FSDP"
    assert failure["message"].startswith(said)
    assert not (out / "adapter_model.safetensors").exists()


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def models_listed(base_url: str) -> dict[str, Any] | None:
    try:
        return {card["id"]: card for card in http_json(f"{base_url}/v1/models")["data"]}
    except OSError:
        return None


@pytest.mark.e2e
def test_vllm_serves_the_adapters_the_worker_writes(tiny: TinyModel, tmp_path: Path) -> None:
    """A text adapter on named modules and a chat adapter on all-linear, loaded by a real vLLM (CPU)."""
    text_dir, chat_dir = tmp_path / "text", tmp_path / "chat"
    run(config(tiny, text_dir, training={"save_steps": 100}))
    run(
        config(
            tiny,
            chat_dir,
            dataset={"path": str(tiny.chat_dataset), "text_field": None, "messages_field": "messages"},
            lora={"r": 16, "target_modules": ["all-linear"]},
            training={"save_steps": 100},
        )
    )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    adapters = [
        json.dumps({"name": name, "path": str(path), "base_model_name": SERVED_NAME})
        for name, path in (("text", text_dir), ("chat", chat_dir))
    ]
    # fmt: off
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(tiny.model_dir), "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "256",
        "--enable-lora", "--max-lora-rank", "16", "--max-loras", "2", "--lora-modules", *adapters,
    ]
    # fmt: on
    log = (tmp_path / "vllm.log").open("w")
    server = subprocess.Popen(
        command,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its engine process is a child: stop the whole group
    )
    try:

        def ready() -> dict[str, Any] | None:
            if server.poll() is not None:
                output = (tmp_path / "vllm.log").read_text()[-3000:]
                raise AssertionError(f"vLLM exited with {server.returncode}: {output}")
            return models_listed(base_url)

        cards = wait_until("vLLM to list its models", ready, timeout_s=300, interval_s=1.0)
        assert cards["text"]["parent"] == SERVED_NAME
        assert cards["chat"]["parent"] == SERVED_NAME

        completion = http_json(
            f"{base_url}/v1/completions",
            {"model": "text", "prompt": PROMPT, "max_tokens": 8, "temperature": 0},
        )
        assert completion["model"] == "text"
        assert completion["choices"][0]["text"]
        chat = http_json(
            f"{base_url}/v1/chat/completions",
            {
                "model": "chat",
                "messages": [{"role": "user", "content": "Give me a quote about hope."}],
                "max_tokens": 8,
                "temperature": 0,
            },
        )
        assert chat["model"] == "chat"
        assert chat["choices"][0]["message"]["content"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
