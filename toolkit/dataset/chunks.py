"""A dataset build in chunks: the items in fixed runs of chunk_items, each chunk written once
as Arrow files (one per split) under the build's work folder, in worker processes or in
process, and reused by a rerun of the same build (same build key and chunk key).

A chunk's key covers the build key (config, schema, crop config, format) and, per item, its
id, split and a digest of everything its example is made of, so a chunk is reused only
when it would be built the same. Its JSON record is written last: a chunk with a record is
complete, one without is built again.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Generator, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit.dataset.config import DatasetConfig
from toolkit.dataset.rows import (
    answer_text,
    example_prompt,
    example_row,
    example_sources,
)
from toolkit.dataset.stored import StoredImage, stored_image
from toolkit.files import atomic_write
from toolkit.images import ImageLoadError
from toolkit.schema import AttributeSchema
from toolkit.store import ItemRow, RunStore

CHUNK_ITEMS = 16  # items per chunk: the unit of parallel work and of resuming
WORK_DIR = ".croptune-build"  # inside the dataset folder; removed once the dataset is saved
# Bump when what a chunk holds changes: chunks of an older format are then built again.
CHUNK_FORMAT = 1
# Rows a split's writer holds before it writes them: bounds memory (rows carry image bytes).
WRITER_BATCH_ROWS = 8
IMAGE_UNREADABLE = "image unreadable"
NO_ATTRIBUTES = "no final attributes"


@dataclass(frozen=True)
class BuildSpec:
    """What every chunk of one build shares (picklable: sent to worker processes)."""

    run_dir: Path
    work_dir: Path
    schema: AttributeSchema
    config: DatasetConfig
    crop_config_hash: str | None
    reencode: bool
    arrow_schema: Any  # pyarrow schema of dataset_features(), its features in the metadata


@dataclass(frozen=True)
class Chunk:
    """A run of consecutive items (catalog order) with their splits, and its key."""

    index: int
    key: str
    items: tuple[tuple[ItemRow, str], ...]

    @property
    def name(self) -> str:
        """The stem of the chunk's files: its position, then its key."""
        return f"chunk-{self.index:06d}-{self.key}"


def build_key(
    schema: AttributeSchema,
    config: DatasetConfig,
    crop_config_hash: str | None,
    reencode: bool,
    chunk_items: int,
) -> str:
    """The key of a build's settings: its work folder's name (other settings, other folder)."""
    settings = {
        "format": CHUNK_FORMAT,
        "config": config.model_dump(mode="json"),
        "schema": schema.model_dump(mode="json"),
        "crop_config_hash": crop_config_hash,
        "reencode": reencode,
        "chunk_items": chunk_items,
    }
    return _digest(settings)


def prepare_work_dir(out_dir: Path, key: str) -> Path:
    """out_dir/WORK_DIR/key, made; other builds' folders and half-written files removed."""
    root = out_dir / WORK_DIR
    if root.is_dir():
        for other in root.iterdir():
            if other.name != key:
                shutil.rmtree(other) if other.is_dir() else other.unlink()
    work = root / key
    work.mkdir(parents=True, exist_ok=True)
    for partial in work.glob(".*.partial-*"):
        partial.unlink()
    return work


def item_digest(store: RunStore, item: ItemRow, crop_config_hash: str | None) -> str:
    """A digest of what an item's example is made of: the item, its final attributes, its
    photos (hash, file size and time), its crops and pHash duplicates under the crop config."""
    images = [(r.index, r.uri, r.sha256, r.file_stat, r.error) for r in store.images(item.item_id)]
    crops = (
        [
            (c.image, c.region, c.path, c.sha256, c.duplicate_of)
            for c in store.crops(item.item_id, crop_config_hash)
        ]
        if crop_config_hash
        else []
    )
    phashes = (
        sorted(store.image_phashes(item.item_id, crop_config_hash).items())
        if crop_config_hash
        else []
    )
    attributes = store.final_attributes(item.item_id)
    return _digest([asdict(item), attributes, images, crops, phashes])


def plan_chunks(
    store: RunStore,
    splits: Mapping[str, str],
    chunk_items: int,
    key: str,
    crop_config_hash: str | None,
) -> Iterator[Chunk]:
    """The items in `splits` in catalog order, chunk_items at a time (streamed from the store)."""
    batch: list[tuple[ItemRow, str, str]] = []
    index = 0
    for item in store.items():
        split = splits.get(item.item_id)
        if split is None:
            continue
        batch.append((item, split, item_digest(store, item, crop_config_hash)))
        if len(batch) == chunk_items:
            yield _chunk(index, key, batch)
            index, batch = index + 1, []
    if batch:
        yield _chunk(index, key, batch)


def finished_chunk(spec: BuildSpec, chunk: Chunk) -> dict[str, Any] | None:
    """The record of the chunk when an earlier build finished it (its files all there: one
    whose files an interrupted save already moved into the dataset is built again)."""
    path = spec.work_dir / f"{chunk.name}.json"
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    if all((spec.work_dir / name).is_file() for name in record["files"].values()):
        return record
    return None


def build_chunk(spec: BuildSpec, chunk: Chunk, store: RunStore | None = None) -> dict[str, Any]:
    """Write a chunk's rows (one Arrow file per split) and its record; return the record.

    store: the run store in process; None in a worker process (it opens its own). Rows go
    through pyarrow alone (the schema carries the `datasets` features), so a worker never
    imports `datasets`.
    """
    store = store if store is not None else _worker_store(spec.run_dir)
    record: dict[str, Any] = {
        "items": len(chunk.items),
        "files": {},
        "examples": {},
        "images_per_example": [],
        "stored": {},
        "left_out": [],
    }
    writers: dict[str, _SplitWriter] = {}
    try:
        for item, split in chunk.items:
            row = _example(store, item, spec, record)
            if row is None:
                continue
            if split not in writers:
                path = spec.work_dir / f"{chunk.name}.{split}.arrow"
                writers[split] = _SplitWriter(path, spec.arrow_schema)
            writers[split].add(row)
            record["examples"][split] = record["examples"].get(split, 0) + 1
        for split, writer in writers.items():
            writer.finish()
            record["files"][split] = writer.path.name
    except BaseException:
        for writer in writers.values():
            writer.discard()
        raise
    with atomic_write(spec.work_dir / f"{chunk.name}.json") as handle:
        json.dump(record, handle)
    return record


class _SplitWriter:
    """One split's rows of a chunk: an Arrow IPC stream (what `datasets` memory-maps; the saved
    dataset's data file once moved), written WRITER_BATCH_ROWS rows at a time to a partial
    file, renamed into place when finished."""

    def __init__(self, path: Path, schema: Any) -> None:
        import pyarrow as pa

        self.path, self.schema = path, schema
        self.batch = pa.RecordBatch.from_pylist
        self.partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        self.sink = pa.OSFile(str(self.partial), "wb")
        self.stream = pa.ipc.new_stream(self.sink, schema)
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        """Add a row; full batches are written."""
        self.rows.append(row)
        if len(self.rows) >= WRITER_BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.stream.write_batch(self.batch(self.rows, schema=self.schema))
            self.rows = []

    def finish(self) -> None:
        """Write what is left, close the stream and put the file in place."""
        self._flush()
        self.stream.close()
        self.sink.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        """Close and remove the partial file (an interrupted chunk)."""
        if not self.sink.closed:
            self.sink.close()
        self.partial.unlink(missing_ok=True)


def run_chunks(
    spec: BuildSpec,
    chunks: Iterator[Chunk],
    workers: int,
    store: RunStore,
    total: int,
    parallel_after_s: float | None = None,
) -> Generator[tuple[Chunk, dict[str, Any], bool, int], None, None]:
    """(chunk, record, reused, processes) in chunk order: finished chunks read back, the
    others built in process (workers <= 1) or in `workers` processes, at most 2 per worker
    in flight. processes: 1 for a chunk built in this process.

    parallel_after_s (with workers > 1): start in process, and move the chunks left to the
    processes only once they would take longer than this in process (measured on the
    chunks built so far): starting processes costs seconds, more than a small build.
    Close the iterator when done (contextlib.closing): an interrupted build then waits for
    the chunks in flight, which are written whole, and starts no others.
    """
    chunks = iter(chunks)
    if workers <= 1 or parallel_after_s is not None:
        limit = None if workers <= 1 else parallel_after_s
        for chunk, record, reused in _in_process(spec, chunks, store, total, limit):
            yield chunk, record, reused, 1
    yield from _in_processes(spec, chunks, workers)


def _in_process(
    spec: BuildSpec,
    chunks: Iterator[Chunk],
    store: RunStore,
    total: int,
    limit_s: float | None,
) -> Iterator[tuple[Chunk, dict[str, Any], bool]]:
    """Chunks built in this process, until (limit_s) the chunks left would take longer."""
    built_s, built, seen = 0.0, 0, 0
    for chunk in chunks:
        seen += 1
        done = finished_chunk(spec, chunk)
        if done is not None:
            yield chunk, done, True
            continue
        start = time.perf_counter()
        record = build_chunk(spec, chunk, store)
        built_s, built = built_s + time.perf_counter() - start, built + 1
        yield chunk, record, False
        if limit_s is not None and built_s / built * (total - seen) > limit_s:
            return


def _in_processes(
    spec: BuildSpec, chunks: Iterator[Chunk], workers: int
) -> Iterator[tuple[Chunk, dict[str, Any], bool, int]]:
    """The chunks left, built in `workers` processes (started at the first chunk to build)."""
    pool: ProcessPoolExecutor | None = None
    window: deque[tuple[Chunk, dict[str, Any] | Future[dict[str, Any]]]] = deque()
    try:
        for chunk in chunks:
            entry: dict[str, Any] | Future[dict[str, Any]] | None = finished_chunk(spec, chunk)
            if entry is None:
                if pool is None:
                    # spawn: a fresh interpreter per worker; forking a process that holds
                    # SQLite and Arrow threads is unsafe.
                    context = multiprocessing.get_context("spawn")
                    pool = ProcessPoolExecutor(
                        workers, mp_context=context, initializer=_init_worker
                    )
                entry = pool.submit(build_chunk, spec, chunk)
            window.append((chunk, entry))
            while window and (len(window) > 2 * workers or isinstance(window[0][1], dict)):
                yield (*_resolve(window.popleft()), workers)
        while window:
            yield (*_resolve(window.popleft()), workers)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _resolve(
    pair: tuple[Chunk, dict[str, Any] | Future[dict[str, Any]]],
) -> tuple[Chunk, dict[str, Any], bool]:
    chunk, result = pair
    if isinstance(result, dict):
        return chunk, result, True
    return chunk, result.result(), False


def _example(
    store: RunStore, item: ItemRow, spec: BuildSpec, record: dict[str, Any]
) -> dict[str, Any] | None:
    """An item's dataset row, its images stored (stored_image); None (noted) when left out."""
    attributes = store.final_attributes(item.item_id)
    if not attributes:  # its labels were removed since the split was made
        record["left_out"].append({"item_id": item.item_id, "reason": NO_ATTRIBUTES})
        return None
    stored: list[StoredImage] = []
    for source in example_sources(store, item.item_id, spec.config, spec.crop_config_hash):
        try:
            stored.append(stored_image(source, spec.reencode))
        except ImageLoadError as exc:
            record["left_out"].append(
                {
                    "item_id": item.item_id,
                    "reason": IMAGE_UNREADABLE,
                    "message": f"{source.describe()} ({source.uri}): {exc}",
                }
            )
            return None
    counts = record["stored"]
    for image in stored:
        for kind in ("png", *image.reasons) if image.reasons else ("source_bytes",):
            counts[kind] = counts.get(kind, 0) + 1
    record["images_per_example"].append(len(stored))
    row = example_row(
        [image.feature_value() for image in stored],
        example_prompt(item, spec.schema),
        answer_text(attributes),
    )
    row.update(item_id=item.item_id, category=item.category or "")
    return row


def _chunk(index: int, key: str, batch: list[tuple[ItemRow, str, str]]) -> Chunk:
    chunk_key = _digest([key, [(item.item_id, split, digest) for item, split, digest in batch]])
    return Chunk(index, chunk_key, tuple((item, split) for item, split, _ in batch))


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_WORKER_STORES: dict[Path, RunStore] = {}  # a worker process's run store, opened once


def _worker_store(run_dir: Path) -> RunStore:
    if run_dir not in _WORKER_STORES:
        _WORKER_STORES[run_dir] = RunStore(run_dir, create=False)
    return _WORKER_STORES[run_dir]


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group: the parent stops the build, and a worker
    # finishes the chunk it writes (whole, so a rerun reuses it) instead of dying mid-file.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
