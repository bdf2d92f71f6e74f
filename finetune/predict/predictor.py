"""One item's way through predict: decode, box, crop, build the example, answer, record.

The keys of an item's prediction and boxes (what a resumed run finds again) are made here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from finetune.predict.box_sources import NoBoxes
from finetune.predict.bundle import Bundle
from toolkit.answers import Example, GeneratedAnswer
from toolkit.boxes import Box
from toolkit.catalog.ingest import read_ingested_image
from toolkit.crops import crop_item
from toolkit.dataset.rows import example_row, item_example
from toolkit.dataset.stored import source_file
from toolkit.errors import CroptuneError
from toolkit.images import ImageChangedError, ImageLoadError, mark_source
from toolkit.protocols import AnswerBackend, BoxSource, ItemPhotos
from toolkit.store import INGEST_STAGE, PREDICT_STAGE, ItemRow, RunStore

logger = logging.getLogger(__name__)

PREDICTOR = "predict"  # the store's teacher column for the student's answers
STAGES = ("decode", "boxes", "crop", "generate")


@dataclass
class PreparedItem:
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


class ItemFailed(Exception):
    """An item failed at a stage; the message says why."""

    def __init__(self, stage: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.stage = stage
        self.extra = extra


def manifest_hash(bundle: Bundle) -> str:
    """The SHA-256 of a bundle's manifest (part of every predict key)."""
    return _sha(bundle.manifest.model_dump(mode="json", by_alias=True))


def _sha(*parts: Any) -> str:
    """The SHA-256 of parts as canonical JSON."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class ItemPreparer:
    """An item's way to its example over a run store: decode, boxes, crops, example.

    What predict does before the student answers, on any store that holds the item: the
    work folder's own, or (predict on Ray) a scratch store a worker fills with one item's
    rows (finetune.predict.on_ray).
    """

    def __init__(self, bundle: Bundle, store: RunStore, box_source: BoxSource) -> None:
        self.bundle = bundle
        self.store = store
        self.box_source = box_source if bundle.uses_crops else NoBoxes()
        self.boxes_setup = _sha(manifest_hash(bundle), self.box_source.key())
        self.crop_hash = bundle.crop.config_hash() if bundle.crop is not None else None

    def boxes_key(self, item_id: str) -> str:
        """The key of an item's boxes: the box source and the item as ingested."""
        return _sha("boxes", self.boxes_setup, self.store.item_fingerprint(item_id))

    def prepare_item(self, item: ItemRow) -> PreparedItem:
        """Decode, box, crop and build the example of one item (raises ItemFailed)."""
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
                data, image = read_ingested_image(row)
                assert image is not None  # decoded (decode=True)
                # An unchanged upright RGB file is sent as its own bytes (the dataset stores
                # those), not re-encoded: an endpoint then decodes exactly these pixels.
                source = source_file(data, row.sha256) if row.sha256 else None
                images[row.index] = mark_source(image, source) if source else image
            except ImageChangedError as exc:
                raise ItemFailed(
                    "decode",
                    f"image {row.index} ({row.uri}) changed since it was ingested into "
                    f"{self.store.run_dir}; predict into a new --workdir",
                ) from exc
            except ImageLoadError as exc:
                raise ItemFailed("decode", f"image {row.index}: {exc}") from exc
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
                raise ItemFailed("crop", "; ".join(cut.errors))
        try:
            example_images, prompt = item_example(
                self.store, item, self.bundle.schema, self.bundle.dataset, self.crop_hash, images
            )
        except ImageLoadError as exc:
            raise ItemFailed("crop", str(exc)) from exc
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
        return PreparedItem(item, (example_images, messages), record, seconds)

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
            boxes = self.box_source.boxes(ItemPhotos(item, images, hashes, self.store))
        except CroptuneError:
            raise  # the source itself is unusable (a bad key): no item can succeed
        except Exception as exc:  # the item isolation boundary: the others go on
            logger.debug("item %s: boxes failed", item.item_id, exc_info=True)
            raise ItemFailed("boxes", f"{type(exc).__name__}: {exc}") from exc
        text = json.dumps([box.to_dict() for box in boxes])
        self.store.record_answer(
            key, source, source, item.item_id, None, text, {"boxes": len(boxes)}, boxes=boxes
        )
        return boxes


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
        self.preparer = ItemPreparer(bundle, store, box_source)
        self.box_source = self.preparer.box_source
        if bundle.uses_crops is False and not isinstance(box_source, NoBoxes):
            logger.info(
                "the student was trained without crops (strategy %s%s): no boxes are made",
                bundle.dataset.strategy,
                "" if bundle.crop else ", no crop stage",
            )
        self.setup = _sha(manifest_hash(bundle), backend.identity(), self.box_source.key())

    def item_key(self, item_id: str) -> str:
        """The key of an item's prediction: the setup and the item as ingested."""
        return _sha("predict", self.setup, self.store.item_fingerprint(item_id))

    def finished(self, item_id: str) -> dict[str, Any] | None:
        """The record of an item predicted under this setup already, or None."""
        key = self.item_key(item_id)
        if not self.store.has_result(item_id, key):
            return None
        cached = self.store.cached_response(key)
        return (cached or {}).get("usage", {}).get("record")

    def prepare_item(self, item: ItemRow) -> PreparedItem:
        """Decode, box, crop and build the example of one item (raises ItemFailed)."""
        return self.preparer.prepare_item(item)

    def generate(self, prepared: list[PreparedItem]) -> list[GeneratedAnswer]:
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

    def finish(self, prepared: PreparedItem, answer: GeneratedAnswer) -> dict[str, Any]:
        """Parse and validate the answer; store and return the item's record."""
        from finetune.evaluate.parse import parse_answer_or_reason

        item_id = prepared.item.item_id
        record = prepared.record
        if answer.error:
            raise ItemFailed("generate", answer.error)
        value, valid, reason = parse_answer_or_reason(answer.text)
        if not isinstance(value, dict):
            raise ItemFailed(
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

    def fail(self, item_id: str, failure: ItemFailed) -> dict[str, Any]:
        """The item's error record (stored as a failure: the next run tries it again)."""
        record = {"item_id": item_id, "error": str(failure), "stage": failure.stage}
        record.update(failure.extra)
        self.store.record_failure(
            self.item_key(item_id), PREDICTOR, self.backend.name, item_id, None, str(failure)
        )
        self.store.log_event("predict", f"{failure.stage}: {failure}", item_id=item_id)
        return record
