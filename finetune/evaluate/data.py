"""A `croptune dataset build` split for evaluation: its rows, schema, references, examples."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolkit.errors import CroptuneError
from toolkit.saved_dataset import load_saved_dataset


def load_split(dataset_dir: Path, split: str = "test", limit: int | None = None) -> Any:
    """The rows of one split of a `croptune dataset build` folder (first `limit` rows)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise CroptuneError(
            f"dataset {dataset_dir} does not exist; build one with "
            "`croptune dataset build --run RUN --out DIR`"
        )
    dataset = load_saved_dataset(
        dataset_dir, f"{dataset_dir} is not a dataset folder written by `croptune dataset build`"
    )
    from datasets import DatasetDict

    if not isinstance(dataset, DatasetDict):
        raise CroptuneError(f"{dataset_dir} holds a single split; croptune expects a DatasetDict")
    if split not in dataset:
        raise CroptuneError(
            f"dataset {dataset_dir} has no split {split!r}; it has {', '.join(dataset)}"
        )
    rows = dataset[split]
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    if len(rows) == 0:
        raise CroptuneError(f"split {split!r} of {dataset_dir} is empty")
    return rows


def dataset_schema(dataset_dir: Path) -> Any:
    """The attribute schema the dataset was built with (None: the built-in one is assumed)."""
    from toolkit.schema import AttributeSchema

    facts = Path(dataset_dir) / "croptune_dataset.json"
    if not facts.is_file():
        return None
    schema = json.loads(facts.read_text(encoding="utf-8")).get("schema")
    return AttributeSchema.model_validate(schema) if schema else None


def split_references(rows: Any) -> tuple[list[str], list[Any]]:
    """(item ids, parsed reference answers) of a split, without decoding its images."""
    references = [json.loads(c[0]["content"][0]["text"]) for c in rows["completion"]]
    return list(rows["item_id"]), references


class SplitExamples(Sequence):
    """A split's (images, prompt) examples, decoded one row at a time (a split's images
    together may not fit in memory)."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = self.rows[index]
        return row["images"], row["prompt"]
