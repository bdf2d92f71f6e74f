"""`croptune predict`: a serving bundle + a new catalog -> one JSON answer per item.

Every item goes through the training-time code, on a run store of its own (the work
folder): the catalog is ingested with `croptune label`'s validation and image
normalisation; the bundle's box source (its detector, a box teacher, or none) boxes the
photos; `toolkit.crops.crop_item` cuts and de-duplicates the crops under the bundle's crop
config, exactly as `croptune crop` did; `toolkit.dataset.item_example` picks the images
under the image budget and writes the prompt, exactly as `croptune dataset build` did; the
student answers. No train/serve skew by construction: there is no second implementation.

The work folder is written as each stage of each item finishes, so a killed predict
resumes: finished items are not asked again, boxes already proposed are not proposed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image
from pydantic import ValidationError

from toolkit.answers import AnswerBackend, Example, GeneratedAnswer
from toolkit.boxes import Box
from toolkit.bundle import (
    BUNDLE_FILE,
    EXPORT_AGAIN,
    BoxSourceName,
    BundleManifest,
    read_manifest_data,
    validate_manifest,
)
from toolkit.catalog import Catalog, CatalogItem, item_fingerprint, load_ingested_image
from toolkit.config import config_error
from toolkit.crops import CropConfig, crop_item
from toolkit.dataset import DatasetConfig, example_row, item_example
from toolkit.errors import CroptuneError
from toolkit.files import atomic_write
from toolkit.images import DEFAULT_MAX_PIXELS, ImageChangedError, ImageLoadError
from toolkit.messages import cause_of
from toolkit.schema import AttributeSchema, extraction_prompt
from toolkit.store import INGEST_STAGE, PREDICT_STAGE, ItemRow, RunStore

logger = logging.getLogger(__name__)

PREDICTOR = "predict"  # the store's teacher column for the student's answers
STATS_FILE = "predict_stats.json"
STAGES = ("decode", "boxes", "crop", "generate")
EXPORT_WITH_DATASET = "export it again with --dataset DIR (the training dataset folder)"


# ---------------------------------------------------------------------------- the bundle


@dataclass
class Bundle:
    """What predict reads from a serving bundle: how training built its examples."""

    path: Path
    manifest: BundleManifest
    schema: AttributeSchema
    crop: CropConfig | None  # None: the dataset was built without a crop stage
    dataset: DatasetConfig  # strategy, image budget, originals' longer side
    image_tokens: int | None
    box_source: BoxSourceName
    max_new_tokens: int
    lora_name: str

    @property
    def detector_dir(self) -> Path | None:
        """BUNDLE/detector when the bundle ships one."""
        detector = self.manifest.detector
        folder = self.path / detector.path if detector else None
        return folder if folder is not None and folder.is_dir() else None

    @property
    def uses_crops(self) -> bool:
        """Whether training showed crops (a crop stage ran and the strategy uses them)."""
        return self.crop is not None and self.dataset.strategy != "originals"


def load_bundle(path: Path | str) -> Bundle:
    """A bundle written by `croptune export`, its croptune.yaml validated and checked for
    what predict needs (a missing field is an error naming it, never a default)."""
    path = Path(path)
    data = read_manifest_data(path)
    # Checked before the other fields: a bundle without the dataset's facts lacks them all.
    manifest = validate_manifest(BundleManifest, data, path) if data.get("schema") else None
    schema = manifest.schema_ if manifest else None
    if manifest is None or schema is None:
        raise CroptuneError(
            f"bundle {path} records no schema, prompt or crop config (it was exported without "
            f"the dataset's croptune_dataset.json); {EXPORT_WITH_DATASET}"
        )
    recorded = manifest.prompt.instructions
    if recorded is not None and recorded.strip() != extraction_prompt(schema).strip():
        raise CroptuneError(
            f"bundle {path} was trained with other instructions than this croptune writes "
            f"(croptune {manifest.croptune_version}); predict with the croptune "
            "version that trained it, so the student sees its training prompt"
        )
    needed = {
        "image_budget": manifest.image_budget,
        "dataset.strategy": manifest.dataset.strategy,
        "prompt.originals_max_side": manifest.prompt.originals_max_side,
    }
    missing = [name for name, value in needed.items() if value is None]
    if missing:
        raise CroptuneError(
            f"bundle {path} records no {', '.join(missing)} in {BUNDLE_FILE} (how training "
            f"built its examples); {EXPORT_WITH_DATASET}"
        )
    try:
        dataset_config = DatasetConfig(
            strategy=manifest.dataset.strategy,
            max_images_per_item=manifest.image_budget,
            max_image_side=manifest.prompt.originals_max_side,
        )
    except ValidationError as exc:
        error = config_error(exc, f"bundle {path}: the dataset settings in {BUNDLE_FILE}")
        raise CroptuneError(f"{error}; {EXPORT_AGAIN}") from exc
    return Bundle(
        path=path,
        manifest=manifest,
        schema=schema,
        crop=manifest.crop,
        dataset=dataset_config,
        image_tokens=manifest.image_tokens,
        box_source=manifest.box_source,
        max_new_tokens=manifest.prompt.decoding.max_new_tokens,
        lora_name=manifest.lora_name,
    )


# ---------------------------------------------------------------------------- box sources


class BoxSource(Protocol):
    """Where predict's boxes come from; implemented here (detector, none) and by
    teacher_labeling.box_source.TeacherBoxes (a box teacher)."""

    name: str  # recorded as the boxes' source

    def key(self) -> str:
        """What identifies the boxes it gives (weights, settings): part of the resume key."""
        ...

    def prepare(self) -> None:
        """Load weights or check keys before the first item."""
        ...

    def boxes(
        self,
        item: ItemRow,
        images: dict[int, Image.Image],
        hashes: dict[int, str],
        store: RunStore,
    ) -> list[Box]:
        """The boxes of an item's decoded photos (by image index), in oriented pixels."""
        ...

    def close(self) -> None:
        """Release what it holds."""
        ...


class NoBoxes:
    """No boxes: the originals only (what a bundle without a detector can do alone)."""

    name = "none"

    def key(self) -> str:
        """Always the same."""
        return "none"

    def prepare(self) -> None:
        """Nothing to load."""

    def boxes(
        self,
        item: ItemRow,
        images: dict[int, Image.Image],
        hashes: dict[int, str],
        store: RunStore,
    ) -> list[Box]:
        """No boxes."""
        return []

    def close(self) -> None:
        """Nothing held."""


class DetectorBoxes:
    """The bundle's region-proposal detector (finetune.detector), at its trained settings."""

    def __init__(self, folder: Path, device: str | None = None) -> None:
        from finetune.detector import DETECTOR_SOURCE

        self.folder = Path(folder)
        self.device = device
        self.name = DETECTOR_SOURCE
        self._detector: Any = None

    def key(self) -> str:
        """The weights' and settings' content."""
        from finetune.detector import CONFIG_FILE, WEIGHTS_FILE

        digest = hashlib.sha256()
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            target = self.folder / name
            digest.update(target.read_bytes() if target.is_file() else b"-")
        return f"detector:{digest.hexdigest()[:16]}"

    def prepare(self) -> None:
        """Load the detector (once)."""
        if self._detector is None:
            from finetune.detector import load_detector

            self._detector = load_detector(self.folder, device=self.device)

    def boxes(
        self,
        item: ItemRow,
        images: dict[int, Image.Image],
        hashes: dict[int, str],
        store: RunStore,
    ) -> list[Box]:
        """Proposals on every photo, each box carrying its photo's image index."""
        from finetune.detector import predict_boxes

        self.prepare()
        indices = sorted(images)
        found = predict_boxes(self._detector, [images[i] for i in indices])
        return [replace(box, image=indices[box.image]) for boxes in found for box in boxes]

    def close(self) -> None:
        """Drop the model."""
        self._detector = None


# ---------------------------------------------------------------------------- the run


@dataclass
class PredictSummary:
    """What a predict run did: items, failures, where things went, time per stage."""

    out: Path
    workdir: Path
    items: int = 0  # records written (predictions and errors)
    predicted: int = 0
    failed: int = 0
    resumed: int = 0  # predictions of an earlier run, not asked again
    failures: list[dict[str, Any]] = field(default_factory=list)
    # Warnings and notes of the written records by cause -> item ids (for the console).
    warnings: dict[str, list[str]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    stats_file: Path | None = None


@dataclass
class _Prepared:
    """One item ready for the student: its example and the record so far."""

    item: ItemRow
    example: Example
    record: dict[str, Any]
    seconds: dict[str, float]


ANSWER_SHOWN_CHARS = 2000  # of a failed answer, in its error record


def _shortened(text: str) -> str:
    """An answer for an error record: a runaway one cut to its start, saying how long it was."""
    if len(text) <= ANSWER_SHOWN_CHARS:
        return text
    return f"{text[:ANSWER_SHOWN_CHARS]}... [{len(text)} characters in all]"


class _Failed(Exception):
    """An item failed at a stage; the message says why."""

    def __init__(self, stage: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.stage = stage
        self.extra = extra


def default_workdir(out: Path) -> Path:
    """The work folder beside --out: preds.jsonl -> preds.work/."""
    out = Path(out)
    return out.with_name(f"{out.stem}.work" if out.suffix else f"{out.name}.work")


def _sha(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def backend_key(backend: Any) -> dict[str, Any]:
    """What identifies a student backend's answers (weights, endpoint, answer length)."""
    key: dict[str, Any] = {"kind": backend.kind, "name": backend.name}
    for attr in ("model", "adapter", "max_new_tokens"):
        if getattr(backend, attr, None) is not None:
            key[attr] = str(getattr(backend, attr))
    config = getattr(backend, "config", None)
    if config is not None:
        key["endpoint"] = [
            getattr(config, name, None)
            for name in (
                "base_url",
                "model",
                "max_tokens",
                "temperature",
                "image_format",
                "jpeg_quality",
            )
        ]
    return key


class Predictor:
    """One predict run over a work folder's store: boxes -> crops -> example -> student."""

    def __init__(
        self,
        bundle: Bundle,
        store: RunStore,
        backend: AnswerBackend,
        box_source: BoxSource,
    ) -> None:
        self.bundle = bundle
        self.store = store
        self.backend = backend
        self.box_source = box_source if bundle.uses_crops else NoBoxes()
        if bundle.uses_crops is False and not isinstance(box_source, NoBoxes):
            logger.info(
                "the student was trained without crops (strategy %s%s): no boxes are made",
                bundle.dataset.strategy,
                "" if bundle.crop else ", no crop stage",
            )
        manifest_hash = _sha(bundle.manifest.model_dump(mode="json", by_alias=True))
        self.setup = _sha(manifest_hash, backend_key(backend), self.box_source.key())
        self.boxes_setup = _sha(manifest_hash, self.box_source.key())
        self.crop_hash = bundle.crop.config_hash() if bundle.crop is not None else None

    def item_key(self, item_id: str) -> str:
        """The key of an item's prediction: the setup and the item as ingested."""
        return _sha("predict", self.setup, self.store.item_fingerprint(item_id))

    def boxes_key(self, item_id: str) -> str:
        """The key of an item's boxes: the box source and the item as ingested."""
        return _sha("boxes", self.boxes_setup, self.store.item_fingerprint(item_id))

    def finished(self, item_id: str) -> dict[str, Any] | None:
        """The record of an item predicted under this setup already, or None."""
        key = self.item_key(item_id)
        if not self.store.has_result(item_id, key):
            return None
        cached = self.store.cached_response(key)
        return (cached or {}).get("usage", {}).get("record")

    def prepare_item(self, item: ItemRow) -> _Prepared:
        """Decode, box, crop and build the example of one item (raises _Failed)."""
        seconds = dict.fromkeys(STAGES, 0.0)
        rows = [r for r in self.store.images(item.item_id) if r.usable]
        warnings = [
            f"image {r.index}: {r.error}" for r in self.store.images(item.item_id) if not r.usable
        ]
        # What ingest changed about the photos (EXIF turned, CMYK converted, ...).
        warnings += [e["message"] for e in self.store.warnings(item.item_id, stage=INGEST_STAGE)]
        clock = time.perf_counter()
        images: dict[int, Image.Image] = {}
        for row in rows:
            try:
                images[row.index] = load_ingested_image(row)
            except ImageChangedError as exc:
                raise _Failed(
                    "decode",
                    f"image {row.index} ({row.uri}) changed since it was ingested into "
                    f"{self.store.run_dir}; predict into a new --workdir",
                ) from exc
            except ImageLoadError as exc:
                raise _Failed("decode", f"image {row.index}: {exc}") from exc
        seconds["decode"] = time.perf_counter() - clock

        clock = time.perf_counter()
        boxes = self._boxes(item, images, {r.index: r.sha256 or "" for r in rows})
        seconds["boxes"] = time.perf_counter() - clock
        # What the box source clipped or dropped (in the store's events) belongs in the record.
        warnings += sorted(
            {
                f"boxes: {event['message']}"
                for event in self.store.warnings(item.item_id, stage=PREDICT_STAGE)
                if event.get("teacher") == self.box_source.name
            }
        )

        clock = time.perf_counter()
        if self.crop_hash is not None:
            assert self.bundle.crop is not None
            cut = crop_item(self.store, item.item_id, self.bundle.crop, images)
            if cut.errors:
                raise _Failed("crop", "; ".join(cut.errors))
        try:
            example_images, prompt = item_example(
                self.store, item, self.bundle.schema, self.bundle.dataset, self.crop_hash, images
            )
        except ImageLoadError as exc:
            raise _Failed("crop", str(exc)) from exc
        seconds["crop"] = time.perf_counter() - clock
        messages = example_row(example_images, prompt, "")["prompt"]
        record: dict[str, Any] = {
            "item_id": item.item_id,
            "attributes": None,
            "boxes": [box.to_dict() for box in boxes],
            "box_source": self.box_source.name,
            "images": len(example_images),
            "image_tokens": len(example_images) * self.bundle.image_tokens
            if self.bundle.image_tokens
            else None,
        }
        if warnings:
            record["warnings"] = warnings
        return _Prepared(item, (example_images, messages), record, seconds)

    def _boxes(
        self, item: ItemRow, images: dict[int, Image.Image], hashes: dict[int, str]
    ) -> list[Box]:
        """The item's boxes: stored ones when this box source made them, else new ones."""
        key = self.boxes_key(item.item_id)
        source = self.box_source.name
        if self.store.has_result(item.item_id, key):
            return [box for _, box in self.store.boxes(item.item_id) if box.source == source]
        # New boxes: crops cut from any earlier ones (another source, a changed photo) go.
        self.store.forget_crops(item.item_id)
        for old in {box.source for _, box in self.store.boxes(item.item_id)}:
            self.store.set_boxes(item.item_id, old, [])
        try:
            boxes = self.box_source.boxes(item, images, hashes, self.store)
        except CroptuneError:
            raise  # the source itself is unusable (a bad key): no item can succeed
        except Exception as exc:  # the item isolation boundary: the others go on
            logger.debug("item %s: boxes failed", item.item_id, exc_info=True)
            raise _Failed("boxes", f"{type(exc).__name__}: {exc}") from exc
        text = json.dumps([box.to_dict() for box in boxes])
        self.store.record_answer(
            key, source, source, item.item_id, None, text, {"boxes": len(boxes)}, boxes=boxes
        )
        return boxes

    def generate(self, prepared: list[_Prepared]) -> list[GeneratedAnswer]:
        """The student's answers, one per item; an item that breaks generation alone fails."""
        examples = [p.example for p in prepared]
        try:
            return self.backend.answer(examples, progress=False)
        except CroptuneError:
            raise
        except Exception as exc:  # the item isolation boundary: find the item, spare the rest
            if len(examples) == 1:
                logger.debug("generation failed", exc_info=True)
                return [GeneratedAnswer(text="", error=f"{type(exc).__name__}: {exc}")]
        return [answer for p in prepared for answer in self.generate([p])]

    def finish(self, prepared: _Prepared, answer: GeneratedAnswer) -> dict[str, Any]:
        """Parse and validate the answer; store and return the item's record."""
        from finetune.evaluate import parse_answer_or_reason

        item_id = prepared.item.item_id
        record = prepared.record
        if answer.error:
            raise _Failed("generate", answer.error)
        value, valid, reason = parse_answer_or_reason(answer.text)
        if not isinstance(value, dict):
            raise _Failed(
                "parse",
                reason or "the answer is not a JSON object of attribute groups",
                answer=_shortened(answer.text),
                **({"stopped": answer.stopped} if answer.stopped else {}),
            )
        attributes, notes = self.bundle.schema.clean(value)
        if answer.stopped:
            notes = [f"generation stopped: {answer.stopped}", *notes]
            record["stopped"] = answer.stopped
        record["attributes"] = attributes
        record["json_valid"] = valid
        if notes:
            record["notes"] = notes
        record["seconds"] = {k: round(v, 4) for k, v in prepared.seconds.items()}
        self.store.record_answer(
            self.item_key(item_id), PREDICTOR, self.backend.name, item_id, None, answer.text,
            {"record": record}, labels=attributes,
        )  # fmt: skip
        return record

    def fail(self, item_id: str, failure: _Failed) -> dict[str, Any]:
        """The item's error record (stored as a failure: the next run tries it again)."""
        record = {"item_id": item_id, "error": str(failure), "stage": failure.stage}
        record.update(failure.extra)
        self.store.record_failure(
            self.item_key(item_id), PREDICTOR, self.backend.name, item_id, None, str(failure)
        )
        self.store.log_event("predict", f"{failure.stage}: {failure}", item_id=item_id)
        return record


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
) -> PredictSummary:
    """Predict every item of a catalog with a bundle's student; write one JSON line per item.

    A failing item gets an error record ({"item_id", "error", "stage"}) and the rest go on.
    The work folder (default: beside `out`) is a run store: a re-run skips finished items.
    on_record is called with each new record once it is stored. columns: croptune field ->
    the catalog's own column name (as `catalog validate --column`).
    """
    from toolkit.catalog import ingest_catalog, load_catalog

    out = Path(out)
    workdir = Path(workdir) if workdir is not None else default_workdir(out)
    box_source = box_source or NoBoxes()
    summary = PredictSummary(out=out, workdir=workdir)
    started = time.perf_counter()
    catalog = load_catalog(catalog_path, allow_outside=allow_outside, columns=columns)
    seconds: dict[str, float] = dict.fromkeys(("ingest", "load", *STAGES), 0.0)
    per_item: list[dict[str, Any]] = []
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
        records: dict[str, dict[str, Any]] = {}
        problems = _problem_records(catalog, scope, store, ingest.problems, records)

        predictor = Predictor(bundle, store, backend, box_source)
        todo: list[ItemRow] = []
        stored = {row.item_id: row for row in store.items()}
        for item in scope:
            if item.item_id in records:
                continue  # failed at ingest
            done = predictor.finished(item.item_id)
            if done is not None:
                records[item.item_id] = done
                summary.resumed += 1
            else:
                todo.append(stored[item.item_id])
        if summary.resumed:
            logger.info(
                "%d item(s) already predicted in %s: not asked again", summary.resumed, workdir
            )
        # This run's lines as the store's outcomes (None: not done yet), for `croptune report`.
        store.set_outcomes(
            PREDICT_STAGE,
            [(item.item_id, records.get(item.item_id)) for item in scope]
            + [(record["item_id"], record) for record in problems],
        )

        loop_seconds = 0.0
        if todo:
            clock = time.perf_counter()
            predictor.box_source.prepare()
            prepare = getattr(backend, "prepare", None)
            if prepare is not None:
                prepare()  # loading weights is not answering time
            seconds["load"] = time.perf_counter() - clock
            clock = time.perf_counter()
            try:
                _run_items(
                    predictor, todo, batch_size, progress, records, on_record, seconds, per_item
                )
            finally:
                predictor.box_source.close()
            loop_seconds = time.perf_counter() - clock

    ordered = [records[item.item_id] for item in scope if item.item_id in records] + problems
    with atomic_write(out) as handle:
        for record in ordered:
            handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
    summary.items = len(ordered)
    summary.failures = [r for r in ordered if "error" in r]
    summary.failed = len(summary.failures)
    summary.predicted = summary.items - summary.failed
    for record in ordered:  # the console's summary: no warning lives only in the files
        for note in record.get("warnings", []) + record.get("notes", []):
            summary.warnings.setdefault(cause_of(None, note), []).append(record["item_id"])
    summary.stats = _stats(summary, bundle, backend, predictor, seconds, per_item, loop_seconds)
    summary.stats["wall_seconds"] = round(time.perf_counter() - started, 3)
    summary.stats_file = workdir / STATS_FILE
    with atomic_write(summary.stats_file) as handle:
        handle.write(json.dumps(summary.stats, indent=2) + "\n")
    _log_stats(summary)
    return summary


def _run_items(
    predictor: Predictor,
    todo: list[ItemRow],
    batch_size: int,
    progress: bool,
    records: dict[str, dict[str, Any]],
    on_record: Callable[[dict[str, Any]], None] | None,
    seconds: dict[str, float],
    per_item: list[dict[str, Any]],
) -> None:
    """Prepare, answer and record the items, batch_size at a time (each item stored at once)."""
    from toolkit.progress import ProgressBar

    size = max(1, batch_size)
    with ProgressBar("predict", len(todo), progress) as bar:
        for start in range(0, len(todo), size):
            ready: list[_Prepared] = []
            for item in todo[start : start + size]:
                try:
                    ready.append(predictor.prepare_item(item))
                except _Failed as failure:
                    failed = predictor.fail(item.item_id, failure)
                    _emit(predictor.store, failed, records, on_record, bar)
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
                except (_Failed, ValueError, TypeError, KeyError, RecursionError) as exc:
                    # An answer no check foresaw fails its item alone; the others go on.
                    answer_failure = (
                        exc
                        if isinstance(exc, _Failed)
                        else _Failed("parse", f"{type(exc).__name__}: {exc}"[:500])
                    )
                    record = predictor.fail(prepared.item.item_id, answer_failure)
                    # what the student was shown, to look into a bad answer
                    record.update(boxes=prepared.record["boxes"], images=prepared.record["images"])
                for stage in STAGES:
                    seconds[stage] += prepared.seconds[stage]
                per_item.append(
                    {"images": prepared.record["images"], "boxes": len(prepared.record["boxes"]),
                     "seconds": prepared.seconds}
                )  # fmt: skip
                _emit(predictor.store, record, records, on_record, bar)


def _emit(
    store: RunStore,
    record: dict[str, Any],
    records: dict[str, dict[str, Any]],
    on_record: Callable[[dict[str, Any]], None] | None,
    bar: Any,
) -> None:
    records[record["item_id"]] = record
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


def _distribution(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "mean": round(statistics.fmean(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def _stats(
    summary: PredictSummary,
    bundle: Bundle,
    backend: Any,
    predictor: Predictor,
    seconds: dict[str, float],
    per_item: list[dict[str, Any]],
    loop_seconds: float,
) -> dict[str, Any]:
    """predict_stats.json: counts, items/s, time per stage (this run's items only)."""
    processed = len(per_item)
    images = [float(p["images"]) for p in per_item]
    return {
        "items": summary.items,
        "predicted": summary.predicted,
        "failed": summary.failed,
        "resumed": summary.resumed,
        "processed_this_run": processed,
        "student": backend.name,
        "student_kind": backend.kind,
        "box_source": predictor.box_source.name,
        "items_per_second": round(processed / loop_seconds, 4)
        if processed and loop_seconds
        else None,
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "seconds_per_item": {
            stage: _distribution([p["seconds"][stage] for p in per_item]) for stage in STAGES
        },
        "images_per_item": _distribution(images),
        "image_tokens_per_item": _distribution([n * bundle.image_tokens for n in images])
        if bundle.image_tokens
        else None,
        "boxes_per_item": _distribution([float(p["boxes"]) for p in per_item]),
    }


def _log_stats(summary: PredictSummary) -> None:
    stats = summary.stats
    per_stage = ", ".join(
        f"{stage} {d['mean'] * 1000:.0f} ms"
        for stage, d in stats["seconds_per_item"].items()
        if d is not None
    )
    logger.debug(
        "predict: %d item(s), %d predicted, %d failed, %d resumed; %s items/s; per item: %s",
        summary.items,
        summary.predicted,
        summary.failed,
        summary.resumed,
        stats["items_per_second"],
        per_stage or "n/a",
    )
