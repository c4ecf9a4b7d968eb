"""One training run: TRL's SFT recipe (`trl/scripts/sft.py`) plus what a training pod needs around it.

The recipe is TRL's: load the model and data, `SFTConfig(**training)`, `SFTTrainer(peft_config=...)`,
`train()`, `save_model()`. Around it the worker adds checks that fail early with a message naming
the fix, progress metrics, automatic resume from the newest complete checkpoint, an adapter that
vLLM accepts (written under a temporary name and renamed into place), and the optional merge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from peft import LoraConfig, PeftModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    TrainerCallback,
)
from trl import ModelConfig, get_quantization_config
from trl.trainer.sft_config import SFTConfig
from trl.trainer.sft_trainer import SFTTrainer

from loraplane.api.worker import EvaluationReport, TrainingReport, WorkerInput
from loraplane_worker import errors, sharding, sync
from loraplane_worker.config import (
    check_known_keys,
    check_target_modules,
    checkpoints_dir,
    resolve_precision,
)
from loraplane_worker.data import examples_digest, load_training_data
from loraplane_worker.merge import write_merged_model
from loraplane_worker.progress import ProgressMetrics, ProgressReporter, emit, trainer_callback
from loraplane_worker.result import module_leaf_names
from loraplane_worker.resume import newest_complete_checkpoint

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# TRL's ModelConfig names for the same dtypes (what get_quantization_config computes in).
TRL_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# A local model folder needs one of each: weights, and a tokenizer (AutoTokenizer reads the folder).
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The final adapter is saved here first, then its files are renamed into the output folder.
STAGING_ADAPTER = ".adapter.partial"
HUB_NOT_FOUND = (
    RepositoryNotFoundError,
    RevisionNotFoundError,
    GatedRepoError,
    HFValidationError,
    EntryNotFoundError,
)


def process_state() -> PartialState:
    """accelerate's view of the processes, the one the Trainer then shares (a singleton). The first
    call decides it: without a GPU it must say CPU, or torchrun's processes would each be a world of
    one (what SFTConfig(use_cpu=True) would have set up)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """accelerate's answer, the one the Trainer uses (it also knows launchers other than torchrun)."""
    return bool(process_state().is_main_process)


def metrics_host() -> str:
    # The operator scrapes the pod IP; outside a pod nothing else should reach the port.
    return os.environ.get("POD_IP") or "127.0.0.1"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_input_error(error: BaseException) -> bool:
    """True when loading failed because the id, revision or file does not exist; False for network trouble."""
    offline = errors.hub_offline()
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, LocalEntryNotFoundError):
            # Offline, a missing cache entry stays missing; online it may be a network blip worth a retry.
            return offline
        if isinstance(cause, HUB_NOT_FOUND):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _first_line(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text + (
        " (HF_HUB_OFFLINE is set: only the local cache was searched)" if errors.hub_offline() else ""
    )


def check_model_location(name_or_path: str) -> None:
    """A local model folder must exist and be readable; anything else is taken as a Hugging Face id."""
    path = Path(name_or_path).expanduser()
    if not (name_or_path.startswith(("/", "./", "../", "~")) or path.exists()):
        return
    where = f"model.nameOrPath {name_or_path!r}"
    if not path.is_dir():
        raise errors.ModelNotFoundError(f"{where}: no such directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise errors.ModelNotFoundError(f"{where}: directory is not readable")
    names = sorted(p.name for p in path.iterdir())
    found = f"it holds {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}" if names else "it is empty"
    if not (path / "config.json").is_file():
        raise errors.ModelFilesError(f"{where}: no config.json in the directory; {found}")
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_FILES):
        raise errors.ModelFilesError(
            f"{where}: no weights in the directory (model.safetensors or pytorch_model.bin); {found}"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise errors.ModelFilesError(
            f"{where}: no tokenizer in the directory ({' or '.join(TOKENIZER_FILES[:3])}); {found}. "
            "Save the tokenizer beside the model (tokenizer.save_pretrained)"
        )


def load_tokenizer(config: WorkerInput) -> PreTrainedTokenizerBase:
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            config.model.name_or_path,
            revision=config.model.revision,
            trust_remote_code=bool(config.training.sft_args.get("trust_remote_code", False)),
        )
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError) or hub_input_error(error):
            raise errors.ModelNotFoundError(
                f"model.nameOrPath {config.model.name_or_path!r}: cannot load its tokenizer: "
                f"{_first_line(error)}"
            ) from error
        raise
    # No pad token is fine: SFTTrainer pads with the eos token, so nothing is added to the vocabulary.
    return tokenizer


def quantization_config(config: WorkerInput, precision: str) -> BitsAndBytesConfig | None:
    quantization = config.lora.quantization
    if quantization == "none":
        return None
    if not torch.cuda.is_available():
        raise errors.QuantizationUnavailableError(
            f"lora.quantization {quantization!r} (QLoRA, bitsandbytes) needs a CUDA GPU and none is "
            "visible; set lora.quantization: none or give the pod a GPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise errors.QuantizationUnavailableError(
            f"lora.quantization {quantization!r} needs the bitsandbytes package, which this image lacks"
        )
    # TRL's own recipe (what `trl sft --load_in_4bit` does); QLoRA's NF4 with double quantization,
    # computing in the training dtype.
    model_args = ModelConfig(
        load_in_4bit=quantization == "4bit",
        load_in_8bit=quantization == "8bit",
        bnb_4bit_quant_type="nf4",
        use_bnb_nested_quant=True,
        dtype=TRL_DTYPES[precision],
    )
    found: BitsAndBytesConfig | None = get_quantization_config(model_args)
    return found


def load_model(config: WorkerInput, precision: str) -> PreTrainedModel:
    kwargs: dict[str, Any] = dict(config.training.sft_args.get("model_init_kwargs") or {})
    kwargs.setdefault("dtype", DTYPES[precision])
    kwargs.setdefault("trust_remote_code", bool(config.training.sft_args.get("trust_remote_code", False)))
    quantization = quantization_config(config, precision)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        # Each process holds a whole quantized copy on its own GPU (data parallel). TRL 1.16 no longer
        # has get_kbit_device_map; this is what it returned.
        kwargs["device_map"] = {"": process_state().local_process_index}
    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            config.model.name_or_path, revision=config.model.revision, **kwargs
        )
    except OSError as error:
        if hub_input_error(error):
            raise errors.ModelNotFoundError(
                f"model.nameOrPath {config.model.name_or_path!r}: {_first_line(error)}"
            ) from error
        raise
    return model


def model_parameters(config: WorkerInput) -> int | None:
    """The model's parameters without loading it: its safetensors headers, else a model built from its
    config on the meta device (no memory, no weights fetched). None when neither can be read."""
    local = sharding.local_parameters(Path(config.model.name_or_path).expanduser())
    if local is not None:
        return local
    trust = bool(config.training.sft_args.get("trust_remote_code", False))
    try:
        model_config = AutoConfig.from_pretrained(
            config.model.name_or_path, revision=config.model.revision, trust_remote_code=trust
        )
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust)
    except (OSError, ValueError) as error:  # loading the model itself then names the problem
        emit({"event": "sharding_estimate_failed", "error": _first_line(error)})
        return None
    return sum(int(p.numel()) for p in skeleton.parameters())


def decide_sharding(config: WorkerInput, precision: str, cuda: bool) -> sharding.Sharding:
    """`training.distributed`, with `auto` decided on this GPU: the model's weights in the training
    dtype against the GPU's memory (sharding.choose). Every process decides alike: the same model,
    and the GPUs of one run are of one kind."""
    distributed, state = config.training.distributed, process_state()
    auto_on_gpu = distributed == "auto" and cuda
    memory = torch.cuda.get_device_properties(state.local_process_index).total_memory if auto_on_gpu else None
    parameters = model_parameters(config) if auto_on_gpu else None
    return sharding.choose(
        distributed,
        processes=state.num_processes,
        gpu_memory_bytes=memory,
        weight_bytes=parameters * DTYPES[precision].itemsize if parameters is not None else None,
        quantized=config.lora.quantization != "none",
    )


def sharding_kwargs(distributed: str) -> dict[str, Any]:
    """`training.distributed` (`auto` once decided) as transformers' own FSDP settings (accelerate does
    the wrapping; for a PEFT model the Trainer wraps the LoRA layers apart, so only they need
    gradients). `ddp`: nothing, data parallel is what several processes do by default."""
    if distributed != "fsdp":
        return {}
    return {
        # transformers 5's form (`fsdp=True`, all else in fsdp_config); full sharding is
        # reshard_after_forward in FSDP2.
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "reshard_after_forward": True,
            # The adapter is saved whole by rank 0: the same PEFT files a one-process run writes.
            "state_dict_type": "FULL_STATE_DICT",
        },
    }


def build_sft_config(
    config: WorkerInput, precision: str, has_eval: bool, cuda: bool, distributed: str | None = None
) -> SFTConfig:
    """`SFTConfig(**training)` with the keys the worker owns set, and unknown keys refused by name.
    `distributed`: the decided `ddp` or `fsdp` (default: training.distributed as given)."""
    training = config.training.sft_config_kwargs()
    check_known_keys("training", training, (f.name for f in dataclasses.fields(SFTConfig) if f.init))
    kwargs: dict[str, Any] = {
        "save_total_limit": 2,
        "eval_strategy": "steps" if has_eval else "no",
        # The worker logs progress as JSON lines; tqdm bars and printed dicts would only garble pod logs.
        "disable_tqdm": True,
        "dataloader_pin_memory": cuda,
        # Without a GPU, say so: accelerate then runs several processes (LORAPLANE_NPROC) CPU data parallel.
        "use_cpu": not cuda,
        # LoRA uses every trainable parameter; DDP's search for unused ones is a wasted graph walk per step.
        "ddp_find_unused_parameters": False,
    }
    kwargs.update(training)
    kwargs.update(
        output_dir=str(checkpoints_dir(config)),
        report_to="none",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
    )
    kwargs.update(sharding_kwargs(distributed or config.training.distributed))
    if not config.dataset.is_chat:
        kwargs["dataset_text_field"] = config.dataset.column
    # The worker loads the model itself, with these (see load_model); SFTTrainer would only warn about them.
    kwargs.pop("model_init_kwargs", None)
    try:
        return SFTConfig(**kwargs)
    except (TypeError, ValueError) as error:
        raise errors.ConfigError(f"training: {str(error).splitlines()[0]}") from error


def build_lora_config(config: WorkerInput) -> LoraConfig:
    kwargs = config.lora.peft_kwargs()
    check_known_keys("lora", kwargs, (f.name for f in dataclasses.fields(LoraConfig) if f.init))
    try:
        return LoraConfig(**kwargs)
    except (TypeError, ValueError) as error:
        raise errors.ConfigError(f"lora: {str(error).splitlines()[0]}") from error


@dataclass
class Prepared:
    """Everything checked and loaded before training starts."""

    sft_config: SFTConfig
    lora_config: LoraConfig
    train_data: Dataset
    eval_data: Dataset | None
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel
    dtype: torch.dtype
    distributed: sharding.Sharding  # ddp or fsdp, as decided


def special_token_overhead(tokenizer: PreTrainedTokenizerBase, chat: bool) -> int:
    """Tokens every example carries before any content: what the tokenizer adds to an empty text (and
    the EOS SFTTrainer appends), or the chat template around an empty exchange."""
    if chat:
        empty = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
        text = tokenizer.apply_chat_template(empty, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = tokenizer("")["input_ids"]
    eos = tokenizer.eos_token_id
    return len(ids) + (1 if eos is not None and (not ids or ids[-1] != eos) else 0)


def check_max_length(config: WorkerInput, tokenizer: PreTrainedTokenizerBase) -> None:
    overhead = special_token_overhead(tokenizer, config.dataset.is_chat)
    max_length = config.training.max_length
    if max_length <= overhead:
        what = (
            "its chat template around an empty exchange" if config.dataset.is_chat else "its special tokens"
        )
        raise errors.MaxLengthError(
            f"training.maxLength {max_length} leaves no room for content: the tokenizer of "
            f"{config.model.name_or_path!r} spends {overhead} tokens on {what} in every example; "
            f"set training.maxLength above {overhead}"
        )


def examples_per_step(config: WorkerInput) -> tuple[int, str]:
    """Examples one optimizer step takes across all processes, and how that number comes about."""
    training = config.training
    processes = process_state().num_processes
    count = training.per_device_train_batch_size * training.gradient_accumulation_steps * processes
    how = (
        f"training.perDeviceTrainBatchSize {training.per_device_train_batch_size} x "
        f"training.gradientAccumulationSteps {training.gradient_accumulation_steps}"
        + (f" x {processes} processes" if processes > 1 else "")
    )
    return count, how


def prepare(config: WorkerInput) -> Prepared:
    """Load and check, cheapest first, so a bad input fails before the model is loaded."""
    check_model_location(config.model.name_or_path)
    cuda = torch.cuda.is_available()
    precision = resolve_precision(config.training.precision, cuda, cuda and torch.cuda.is_bf16_supported())
    chosen = decide_sharding(config, precision, cuda)
    sft_config = build_sft_config(config, precision, config.has_eval, cuda, chosen.mode)
    lora_config = build_lora_config(config)
    per_step, how = examples_per_step(config)
    train_data, eval_data = load_training_data(
        config.dataset, sft_config.seed, per_step, how, config.eval_dataset
    )
    tokenizer = load_tokenizer(config)
    if config.dataset.is_chat and not tokenizer.chat_template:
        raise errors.ChatTemplateError(
            f"dataset.messagesField is set, but the tokenizer of {config.model.name_or_path!r} has no chat "
            "template; adding one would add tokens, which vLLM cannot serve. Use a model that has a chat "
            "template, or a text dataset (dataset.textField)"
        )
    check_max_length(config, tokenizer)
    quantization_config(config, precision)  # refused before the model loads, not after
    model = load_model(config, precision)
    modules = list(model.named_modules())
    check_target_modules(
        config.lora.peft_kwargs()["target_modules"],
        (name for name, _ in modules),
        (name for name, module in modules if isinstance(module, torch.nn.Linear)),
    )
    return Prepared(
        sft_config, lora_config, train_data, eval_data, tokenizer, model, DTYPES[precision], chosen
    )


def vocabulary_size(model: PreTrainedModel | PeftModel) -> int:
    embeddings = model.get_input_embeddings()
    if not isinstance(embeddings, torch.nn.Embedding):
        raise TypeError(f"unexpected input embeddings {type(embeddings).__name__}")
    return int(embeddings.num_embeddings)


def check_sharding(trainer: SFTTrainer, distributed: str) -> None:
    """`fsdp` must shard, not quietly replicate: accelerate (1.15) turns its FSDP plugin on only for
    accelerator devices, and on CPUs runs the processes as plain data parallel (MULTI_CPU), although
    torch's FSDP2 itself works with gloo. One process has nothing to shard either way."""
    if distributed != "fsdp" or trainer.is_fsdp_enabled or trainer.accelerator.num_processes <= 1:
        return
    kind = trainer.accelerator.distributed_type.value
    raise errors.ConfigError(
        f"training.distributed: fsdp: accelerate runs these {trainer.accelerator.num_processes} processes as "
        f"{kind}, not FSDP (it shards only on GPUs); set training.distributed to ddp or auto on CPUs"
    )


def adapter_model(trainer: SFTTrainer) -> PeftModel:
    if not isinstance(trainer.model, PeftModel):
        raise TypeError(f"SFTTrainer built a {type(trainer.model).__name__}, not a PeftModel")
    return trainer.model


def check_servable(model: PeftModel, vocab_size: int) -> None:
    """vLLM refuses adapters with new tokens or modules_to_save; make sure TRL's setup added none."""
    peft_config = model.peft_config["default"]
    if getattr(peft_config, "modules_to_save", None) or getattr(peft_config, "trainable_token_indices", None):
        raise errors.NotServableError("the adapter would save modules or token embeddings; vLLM refuses it")
    if vocabulary_size(model) != vocab_size:
        raise errors.NotServableError("the vocabulary was resized in setup; vLLM cannot serve added tokens")


def publish_adapter(staging: Path, output_dir: Path, served_base_model: str) -> dict[str, Any]:
    """Record the served base model in the adapter config and rename the files into `output_dir`.

    The config goes last: a reader that finds `adapter_config.json` finds complete weights beside it.
    """
    config_path = staging / ADAPTER_CONFIG
    adapter_config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    if adapter_config.get("modules_to_save") or adapter_config.get("use_dora"):
        raise errors.NotServableError("adapter_config.json has modules_to_save or DoRA; vLLM refuses it")
    adapter_config["base_model_name_or_path"] = served_base_model
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    names = sorted(p.name for p in staging.iterdir() if p.is_file() and p.name != ADAPTER_CONFIG)
    for name in [*names, ADAPTER_CONFIG]:
        os.replace(staging / name, output_dir / name)
    shutil.rmtree(staging, ignore_errors=True)
    return adapter_config


def evaluate(trainer: SFTTrainer) -> tuple[float | None, float | None]:
    """transformers' `Trainer.evaluate()` on the eval data: the loss and TRL's mean token accuracy."""
    metrics = trainer.evaluate()
    loss, accuracy = metrics.get("eval_loss"), metrics.get("eval_mean_token_accuracy")
    return (
        float(loss) if loss is not None else None,
        float(accuracy) if accuracy is not None else None,
    )


def evaluate_base(trainer: SFTTrainer, model: PeftModel) -> tuple[float | None, float | None]:
    """The base model on the eval data: the same `evaluate()` with the adapter disabled. (Before
    training LoRA's B matrices are zero anyway, but disabling also holds after a resume or for other
    LoRA initialisations.)"""
    with model.disable_adapter():
        return evaluate(trainer)


def base_evaluation(
    trainer: SFTTrainer, model: PeftModel, eval_data: Dataset | None
) -> EvaluationReport | None:
    """The base model's figures on the held-out data, before the first step (None without eval data)."""
    if eval_data is None:
        return None
    base_loss, base_accuracy = evaluate_base(trainer, model)
    return EvaluationReport(
        base_loss=base_loss,
        base_mean_token_accuracy=base_accuracy,
        examples=len(eval_data),
        digest=examples_digest(eval_data),
    )


def final_evaluation(trainer: SFTTrainer, evaluation: EvaluationReport | None) -> float | None:
    """The trained adapter's figures on the same data, recorded beside the base model's."""
    if evaluation is None:
        return None
    evaluation.loss, evaluation.mean_token_accuracy = evaluate(trainer)
    return evaluation.loss


def run(config: WorkerInput, callbacks: Sequence[TrainerCallback] = ()) -> TrainingReport | None:
    """Train, save the adapter (and the merged model when asked), and describe what was written.

    Returns None in the non-main processes of a data-parallel run: they write nothing.
    """
    main = is_main_process()
    metrics = ProgressMetrics()
    if main:
        # Serving starts first, so the pod answers scrapes while the model downloads.
        port = metrics.serve(metrics_host(), config.metrics.port)
        emit({"event": "metrics", "host": metrics_host(), "port": port})
    try:
        if main:
            # Object-store inputs onto local disk, and a retry's checkpoint back from the store;
            # the other processes wait, then read the same folders.
            sync.fetch_inputs(config)
            sync.restore_checkpoint(config)
        process_state().wait_for_everyone()
        prepared = prepare(config)
        checkpoint = newest_complete_checkpoint(checkpoints_dir(config))
        resumed_from = checkpoint.step if checkpoint else None
        reporter = ProgressReporter(metrics, resumed_from_step=resumed_from)
        if checkpoint is not None and main:
            emit({"event": "resume", "fromStep": checkpoint.step, "checkpoint": str(checkpoint.path)})
        if main:
            emit(
                {
                    "event": "sharding",
                    "mode": prepared.distributed.mode,
                    "reason": prepared.distributed.reason,
                }
            )

        vocab_size = vocabulary_size(prepared.model)
        trainer = SFTTrainer(
            model=prepared.model,
            args=prepared.sft_config,
            train_dataset=prepared.train_data,
            eval_dataset=prepared.eval_data,
            processing_class=prepared.tokenizer,
            peft_config=prepared.lora_config,
            callbacks=[trainer_callback(reporter), *sync.callbacks(config), *callbacks],
        )
        trainer.remove_callback(PrinterCallback)  # its python-dict lines duplicate the JSON progress lines
        check_sharding(trainer, prepared.distributed.mode)
        model = adapter_model(trainer)
        check_servable(model, vocab_size)
        trainable, total = model.get_nb_trainable_parameters()
        reporter.set_trainable_parameters(trainable)
        if main:
            model.print_trainable_parameters()  # PEFT's own line, for the pod log
            emit({"event": "trainable_parameters", "trainable": trainable, "all": total})

        evaluation = base_evaluation(trainer, model, prepared.eval_data)
        outcome = trainer.train(resume_from_checkpoint=str(checkpoint.path) if checkpoint else None)
        eval_loss = final_evaluation(trainer, evaluation)

        output_dir = Path(config.output.dir)
        staging = output_dir / STAGING_ADAPTER
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        trainer.save_model(str(staging))
        trainer.accelerator.wait_for_everyone()
        if not main:
            return None
        written = publish_adapter(staging, output_dir, config.served_base_model)
        weights = output_dir / ADAPTER_WEIGHTS

        merged_dir = None
        if config.output.merge:
            merged_dir = write_merged_model(config, output_dir, prepared.dtype, prepared.tokenizer)
        uploaded = sync.upload_results(config, output_dir, merged_dir)

        return TrainingReport(
            adapter_dir=str(output_dir),
            uri=uploaded.uri if uploaded else None,
            merged_uri=uploaded.merged_uri if uploaded else None,
            sha256=(uploaded.sha256 if uploaded else None) or sha256_of(weights),
            size_bytes=weights.stat().st_size,
            r=written["r"],
            lora_alpha=written["lora_alpha"],
            # What vLLM reads: `all-linear` is written out as the module names PEFT matched.
            target_modules=module_leaf_names(written.get("target_modules") or []),
            base_model=config.served_base_model,
            train_loss=outcome.training_loss,
            eval_loss=eval_loss,
            steps=outcome.global_step,
            trainable_parameters=trainable,
            all_parameters=total,
            resumed_from_step=resumed_from,
            merged_dir=str(merged_dir) if merged_dir else None,
            evaluation=evaluation,
            world_size=process_state().num_processes,
            distributed=prepared.distributed.mode,
            distributed_reason=prepared.distributed.reason,
        )
    finally:
        metrics.close()
