"""The one reader of a `datasets` save_to_disk folder: what does not load is a CroptuneError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.errors import CroptuneError


def load_saved_dataset(path: Path, what: str) -> Any:
    """The Dataset or DatasetDict saved at path; when none loads, a CroptuneError "{what}: why"
    (what: what the folder is not, e.g. "catalog folder X is not a dataset saved with ...")."""
    from datasets import load_from_disk

    try:
        return load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:  # ValueError: a folder of another format
        raise CroptuneError(f"{what}: {exc}") from exc
