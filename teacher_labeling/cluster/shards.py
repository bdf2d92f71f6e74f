"""Answer shards: the Parquet files Ray's workers write, imported into the run store.

A shard is written whole by one write task; one that cannot be read yet (being written, or
cut off by a crash) is left where it is and tried again. Importing is idempotent: a row whose
answer the store already holds is skipped, so a shard imported twice (the driver died between
the import and the move) changes nothing. An imported shard is moved to `imported/`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from teacher_labeling.labeling import (
    _count_answer,
    _LabelRun,
    _stop,
    _store_answer,
    item_requests,
)

if TYPE_CHECKING:
    from teacher_labeling.teachers import Teacher

logger = logging.getLogger(__name__)

IMPORTED = "imported"


@dataclass
class ShardFolder:
    """The folder (local or an fsspec URL) the workers write answer shards into."""

    url: str

    def __post_init__(self) -> None:
        from fsspec.core import url_to_fs

        self.fs, self.root = url_to_fs(self.url)
        self.fs.makedirs(self.root, exist_ok=True)

    def finished(self) -> list[str]:
        """The shards not imported yet, oldest name first."""
        found = self.fs.glob(f"{self.root.rstrip('/')}/*.parquet")
        return sorted(str(path) for path in found)

    def read(self, path: str) -> list[dict[str, Any]] | None:
        """A shard's rows, or None when it cannot be read (yet)."""
        import pyarrow.parquet as pq

        try:
            with self.fs.open(path, "rb") as f:
                return pq.read_table(f).to_pylist()
        except (OSError, ValueError) as exc:  # no footer yet, or cut off by a crash
            logger.debug("shard %s not readable yet: %s", path, exc)
            return None

    def mark_imported(self, path: str) -> None:
        """Move an imported shard out of the way of the next look."""
        target = f"{self.root.rstrip('/')}/{IMPORTED}"
        self.fs.makedirs(target, exist_ok=True)
        self.fs.mv(path, f"{target}/{path.rsplit('/', 1)[-1]}")


def import_shards(run: _LabelRun, folder: ShardFolder, relabel: bool, final: bool = False) -> int:
    """Import every readable shard into the store; the number of answer rows imported.

    final: the workers are done, so a shard that still cannot be read never will be: it is
    reported (its requests are asked again next run) and moved aside.
    """
    teachers = {t.name: t for t in run.teachers}
    imported = 0
    for path in folder.finished():
        rows = folder.read(path)
        if rows is None:
            if final:
                message = f"answer shard {path} cannot be read; its requests are asked again"
                run.store.log_event("label", message, "warning")
                logger.warning("%s", message)
                folder.mark_imported(path)
            continue
        for row in rows:
            imported += import_row(run, teachers, row, relabel)
        folder.mark_imported(path)
    return imported


def import_row(
    run: _LabelRun, teachers: dict[str, Teacher], row: dict[str, Any], relabel: bool
) -> int:
    """Store one shard row as a single-process run would have (1: it was new, 0: skipped)."""
    teacher = teachers.get(row["teacher"])
    item = run.store.item(row["item_id"])
    if teacher is None or item is None:
        return 0  # a teacher no longer configured, or an item no longer in the run
    key = row["key"]
    if run.store.has_result(item.item_id, key):
        return 0  # imported before (or answered since)
    pending = next(
        (
            p
            for p in item_requests(run.store, item, [teacher], relabel)
            if p.request.cache_key == key
        ),
        None,
    )
    if pending is None:
        return 0  # the question changed (the photo, the prompt): this answer is stale
    request = pending.request
    kind = row["kind"]
    if kind == "answer":
        usage = json.loads(row["usage"]) if row["usage"] else {}
        _count_answer(run, teacher, usage)
        _store_answer(run, item, pending, row["text"], usage)
    elif kind == "failed":
        run.store.record_failure(
            key, teacher.name, request.model, item.item_id, request.image, row["error"]
        )
        run.error(item.item_id, teacher.name, request.image, row["error"])
    elif kind == "unreadable":
        error = json.loads(row["error"])
        run.error(item.item_id, None, error["image"], error["message"])
    elif kind == "stopped":
        _stop(run, teacher.name, row["error"])
    run.bar.advance(spend=run.summary.usd)
    return 1
