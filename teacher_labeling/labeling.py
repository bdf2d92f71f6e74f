"""The label stage: ask every teacher about every item, store each answer as it arrives."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from PIL import Image

from teacher_labeling.conventions import sent_size
from teacher_labeling.parse import AnswerParseError, parse_attributes, parse_boxes
from teacher_labeling.teachers import Teacher, TeacherAnswer, TeacherError, TeacherRequest
from toolkit.boxes import clean_boxes
from toolkit.images import ImageLoadError, load_image
from toolkit.progress import track
from toolkit.store import ImageRow, ItemRow, RunStore

logger = logging.getLogger(__name__)


@dataclass
class LabelSummary:
    """Counts of one label run: requests asked, answered from the cache, failed."""

    items: int = 0
    asked: int = 0
    cached: int = 0
    failed: int = 0
    labels: int = 0
    boxes: int = 0
    errors: list[str] = field(default_factory=list)


def label_items(
    store: RunStore, teachers: list[Teacher], limit: int | None = None, progress: bool = False
) -> LabelSummary:
    """Label the store's items with every teacher; finished requests are never asked again."""
    summary = LabelSummary()
    for item in track(store.items(limit=limit), "label", progress):
        summary.items += 1
        images = _load_images(store, item, store.images(item.item_id), summary)
        if not images:
            continue
        for teacher in teachers:
            if teacher.does_attributes:
                _label_attributes(store, teacher, item, images, summary)
            if teacher.does_boxes:
                for index, (image, image_hash) in images.items():
                    _label_boxes(store, teacher, item, index, image, image_hash, summary)
    return summary


def _load_images(
    store: RunStore, item: ItemRow, rows: list[ImageRow], summary: LabelSummary
) -> dict[int, tuple[Image.Image, str]]:
    """The item's usable images, decoded and checked against the pixels seen at ingest."""
    loaded = {}
    for row in rows:
        if not row.usable:
            continue
        try:
            image = load_image(row.uri)
        except ImageLoadError as exc:
            _error(store, summary, item.item_id, None, row.index, f"image {row.index}: {exc}")
            continue
        if image.sha256 != row.sha256:
            _error(
                store,
                summary,
                item.item_id,
                None,
                row.index,
                f"image {row.index} changed since ingest; run `croptune label` again to re-ingest",
            )
            continue
        loaded[row.index] = (image.image, image.sha256)
    return loaded


def _label_attributes(
    store: RunStore,
    teacher: Teacher,
    item: ItemRow,
    images: dict[int, tuple[Image.Image, str]],
    summary: LabelSummary,
) -> None:
    ordered = [images[i] for i in sorted(images)]
    request = teacher.attributes_request(item, [p for p, _ in ordered], [h for _, h in ordered])
    answer = _answer(store, teacher, item, request, summary)
    if answer is None:
        return
    text = answer.text
    try:
        attributes, notes = parse_attributes(text, teacher.schema)
    except AnswerParseError as exc:
        store.record_failure(
            request.cache_key, teacher.name, request.model, item.item_id, None, str(exc), text
        )
        _error(store, summary, item.item_id, teacher.name, None, f"attributes: {exc}")
        return
    for note in notes:
        store.log_event("label", note, "warning", item.item_id, teacher.name)
    store.record_answer(
        request.cache_key, teacher.name, request.model, item.item_id, None, text,
        answer.usage, labels=attributes,
    )  # fmt: skip
    summary.labels += 1


def _label_boxes(
    store: RunStore,
    teacher: Teacher,
    item: ItemRow,
    index: int,
    image: Image.Image,
    image_hash: str,
    summary: LabelSummary,
) -> None:
    config = teacher.config
    sent_wh = sent_size(config.coords, *image.size, config.min_pixels, config.max_pixels)
    sent = image if sent_wh == image.size else image.resize(sent_wh, Image.Resampling.BICUBIC)
    request = teacher.boxes_request(item, index, sent, image_hash, image.size)
    answer = _answer(store, teacher, item, request, summary)
    if answer is None:
        return
    text = answer.text
    try:
        boxes, notes = parse_boxes(text, index, config.coords, sent_wh, image.size)
    except AnswerParseError as exc:
        store.record_failure(
            request.cache_key, teacher.name, request.model, item.item_id, index, str(exc), text
        )
        _error(store, summary, item.item_id, teacher.name, index, f"boxes: {exc}")
        return
    boxes, problems = clean_boxes(boxes, {index: image.size})
    for note in notes + problems:
        store.log_event("label", note, "warning", item.item_id, teacher.name, index)
    ids = store.record_answer(
        request.cache_key, teacher.name, request.model, item.item_id, index, text,
        answer.usage, boxes=boxes,
    )  # fmt: skip
    summary.boxes += len(ids)


def _answer(
    store: RunStore, teacher: Teacher, item: ItemRow, request: TeacherRequest, summary: LabelSummary
) -> TeacherAnswer | None:
    """A fresh answer, or None when the request is finished already or failed now."""
    cached = store.cached_response(request.cache_key)
    if cached is not None:
        summary.cached += 1
        return None
    try:
        answer = teacher.answer(request, item)
    except TeacherError as exc:
        store.record_failure(
            request.cache_key, teacher.name, request.model, item.item_id, request.image, str(exc)
        )
        _error(store, summary, item.item_id, teacher.name, request.image, str(exc))
        return None
    summary.asked += 1
    return answer


def _error(
    store: RunStore,
    summary: LabelSummary,
    item_id: str,
    teacher: str | None,
    image: int | None,
    message: str,
) -> None:
    summary.failed += 1
    where = f"item {item_id}" + (f" ({teacher})" if teacher else "")
    summary.errors.append(f"{where}: {message}")
    store.log_event("label", message, "error", item_id, teacher, image)
    logger.warning("%s: %s", where, message)


@dataclass
class PendingRequests:
    """What a label run would send: requests per teacher not yet answered."""

    items: int = 0
    per_teacher: dict[str, int] = field(default_factory=dict)
    cached: int = 0


def pending_requests(
    store: RunStore, teachers: list[Teacher], limit: int | None = None
) -> PendingRequests:
    """Count the requests a label run would send, without sending any (for --dry-run)."""
    pending = PendingRequests()
    for item in store.items(limit=limit):
        pending.items += 1
        rows = [r for r in store.images(item.item_id) if r.usable]
        hashes = [r.sha256 or "" for r in rows]
        for teacher in teachers:
            requests: list[TeacherRequest] = []
            if teacher.does_attributes and rows:
                requests.append(teacher.attributes_request(item, [], hashes))
            if teacher.does_boxes:
                # The key holds the original's hash, so no pixels are needed to count.
                requests += [
                    teacher.boxes_request(item, r.index, None, r.sha256 or "")  # type: ignore[arg-type]
                    for r in rows
                ]
            for request in requests:
                if store.cached_response(request.cache_key) is None:
                    pending.per_teacher[teacher.name] = pending.per_teacher.get(teacher.name, 0) + 1
                else:
                    pending.cached += 1
    return pending
