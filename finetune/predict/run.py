"""predict over a catalog: ingest into the work folder, resume, answer in batches, write
the records (one JSON line per item) and the run's stats."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from finetune.detector.config import DETECTOR_SOURCE
from finetune.predict.box_sources import NoBoxes
from finetune.predict.bundle import Bundle
from finetune.predict.on_ray import RayPrepare, prepared_on_ray
from finetune.predict.predictor import STAGES, ItemFailed, Predictor, PreparedItem
from finetune.predict.stats import (
    STATS_FILE,
    PerItem,
    PredictSummary,
    log_stats,
    predict_stats,
)
from toolkit.catalog import Catalog, CatalogItem, item_fingerprint
from toolkit.errors import CroptuneError
from toolkit.files import atomic_write
from toolkit.images import DEFAULT_MAX_PIXELS
from toolkit.messages import cause_of
from toolkit.protocols import AnswerBackend, BoxSource
from toolkit.store import PREDICT_STAGE, ItemRow, RunStore

logger = logging.getLogger(__name__)


def default_workdir(out: Path) -> Path:
    """The work folder beside --out: preds.jsonl -> preds.work/."""
    out = Path(out)
    return out.with_name(f"{out.stem}.work" if out.suffix else f"{out.name}.work")


def predict_catalog(
    bundle: Bundle,
    catalog_path: Path,
    out: Path,
    backend: AnswerBackend,
    box_source: BoxSource | None = None,
    *,
    workdir: Path | None = None,
    batch_size: int = 4,
    limit: int | None = None,
    allow_outside: bool = False,
    columns: dict[str, str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    on_ray: RayPrepare | None = None,
) -> PredictSummary:
    """Predict every item of a catalog with a bundle's student; write one JSON line per item.

    A failing item gets an error record ({"item_id", "error", "stage"}) and the rest go on.
    The work folder (default: beside `out`) is a run store: a re-run skips finished items.
    on_record is called with each new record once it is stored. columns: croptune field ->
    the catalog's own column name (as `catalog validate --column`). on_ray: decode, boxes,
    crops and the examples as Ray Data actors (finetune.predict.on_ray), not in this process.
    """
    from toolkit.catalog import ingest_catalog, load_catalog

    out = Path(out)
    workdir = Path(workdir) if workdir is not None else default_workdir(out)
    box_source = box_source or NoBoxes()
    summary = PredictSummary(out=out, workdir=workdir)
    started = time.perf_counter()
    catalog = load_catalog(catalog_path, allow_outside=allow_outside, columns=columns)
    seconds: dict[str, float] = dict.fromkeys(("ingest", "load", *STAGES), 0.0)
    per_item = PerItem()
    with RunStore(workdir) as store:
        store.set_meta("schema_json", bundle.schema.model_dump_json())
        store.set_meta("catalog", str(Path(catalog_path).resolve()))
        store.set_meta("bundle", str(bundle.path.resolve()))
        if bundle.crop is not None:
            store.set_meta("crop_config_hash", bundle.crop.config_hash())
            store.set_meta("crop_config", bundle.crop.model_dump_json())
        clock = time.perf_counter()
        ingest = ingest_catalog(catalog, store, max_pixels, limit, progress)
        seconds["ingest"] = time.perf_counter() - clock
        scope = catalog.items[:limit] if limit is not None else catalog.items
        # Only the records of items that failed before the store are held; every other
        # record lives in the store's outcomes and is written from there at the end.
        failed_early: dict[str, dict[str, Any]] = {}
        problems = _problem_records(catalog, scope, store, ingest.problems, failed_early)

        predictor = Predictor(bundle, store, backend, box_source)
        if predictor.box_source.name == DETECTOR_SOURCE:
            logger.log(*bundle.coverage_note())
        todo: list[str] = []  # ids: each item's row is read when its batch comes

        def known(item: CatalogItem) -> dict[str, Any] | None:
            """The item's record if it needs no asking (failed at ingest, or done before)."""
            if item.item_id in failed_early:
                return failed_early[item.item_id]
            done = predictor.finished(item.item_id)
            if done is None:
                todo.append(item.item_id)
            else:
                summary.resumed += 1
            return done

        # This run's lines as the store's outcomes (None: not done yet), for `croptune report`.
        store.set_outcomes(
            PREDICT_STAGE,
            chain(
                ((item.item_id, known(item)) for item in scope),
                ((record["item_id"], record) for record in problems),
            ),
        )
        if summary.resumed:
            logger.info(
                "%d item(s) already predicted in %s: not asked again", summary.resumed, workdir
            )

        loop_seconds = 0.0
        if todo:
            clock = time.perf_counter()
            if on_ray is None:  # (on Ray, each preparation actor loads its own)
                predictor.box_source.prepare()
            backend.prepare()  # loading weights is not answering time
            seconds["load"] = time.perf_counter() - clock
            clock = time.perf_counter()
            size = max(1, batch_size)
            batches = (
                _prepared_here(predictor, todo, size)
                if on_ray is None
                else prepared_on_ray(predictor.preparer, _stored_items(store, todo), size, on_ray)
            )
            try:
                _run_items(predictor, batches, len(todo), progress, on_record, seconds, per_item)
            finally:
                predictor.box_source.close()
            loop_seconds = time.perf_counter() - clock
        _write_records(store, out, summary)

    summary.stats = predict_stats(
        summary, bundle, backend, predictor, seconds, per_item, loop_seconds
    )
    summary.stats["wall_seconds"] = round(time.perf_counter() - started, 3)
    summary.stats_file = workdir / STATS_FILE
    with atomic_write(summary.stats_file) as handle:
        handle.write(json.dumps(summary.stats, indent=2) + "\n")
    log_stats(summary)
    return summary


def _prepared_here(
    predictor: Predictor, todo: list[str], size: int
) -> Iterator[list[tuple[ItemRow, PreparedItem | ItemFailed]]]:
    """The items prepared in this process, size at a time: each one's example, or why not."""
    for start in range(0, len(todo), size):
        batch: list[tuple[ItemRow, PreparedItem | ItemFailed]] = []
        for item in _stored_items(predictor.store, todo[start : start + size]):
            try:
                batch.append((item, predictor.prepare_item(item)))
            except ItemFailed as failure:
                batch.append((item, failure))
        yield batch


def _run_items(
    predictor: Predictor,
    batches: Iterator[list[tuple[ItemRow, PreparedItem | ItemFailed]]],
    total: int,
    progress: bool,
    on_record: Callable[[dict[str, Any]], None] | None,
    seconds: dict[str, float],
    per_item: PerItem,
) -> None:
    """Answer and record the prepared items a batch at a time (each item stored at once)."""
    from toolkit.progress import ProgressBar

    with ProgressBar("predict", total, progress) as bar:
        for batch in batches:
            ready: list[PreparedItem] = []
            for item, prepared in batch:
                if isinstance(prepared, ItemFailed):
                    failed = predictor.fail(item.item_id, prepared)
                    _emit(predictor.store, failed, on_record, bar)
                else:
                    ready.append(prepared)
            if not ready:
                continue
            clock = time.perf_counter()
            answers = predictor.generate(ready)
            elapsed = time.perf_counter() - clock
            if len(answers) != len(ready):
                raise CroptuneError(
                    f"model {predictor.backend.name!r} returned {len(answers)} answers for "
                    f"{len(ready)} examples"
                )
            for prepared, answer in zip(ready, answers, strict=True):
                prepared.seconds["generate"] = (
                    answer.seconds if answer.seconds is not None else elapsed / len(ready)
                )
                try:
                    record = predictor.finish(prepared, answer)
                except (ItemFailed, ValueError, TypeError, KeyError, RecursionError) as exc:
                    # An answer no check foresaw fails its item alone; the others go on.
                    answer_failure = (
                        exc
                        if isinstance(exc, ItemFailed)
                        else ItemFailed("parse", f"{type(exc).__name__}: {exc}"[:500])
                    )
                    record = predictor.fail(prepared.item.item_id, answer_failure)
                    # what the student was shown, to look into a bad answer
                    record.update(boxes=prepared.record["boxes"], images=prepared.record["images"])
                for stage in STAGES:
                    seconds[stage] += prepared.seconds[stage]
                per_item.add(
                    prepared.record["images"], len(prepared.record["boxes"]), prepared.seconds
                )
                _emit(predictor.store, record, on_record, bar)


def _write_records(store: RunStore, out: Path, summary: PredictSummary) -> None:
    """Write the run's records (the store's outcomes, in catalog order) and count them."""
    with atomic_write(out) as handle:
        for row in store.outcomes(PREDICT_STAGE):
            record = row.record
            if record is None:
                continue  # not reached (the run stopped before it)
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            summary.items += 1
            if "error" in record:
                summary.failures.append(record)
            # The console's summary: no warning lives only in the files.
            for note in record.get("warnings", []) + record.get("notes", []):
                summary.warnings.setdefault(cause_of(None, note), []).append(record["item_id"])
    summary.failed = len(summary.failures)
    summary.predicted = summary.items - summary.failed


def _stored_items(store: RunStore, item_ids: list[str]) -> Iterator[ItemRow]:
    """The stored rows of these items (ingested in this run: a missing one is a bug)."""
    for item_id in item_ids:
        row = store.item(item_id)
        if row is None:
            raise CroptuneError(f"item {item_id!r} is not in the work folder {store.run_dir}")
        yield row


def _emit(
    store: RunStore,
    record: dict[str, Any],
    on_record: Callable[[dict[str, Any]], None] | None,
    bar: Any,
) -> None:
    store.update_outcome(PREDICT_STAGE, record["item_id"], record)
    bar.advance()
    if "error" in record:  # (the CLI prints failures grouped by cause at the end)
        logger.debug("item %s: %s failed: %s", record["item_id"], record["stage"], record["error"])
    if on_record is not None:
        on_record(record)


def _problem_records(
    catalog: Catalog,
    scope: Sequence[CatalogItem],
    store: RunStore,
    ingest_problems: Sequence[Any],
    records: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Error records of what never reached the store; items dropped at ingest go in records.

    Returns the records of catalog rows that did not load (bad rows, duplicate ids, paths
    leaving the catalog folder), in the order found.
    """
    by_item: dict[str, list[str]] = {}
    for problem in ingest_problems:
        if problem.where.startswith("item ") and problem.level == "error":
            by_item.setdefault(problem.where[5:], []).append(problem.message)
    for item in scope:
        resolved = [catalog.resolve(item, ref) for ref in item.images]
        if store.item_fingerprint(item.item_id) != item_fingerprint(item, resolved):
            reasons = by_item.get(item.item_id) or ["no usable image"]
            records[item.item_id] = {
                "item_id": item.item_id,
                "error": "; ".join(reasons),
                "stage": "decode",
            }
    loaded = {item.item_id for item in catalog.items}
    problems = []
    for problem in catalog.problems:
        item_id = problem.where[5:] if problem.where.startswith("item ") else None
        if item_id in loaded and "duplicate item_id" not in problem.message:
            continue  # a note on an item that loaded (a reference box): not a failure
        record = {"item_id": item_id, "error": problem.message, "stage": "catalog"}
        if item_id is None:
            record["where"] = problem.where
        problems.append(record)
    return problems
