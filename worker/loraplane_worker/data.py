"""Loading the training (and eval) data with the `datasets` library, the way TRL's SFT script does.

What this adds is the checks a pod needs before it spends GPU time: the source exists, the split
exists, the configured column is there (naming the columns that are), the data is not empty. The
dataset handed to SFTTrainer holds only the one column it trains on; a chat column is renamed to
`messages`, the name TRL recognises as conversational.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset
from datasets.exceptions import DataFilesNotFoundError, DatasetGenerationError, DatasetNotFoundError

from loraplane_worker import errors
from loraplane_worker.config import FILE_FORMATS, DatasetSection, dataset_file_format

CHAT_COLUMN = "messages"


def _local_files(path: Path, format_override: str | None) -> tuple[str, list[str]]:
    if not path.exists():
        raise errors.DatasetNotFoundError(f"dataset.path {str(path)!r}: no such file or directory")
    if not os.access(path, os.R_OK):
        raise errors.DatasetNotFoundError(f"dataset.path {str(path)!r}: not readable by this process")
    if path.is_file():
        return dataset_file_format(str(path), format_override), [str(path)]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if format_override:
        known = [str(p) for p in files if p.suffix.lower() in FILE_FORMATS]
        return format_override, known or [str(p) for p in files]
    formats = {FILE_FORMATS[p.suffix.lower()] for p in files if p.suffix.lower() in FILE_FORMATS}
    if not formats:
        raise errors.DatasetNotFoundError(
            f"dataset.path {str(path)!r}: no data files ({', '.join(sorted(FILE_FORMATS))}) in the folder"
        )
    if len(formats) > 1:
        raise errors.ConfigError(
            f"dataset.path {str(path)!r} mixes formats {sorted(formats)}; "
            "point at one file or set dataset.format"
        )
    (file_format,) = formats
    return file_format, [str(p) for p in files if FILE_FORMATS.get(p.suffix.lower()) == file_format]


def _load(section: DatasetSection, split: str) -> Dataset:
    try:
        if section.path is not None:
            file_format, files = _local_files(Path(section.path), section.format)
            if all(Path(file).stat().st_size == 0 for file in files):
                # `datasets` fails on empty files with a bare StopIteration; say what is wrong instead.
                raise errors.EmptyDatasetError(f"dataset.path {section.path!r}: the data files are empty")
            loaded = datasets.load_dataset(file_format, data_files=files, split="train")
        else:
            loaded = datasets.load_dataset(section.name, section.config, split=split)
    except (DatasetNotFoundError, DataFilesNotFoundError) as error:
        source = section.path or section.name
        raise errors.DatasetNotFoundError(f"dataset {source!r} not found: {error}") from error
    except DatasetGenerationError as error:
        cause = error.__cause__ or error
        source = section.path or section.name
        raise errors.InputError(f"dataset {source!r} cannot be read: {cause}") from error
    except ConnectionError as error:
        if errors.hub_offline():  # not in the local cache, and nothing else will be searched
            raise errors.DatasetNotFoundError(
                f"dataset {section.name!r}: {error} "
                "(HF_HUB_OFFLINE is set: only the local cache was searched)"
            ) from error
        raise
    except ValueError as error:
        if "Unknown split" in str(error):
            raise errors.DatasetNotFoundError(f"dataset {section.name!r}: {error}") from error
        raise
    if not isinstance(loaded, Dataset):
        source = section.path or section.name
        raise errors.ConfigError(f"dataset {source!r}: expected one split, got {type(loaded).__name__}")
    return loaded


def _looks_like_chat(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(turn, dict) and "role" in turn and "content" in turn for turn in value)
    )


def prepare(dataset: Dataset, section: DatasetSection, what: str) -> Dataset:
    """Check the configured column, keep only it, and name a chat column `messages`."""
    column = section.column
    key = "dataset.messages_field" if section.is_chat else "dataset.text_field"
    if column not in dataset.column_names:
        raise errors.DatasetFieldError(
            f"{key}: the {what} data has no column {column!r}; "
            f"its columns are {', '.join(dataset.column_names)}"
        )
    if len(dataset) == 0:
        raise errors.EmptyDatasetError(f"the {what} data ({section.path or section.name}) has no rows")
    dataset = dataset.select_columns([column])
    if section.is_chat:
        if not _looks_like_chat(dataset[0][column]):
            raise errors.DatasetFieldError(
                f"{key}: column {column!r} does not hold chat messages (a list of {{role, content}} turns)"
            )
        if column != CHAT_COLUMN:
            dataset = dataset.rename_column(column, CHAT_COLUMN)
    return dataset


def load_training_data(section: DatasetSection, seed: int) -> tuple[Dataset, Dataset | None]:
    """The train split and, when configured, an eval split (a named split, or a seeded fraction)."""
    train = prepare(_load(section, section.split), section, "training")
    evaluation = None
    if section.eval_split is not None:
        evaluation = prepare(_load(section, section.eval_split), section, "eval")
    elif section.eval_fraction is not None:
        try:
            parts = train.train_test_split(test_size=section.eval_fraction, seed=seed)
        except ValueError as error:
            raise errors.ConfigError(f"dataset.eval_fraction {section.eval_fraction}: {error}") from error
        train, evaluation = parts["train"], parts["test"]
    return train, evaluation
