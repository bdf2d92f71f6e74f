"""A pending request as a row of the Ray Dataset: what the workers need to prepare and ask it.

The driver keys and claims requests exactly as a single-process run does; a row carries the
question (its prompt, parameters, cache key), one image job per image it shows, and the item.
Rows are written as Parquet files, so the driver never holds the whole list: they go to Ray's
object store a file at a time (pipeline.request_blocks).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teacher_labeling.client import Encoding
from teacher_labeling.image_pool import ImageJob
from teacher_labeling.teachers import TeacherRequest
from toolkit.store import ItemRow

# Rows per request file: ~1 KB a row (paths, prompt, hashes), so a file is a few MB.
ROWS_PER_FILE = 4096
REQUEST_COLUMNS = ("key", "teacher", "item_id", "image", "payload")
NO_IMAGE = -1  # the image column of a whole-item (attributes) request


@dataclass(frozen=True)
class ShownImage:
    """One image a request shows: how to make it and how to name it when it cannot be read."""

    job: ImageJob
    name: str  # "image 2" or "crop crops/x.png", as single-process messages say
    image: int  # the original's index the error is logged under


@dataclass
class RayRequest:
    """One request on its way to a worker: the question (no pixels yet), its images, the item."""

    request: TeacherRequest
    shown: list[ShownImage]
    item: ItemRow

    def row(self) -> dict[str, Any]:
        """The request as a Dataset row (the payload pickled: it is read only by workers)."""
        return {
            "key": self.request.cache_key,
            "teacher": self.request.teacher,
            "item_id": self.request.item_id,
            "image": NO_IMAGE if self.request.image is None else self.request.image,
            "payload": pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL),
        }


def shown_image(
    source: Any, size: tuple[int, int], encoding: Encoding, name: str, image: int
) -> ShownImage:
    """An image shown at one size in one encoding (source: an ImageRow or a crop file path)."""
    return ShownImage(ImageJob(source, (size,), (encoding,)), name, image)


class RequestFiles:
    """Rows written as Parquet files of ROWS_PER_FILE rows under a folder (made on first row)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rows = 0
        self._chunk: list[dict[str, Any]] = []
        self._files = 0

    def add(self, row: dict[str, Any]) -> None:
        """Add one row; a full chunk is written out."""
        self._chunk.append(row)
        self.rows += 1
        if len(self._chunk) >= ROWS_PER_FILE:
            self._flush()

    def close(self) -> None:
        """Write what is left."""
        if self._chunk:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(self._chunk, schema=_schema())
        pq.write_table(table, self.folder / f"requests-{self._files:05d}.parquet")
        self._files += 1
        self._chunk = []


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("teacher", pa.string()),
            ("item_id", pa.string()),
            ("image", pa.int64()),
            ("payload", pa.binary()),
        ]
    )
