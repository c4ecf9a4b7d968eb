"""Exit codes and the error classes that choose them.

A Job's `podFailurePolicy` reads the exit code: input errors (65) fail the run at once, because a
retry would fail the same way; anything else (1) is retried and resumes from the newest checkpoint.
"""

from __future__ import annotations

import os

from loraplane.api.worker import INPUT_ERROR_EXIT_CODE

EXIT_SUCCESS = 0
# Any failure that a retry may cure: out of memory, a lost node, a network error, a bug.
EXIT_FAILURE = 1
# EX_DATAERR from sysexits.h: the config, the model or the dataset is wrong; retrying cannot help.
EXIT_INPUT_ERROR = INPUT_ERROR_EXIT_CODE


class InputError(Exception):
    """The run cannot succeed as configured; the message names the field or file and the fix."""


class ConfigError(InputError):
    """A config key is unknown, missing, or has a value the worker or TRL/PEFT refuses."""


class ModelNotFoundError(InputError):
    """The base model is not a readable local directory and not a Hugging Face model id."""


class ModelFilesError(ModelNotFoundError):
    """A local model folder lacks its weights or its tokenizer."""


class DatasetNotFoundError(InputError):
    """The dataset file or folder does not exist, or the Hugging Face dataset (or split) is unknown."""


class DatasetFieldError(InputError):
    """The configured text or messages column is not in the dataset."""


class EmptyDatasetError(InputError):
    """The dataset (or the split used) has no rows, or only empty texts or conversations."""


class TooFewExamplesError(InputError):
    """Fewer usable examples than one optimizer step takes, or an evaluation split left empty."""


class MaxLengthError(InputError):
    """training.maxLength leaves no room for content after the tokens the tokenizer adds itself."""


class TargetModuleError(InputError):
    """A LoRA target module matches no layer of the model."""


class QuantizationUnavailableError(InputError):
    """4-bit/8-bit loading was asked for where there is no CUDA GPU or no bitsandbytes."""


class ChatTemplateError(InputError):
    """A chat dataset was given for a tokenizer that has no chat template."""


class NotServableError(InputError):
    """The adapter would not load in vLLM (added tokens, a resized vocabulary, modules_to_save)."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE is set: what is not in the local cache will never be found, so it is an input error."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def exit_code_for(error: BaseException) -> int:
    """The process exit code that reports `error` to the Job."""
    return EXIT_INPUT_ERROR if isinstance(error, InputError) else EXIT_FAILURE
