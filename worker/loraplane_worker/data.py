"""Loading the training (and eval) data with the `datasets` library, the way TRL's SFT script does.
The eval data of its own (`evalDataset`) goes through the same loading and checks as the training
data, its messages naming its own fields.

What this adds is the checks a pod needs before it spends GPU time: the source exists, the split
exists, the configured column is there (naming the columns that are) and holds text or chat turns
(judged from the Arrow schema, so a large dataset is not read twice), and enough non-empty examples
remain for one optimizer step in the training split and one in the eval split. Empty texts and empty
conversations teach nothing and are dropped (the count is logged). The dataset handed to SFTTrainer
holds only the one column it trains on; a chat column is renamed to `messages`, the name TRL
recognises as conversational.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset
from datasets.exceptions import DataFilesNotFoundError, DatasetGenerationError, DatasetNotFoundError

from loraplane.api.worker import DatasetInput, LocalDataFiles
from loraplane_worker import errors
from loraplane_worker.config import FILE_FORMATS, dataset_file_format
from loraplane_worker.progress import emit

CHAT_COLUMN = "messages"


def _local_files(path: Path, format_override: str | None, field: str) -> tuple[str, list[str]]:
    if not path.exists():
        raise errors.DatasetNotFoundError(f"{field}.path {str(path)!r}: no such file or directory")
    if not os.access(path, os.R_OK):
        raise errors.DatasetNotFoundError(f"{field}.path {str(path)!r}: not readable by this process")
    if path.is_file():
        return dataset_file_format(str(path), format_override, field), [str(path)]
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    if format_override:
        known = [str(p) for p in files if p.suffix.lower() in FILE_FORMATS]
        return format_override, known or [str(p) for p in files]
    formats = {FILE_FORMATS[p.suffix.lower()] for p in files if p.suffix.lower() in FILE_FORMATS}
    if not formats:
        raise errors.DatasetNotFoundError(
            f"{field}.path {str(path)!r}: no data files ({', '.join(sorted(FILE_FORMATS))}) in the folder"
        )
    if len(formats) > 1:
        raise errors.ConfigError(
            f"{field}.path {str(path)!r} mixes formats {sorted(formats)}; "
            f"point at one file or set {field}.format"
        )
    (file_format,) = formats
    return file_format, [str(p) for p in files if FILE_FORMATS.get(p.suffix.lower()) == file_format]


def _load(section: LocalDataFiles, split: str) -> Dataset:
    field = section.FIELD
    try:
        if section.path is not None:
            file_format, files = _local_files(Path(section.path), section.format, field)
            if all(Path(file).stat().st_size == 0 for file in files):
                # `datasets` fails on empty files with a bare StopIteration; say what is wrong instead.
                raise errors.EmptyDatasetError(f"{field}.path {section.path!r}: the data files are empty")
            loaded = datasets.load_dataset(file_format, data_files=files, split="train")
        else:
            loaded = datasets.load_dataset(section.name, section.config, split=split)
    except (DatasetNotFoundError, DataFilesNotFoundError) as error:
        source = section.path or section.name
        raise errors.DatasetNotFoundError(f"{field} {source!r} not found: {error}") from error
    except DatasetGenerationError as error:
        cause = error.__cause__ or error
        source = section.path or section.name
        raise errors.InputError(f"{field} {source!r} cannot be read: {cause}") from error
    except ConnectionError as error:
        if errors.hub_offline():  # not in the local cache, and nothing else will be searched
            raise errors.DatasetNotFoundError(
                f"{field} {section.name!r}: {error} "
                "(HF_HUB_OFFLINE is set: only the local cache was searched)"
            ) from error
        raise
    except ValueError as error:
        if "Unknown split" in str(error):
            raise errors.DatasetNotFoundError(f"{field} {section.name!r}: {error}") from error
        raise
    if not isinstance(loaded, Dataset):
        source = section.path or section.name
        raise errors.ConfigError(f"{field} {source!r}: expected one split, got {type(loaded).__name__}")
    return loaded


TEXT_TYPES = {"string", "large_string"}


def _describe_feature(feature: Any) -> str:
    if isinstance(feature, datasets.Value):
        return f"{feature.dtype} values"
    if isinstance(feature, dict):
        return f"records with keys {', '.join(sorted(feature))}"
    inner = _list_item(feature)
    return f"lists of {_describe_feature(inner)}" if inner is not None else type(feature).__name__


def _list_item(feature: Any) -> Any:
    """The item feature of a list column (`[x]`, `List(x)`, `Sequence(x)`), else None."""
    if isinstance(feature, list) and len(feature) == 1:
        return feature[0]
    if type(feature).__name__ in ("List", "LargeList", "Sequence"):
        return getattr(feature, "feature", None)
    return None


def _is_chat_feature(feature: Any) -> bool:
    turn = _list_item(feature)
    return isinstance(turn, dict) and "role" in turn and "content" in turn


def _all_missing(dataset: Dataset, column: str, feature: Any) -> bool:
    """A column of nothing but nulls (or NaN, as pandas reads a blank CSV column); read only when the
    schema says the column is not text, i.e. on the way to an error."""
    if not isinstance(feature, datasets.Value) or feature.dtype in TEXT_TYPES:
        return False
    return all(v is None or (isinstance(v, float) and math.isnan(v)) for v in dataset[column])


def _key(section: LocalDataFiles) -> str:
    return f"{section.FIELD}.{'messagesField' if section.is_chat else 'textField'}"


def prepare(dataset: Dataset, section: LocalDataFiles, what: str) -> Dataset:
    """Check the configured column, keep only it with its non-empty examples, name a chat column
    `messages`."""
    column, key = section.column, _key(section)
    if column not in dataset.column_names:
        raise errors.DatasetFieldError(
            f"{key}: the {what} data has no column {column!r}; "
            f"its columns are {', '.join(dataset.column_names)}"
        )
    source = section.path or section.name
    if len(dataset) == 0:
        raise errors.EmptyDatasetError(f"the {what} data ({source}) has no rows")
    feature = dataset.features[column]
    if section.is_chat and not _is_chat_feature(feature):
        raise errors.DatasetFieldError(
            f"{key}: column {column!r} does not hold chat messages (a list of {{role, content}} turns); "
            f"it holds {_describe_feature(feature)}"
        )
    if _all_missing(dataset, column, feature):  # e.g. a CSV column left blank (read as NaN)
        raise errors.EmptyDatasetError(
            f"{key}: column {column!r} of the {what} data ({source}) holds no values ({len(dataset)} rows, "
            f"all empty); point {key} at the column with the {what} data"
        )
    if not section.is_chat and not (isinstance(feature, datasets.Value) and feature.dtype in TEXT_TYPES):
        hint = (
            f"; for chat turns set {section.FIELD}.messagesField instead" if _is_chat_feature(feature) else ""
        )
        raise errors.DatasetFieldError(
            f"{key}: column {column!r} does not hold text; it holds {_describe_feature(feature)}{hint}"
        )
    dataset = dataset.select_columns([column])
    rows = len(dataset)
    if section.is_chat:
        kept = dataset.filter(lambda batch: [bool(turns) for turns in batch[column]], batched=True)
        nothing = "empty conversations"
    else:
        kept = dataset.filter(lambda batch: [bool(t and t.strip()) for t in batch[column]], batched=True)
        nothing = "empty strings"
    if len(kept) == 0:
        raise errors.EmptyDatasetError(
            f"{key}: column {column!r} of the {what} data ({source}) holds only {nothing} "
            f"({rows} rows, none with content); point {key} at the column with the {what} text"
        )
    if len(kept) < rows:
        emit(
            {"event": "dataset", "split": what, "rows": rows, "dropped": rows - len(kept), "reason": nothing}
        )
    if section.is_chat and column != CHAT_COLUMN:
        kept = kept.rename_column(column, CHAT_COLUMN)
    return kept


def _enough_for_one_step(data: Dataset, section: DatasetInput, what: str, per_step: int, how: str) -> None:
    if len(data) < per_step:
        raise errors.TooFewExamplesError(
            f"{_key(section)}: {len(data)} non-empty examples in the {what} data "
            f"({section.path or section.name}), "
            f"but one optimizer step takes {per_step} ({how}); add data or lower "
            "training.perDeviceTrainBatchSize / training.gradientAccumulationSteps"
        )


def load_training_data(
    section: DatasetInput,
    seed: int,
    per_step: int = 1,
    how: str = "",
    eval_section: LocalDataFiles | None = None,
) -> tuple[Dataset, Dataset | None]:
    """The train split and, when configured, the eval data: a named split, a seeded fraction, or
    a source of its own (`eval_section`, read the same way). `per_step`: examples one optimizer step
    takes (`how` says why, for the message)."""
    train = prepare(_load(section, section.split), section, "training")
    evaluation = None
    if eval_section is not None:
        evaluation = prepare(_load(eval_section, eval_section.split), eval_section, "eval")
        if not section.is_chat and eval_section.column != section.column:
            # SFTTrainer reads both datasets' text from one column (`dataset_text_field`).
            evaluation = evaluation.rename_column(eval_section.column, section.column)
    elif section.eval_split is not None:
        evaluation = prepare(_load(section, section.eval_split), section, "eval")
    elif section.eval_fraction is not None:
        fraction = section.eval_fraction
        try:
            parts = train.train_test_split(test_size=fraction, seed=seed)
        except ValueError as error:
            raise errors.TooFewExamplesError(
                f"dataset.evalFraction {fraction}: {len(train)} non-empty examples cannot be split into a "
                f"training and an eval part ({error}); lower dataset.evalFraction or add data"
            ) from error
        train, evaluation = parts["train"], parts["test"]
        if len(evaluation) == 0:
            raise errors.TooFewExamplesError(
                f"dataset.evalFraction {fraction} of {len(train)} examples leaves the eval split empty"
            )
        how = f"{how}, after dataset.evalFraction {fraction} held out {len(evaluation)}".lstrip(", ")
    _enough_for_one_step(train, section, "training", per_step, how or "one batch")
    return train, evaluation


def examples_digest(data: Dataset) -> str:
    """`sha256:` of the examples as the trainer gets them (after the split and the dropping of empty
    ones), one canonical JSON line each, in order: two runs' eval figures compare only when this
    matches."""
    digest = hashlib.sha256()
    for row in data:
        # Values only: the same examples under another column name are the same eval data.
        values = list(row.values())
        digest.update(json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        digest.update(b"\n")
    return f"sha256:{digest.hexdigest()}"
