"""The review page of a run (`croptune report`): one self-contained HTML file.

Every item gets a section with its photos (boxes drawn into the pixels with supervision,
one colour per box teacher), its crops, each teacher's attributes next to the final ones,
its errors and its warnings. Filters and pagination are a small inline script; images are
embedded as ``data:`` URIs, so the page makes no request at all (its Content-Security-Policy
forbids any, and only the page's own script, by nonce, may run).

Listing text (ids, titles, categories, labels, answers) is untrusted: the template is
rendered with autoescape on and never marks catalog text safe.

Two kinds of run folder:

- a labeled run (`croptune label`): the items in the store, plus a section for every item
  the store holds errors of but not the item itself (refused by the catalog, or no photo
  could be used: nothing of it reached the run);
- a predict work folder (`croptune predict`): one section per line of the latest predict
  run's output, in its order, read from the store's ``outcomes`` (catalog rows that did not
  load included); the attributes are that run's prediction, and each item says whether
  the answer was valid JSON, why it failed, what was noted, and what the student saw.

Flags of an item (``data-flags``), the rule each follows:

- ``failed``: (labeled run) the store holds an error event of the item from any stage but
  ingest that no later answer settled (``RunStore.open_errors``: the same teacher answered
  the item and image after it failed), or the item never reached the store; an ingest error of a stored item (one photo
  or box left out) is listed as a warning instead. (predict) its line is an error record.
- ``disagree``: (labeled run) two or more teachers labeled the item and some field's
  normalised value (``toolkit.metrics.normalise``; lists as sets) differs between them,
  a field one teacher gives and another leaves out counting as a difference; or (boxes)
  two or more box teachers (the ``fused`` source left out) boxed the item and, on some
  image, a box of one teacher has no box of another teacher with IoU >= 0.5.
- ``no-label``: (labeled run) the item has no final attributes.
- ``photos``: the item has no photo in the run, or one of its photos was unusable at
  ingest, or its local file is gone or changed since.
- ``warned``: the store holds warnings of the item (a value clipped, moved, mapped or
  dropped), or (predict) its record has notes or warnings.
- ``repaired`` (predict): predicted from an answer that was not valid JSON as written.
- ``stopped`` (predict): generation was stopped (a runaway repetition).
- ``pending`` (predict): the latest run stopped before it finished this item.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from toolkit.boxes import Box
from toolkit.crops import FUSED_SOURCE
from toolkit.files import atomic_write
from toolkit.metrics import normalise
from toolkit.store import INGEST_STAGE, PREDICT_STAGE, CropRow, ImageRow, ItemRow, RunStore

if TYPE_CHECKING:
    from PIL import Image

# Box teachers get these colours in the order of their sorted names (so a teacher has the
# same colour on every item of a report); past eight teachers the colours repeat.
TEACHER_COLOURS = (
    "#1f77b4",  # blue
    "#ff7f0e",  # orange
    "#2ca02c",  # green
    "#9467bd",  # purple
    "#17becf",  # cyan
    "#8c564b",  # brown
    "#bcbd22",  # olive
    "#7f7f7f",  # grey
)
FUSED_COLOUR = "#ff00ff"  # magenta, drawn thicker and underneath the teachers' boxes
BOX_AGREE_IOU = 0.5
JPEG_QUALITY = 85
TEMPLATE = "report.html.j2"

# What an item's badge says for each flag.
FLAG_NAMES = {
    "failed": "failed",
    "disagree": "disagree",
    "no-label": "no label",
    "photos": "photo problem",
    "warned": "warnings",  # "notes" on a predict page
    "repaired": "repaired JSON",
    "stopped": "generation stopped",
    "pending": "not predicted yet",
}
# The filters of each kind of run, in the order shown: (flag, what the checkbox says).
LABEL_FILTERS = (
    ("failed", "Failures"),
    ("disagree", "Disagreements"),
    ("no-label", "Without labels"),
    ("photos", "Photo problems"),
    ("warned", "With warnings"),
)
PREDICT_FILTERS = (
    ("failed", "Failures"),
    ("repaired", "Repaired JSON"),
    ("stopped", "Stopped generation"),
    ("photos", "Photo problems"),
    ("warned", "With notes"),
    ("pending", "Not predicted yet"),
)

_T = TypeVar("_T")
_R = TypeVar("_R")


# Item sections one page holds at most: each carries its photos and crops as data: URIs
# (~0.3 MB an item at the default thumbnail size), so a page of a huge run would be more
# than a browser opens. The header's figures still count every item.
DEFAULT_MAX_ITEMS = 2000


def write_report(
    store: RunStore,
    out: Path,
    page_size: int = 50,
    thumb_side: int = 480,
    max_items: int | None = None,
) -> Path:
    """Write the run's review page (one self-contained HTML file) and return its path.

    Sections go to the page for the first max_items items (default DEFAULT_MAX_ITEMS; a
    notice says how many of how many); the header's figures count them all. Only those
    sections' store rows are held, and the pixels of a few items at a time.
    """
    from jinja2 import Environment, PackageLoader, StrictUndefined

    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, not {page_size}")
    if thumb_side < 16:
        raise ValueError(f"thumb_side must be at least 16 pixels, not {thumb_side}")
    max_items = DEFAULT_MAX_ITEMS if max_items is None else max_items
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, not {max_items}")
    out = Path(out)
    crop_hash = store.get_meta("crop_config_hash")
    # First pass, store rows only (cheap): flags and counts are known before any image is
    # decoded, so the header can be written first and the items streamed after it. The
    # pass walks every item for the figures and keeps the sections shown.
    predict = store.count_outcomes(PREDICT_STAGE) > 0
    kind = "predict" if predict else "label"
    notices = []
    if predict:
        sections = _predict_items(store, page_size, crop_hash)
        earlier = store.count_items_without_outcome(PREDICT_STAGE)
        if earlier:
            notices.append(
                f"{earlier} item(s) of earlier predict runs in this work folder are not in the "
                "latest run and are not shown"
            )
    else:
        sections = _label_items(store, page_size, crop_hash)
        if store.get_meta("bundle"):
            notices.append(
                "this predict work folder holds no record of its predictions (written by an "
                "older croptune): run `croptune predict` again to review them"
            )
    tally = _Tally()
    items: list[_Item] = []
    for it in sections:
        tally.add(it)
        if len(items) < max_items:
            items.append(it)
    if tally.items > len(items):
        notices.append(
            f"the first {len(items)} of {tally.items} items are shown (the figures above count "
            f"all {tally.items}; the filters, the {len(items)} shown); `croptune report "
            "--max-items N` shows more, in a larger file"
        )
    sources = sorted(set(tally.by_source) - {FUSED_SOURCE})
    colours = {s: TEACHER_COLOURS[i % len(TEACHER_COLOURS)] for i, s in enumerate(sources)}
    if FUSED_SOURCE in tally.by_source:
        colours[FUSED_SOURCE] = FUSED_COLOUR
    categories: dict[str, int] = {}
    for it in items:
        categories[it.category] = categories.get(it.category, 0) + 1
    filters = PREDICT_FILTERS if kind == "predict" else LABEL_FILTERS
    flag_counts = {flag: sum(flag in it.flags for it in items) for flag, _ in filters}
    run_errors: list[dict[str, Any]] = []
    if not predict:
        listed = store.run_errors()
        run_errors = list(islice(listed, max_items))
        more = sum(1 for _ in listed)
        if more:
            notices.append(
                f"the first {len(run_errors)} of {len(run_errors) + more} run-level errors are "
                "listed"
            )

    env = Environment(
        loader=PackageLoader("toolkit", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    renderer = _Renderer(store.run_dir, colours, thumb_side)
    context = {
        "run_name": store.run_dir.name,
        "kind": kind,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "crop_hash": crop_hash,
        "nonce": secrets.token_urlsafe(16),
        "page_size": page_size,
        "pages": max(1, -(-len(items) // page_size)),
        "total": len(items),
        "counts": _counts(kind, tally),
        "filters": [
            {"flag": flag, "label": label, "count": flag_counts[flag]} for flag, label in filters
        ],
        "categories": [
            {"value": c, "label": c or "(no category)", "count": n}
            for c, n in sorted(categories.items())
        ],
        "legend": [
            {"name": s, "colour": c, "fused": s == FUSED_SOURCE} for s, c in colours.items()
        ],
        "notices": notices,
        "flag_names": {**FLAG_NAMES, "warned": "notes"} if kind == "predict" else FLAG_NAMES,
        "run_errors": run_errors,
        "items": _ordered_map(renderer.render, items, workers=min(8, os.cpu_count() or 1)),
    }
    with atomic_write(out) as handle:
        for chunk in env.get_template(TEMPLATE).generate(**context):
            handle.write(chunk)
    return out


@dataclass
class _Item:
    """One section's store rows and what the page derives from them (no pixels yet)."""

    item_id: str | None  # None: a catalog row that had no usable id
    item: ItemRow | None  # None: nothing of the item reached the store
    position: int
    page: int
    images: list[ImageRow] = field(default_factory=list)
    photo_problems: dict[int, str] = field(default_factory=dict)  # image index -> why
    boxes: list[Box] = field(default_factory=list)
    crops: list[CropRow] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    teachers: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    has_final: bool = False
    outcome: dict[str, Any] | None = None  # predict: what the item's line says
    where: str | None = None  # a catalog row without an id: where it is ("line 9")
    flags: list[str] = field(default_factory=list)

    @property
    def category(self) -> str:
        """The item's category, "" when it has none (or is not in the store)."""
        return (self.item.category if self.item else None) or ""


def _event_text(event: dict[str, Any]) -> str:
    """One store event as a line: stage · teacher · image N: message."""
    parts = [event["stage"]]
    if event.get("teacher"):
        parts.append(event["teacher"])
    if event.get("image") is not None:
        parts.append(f"image {event['image']}")
    return f"{' · '.join(parts)}: {event['message']}"


def _photo_problems(images: list[ImageRow]) -> dict[int, str]:
    """Why each of an item's photos cannot be used now (cheap: decoded only if its file changed)."""
    from toolkit.catalog import load_ingested_image
    from toolkit.images import ImageLoadError, file_stat, is_url

    problems: dict[int, str] = {}
    for row in images:
        if not row.usable:
            problems[row.index] = row.error or "not usable"
            continue
        if is_url(row.uri):
            continue  # a download is tried when the page draws it
        stat = file_stat(row.uri)
        if stat is None:
            problems[row.index] = "file not found (it was there at ingest)"
        elif stat != row.file_stat:
            try:
                load_ingested_image(row)
            except (ImageLoadError, OSError, ValueError) as exc:
                problems[row.index] = str(exc) or type(exc).__name__
    return problems


def _label_items(store: RunStore, page_size: int, crop_hash: str | None) -> Iterator[_Item]:
    """A labeled run's sections: stored items, then items only the store's errors name."""
    position = -1  # the absent items' sections follow the stored items'
    for position, row in enumerate(store.items()):
        labels = store.labels(row.item_id)
        final = store.final_attributes(row.item_id)
        boxes = [b for _, b in store.boxes(row.item_id)]
        rows, attributes_differ = attribute_rows(labels, final)
        errors: list[dict[str, Any]] = []
        warnings: list[dict[str, Any]] = []
        for event in store.open_errors(row.item_id):  # a re-run that worked settles one
            # An ingest error of a stored item left one photo or box out, not the item.
            (warnings if event["stage"] == INGEST_STAGE else errors).append(event)
        warnings += store.warnings(row.item_id)
        images = store.images(row.item_id)
        it = _Item(
            item_id=row.item_id,
            item=row,
            position=position,
            page=position // page_size,
            images=images,
            photo_problems=_photo_problems(images),
            boxes=boxes,
            crops=store.crops(row.item_id, crop_hash) if crop_hash else store.crops(row.item_id),
            errors=errors,
            warnings=_unique(_event_text(e) for e in warnings),
            teachers=list(labels),
            rows=rows,
            has_final=final is not None,
        )
        it.flags = [
            flag
            for flag, on in (
                ("failed", bool(errors)),
                ("disagree", attributes_differ or boxes_disagree(boxes)),
                ("no-label", final is None),
                ("photos", bool(it.photo_problems) or not images),
                ("warned", bool(it.warnings)),
            )
            if on
        ]
        yield it
    for item_id in store.unstored_error_items():
        position += 1
        yield _Item(
            item_id=item_id,
            item=None,
            position=position,
            page=position // page_size,
            errors=store.errors(item_id),
            flags=["failed", "no-label", "photos"],
        )


def _predict_items(store: RunStore, page_size: int, crop_hash: str | None) -> Iterator[_Item]:
    """A predict work folder's sections: one per line of the latest run, in its order."""
    for position, line in enumerate(store.outcomes(PREDICT_STAGE)):
        item_id, record = line.item_id, line.record
        # A second line of one id is a duplicate catalog row: it has nothing of the item.
        duplicate = line.repeated
        row = store.item(item_id) if item_id is not None and not duplicate else None
        it = _Item(item_id=item_id, item=row, position=position, page=position // page_size)
        outcome = _outcome(record)
        it.outcome = outcome
        if row is not None:
            it.images = store.images(row.item_id)
            it.photo_problems = _photo_problems(it.images)
            # Boxes and crops only where this run got to them: older ones may be in the store.
            if record is not None and "boxes" in record:
                it.boxes = [_box(b) for b in record["boxes"]]
                it.crops = (
                    store.crops(row.item_id, crop_hash) if crop_hash else store.crops(row.item_id)
                )
                source = record.get("box_source")
                it.warnings += [
                    _event_text(e)
                    for e in store.warnings(row.item_id, PREDICT_STAGE)
                    if e["teacher"] == source
                ]
        if record is not None:
            it.where = record.get("where")
            it.warnings = _unique([*record.get("warnings", []), *it.warnings])
            if "error" in record:
                it.errors = [
                    {"stage": record.get("stage") or "?", "teacher": None, "image": None,
                     "message": record["error"]}
                ]  # fmt: skip
            attributes = record.get("attributes")
            if attributes is not None:
                it.rows, _ = attribute_rows({}, attributes)
                it.has_final = True
        it.flags = [
            flag
            for flag, on in (
                ("failed", outcome["status"] == "failed"),
                ("repaired", outcome["json"] == "repaired"),
                ("stopped", bool(outcome["stopped"])),
                # A row without an id, or a repeated id, is a catalog problem, not a photo one.
                (
                    "photos",
                    bool(it.photo_problems)
                    or (not it.images and item_id is not None and not duplicate),
                ),
                ("warned", bool(it.warnings or outcome["notes"])),
                ("pending", outcome["status"] == "pending"),
            )
            if on
        ]
        yield it


def _outcome(record: dict[str, Any] | None) -> dict[str, Any]:
    """What an item's predict line says: status, JSON validity, the answer, notes."""
    if record is None:
        return {"status": "pending", "json": None, "stopped": None, "notes": [], "answer": None,
                "stage": None, "images": None, "image_tokens": None}  # fmt: skip
    failed = "error" in record
    stopped = record.get("stopped")
    if not failed:
        json_state = "valid" if record.get("json_valid", True) else "repaired"
    elif record.get("stage") == "parse":
        json_state = "unusable"
    else:
        json_state = None  # no answer to judge: it failed before or during generation
    return {
        "status": "failed" if failed else "predicted",
        "stage": record.get("stage") if failed else None,
        "json": json_state,
        "stopped": stopped,
        # The stop is shown on its own line; its note is not repeated.
        "notes": [n for n in record.get("notes", []) if n != f"generation stopped: {stopped}"],
        "answer": record.get("answer"),
        "images": record.get("images"),
        "image_tokens": record.get("image_tokens"),
    }


def _box(data: dict[str, Any]) -> Box:
    x1, y1, x2, y2 = data["xyxy"]
    return Box(
        int(data["image"]), x1, y1, x2, y2,
        label=data.get("label") or "", source=data.get("source") or "", score=data.get("score"),
    )  # fmt: skip


def _unique(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(texts))


@dataclass
class _Tally:
    """The header's figures, summed item by item over the whole run (no section kept)."""

    items: int = 0
    absent: int = 0  # sections of items that never reached the run
    photos: int = 0
    unusable: int = 0
    crops: int = 0
    duplicates: int = 0
    predicted: int = 0
    by_source: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # predict: failed stage -> items
    json_states: Counter[str | None] = field(default_factory=Counter)

    def add(self, it: _Item) -> None:
        """Count one section in."""
        self.items += 1
        self.absent += it.item is None
        self.photos += len(it.images)
        self.unusable += len(it.photo_problems)
        self.crops += len(it.crops)
        self.duplicates += sum(c.duplicate_of is not None for c in it.crops)
        self.by_source.update(b.source for b in it.boxes)
        self.flags.update(it.flags)
        if it.outcome is not None:
            self.predicted += it.outcome["status"] == "predicted"
            self.json_states[it.outcome["json"]] += 1
            if it.outcome["stage"]:
                self.failures[it.outcome["stage"]] += 1


def _counts(kind: str, tally: _Tally) -> list[dict[str, Any]]:
    """The header's figures: (number, what), each counting exactly what it says."""
    counts: list[dict[str, Any]] = []

    def add(number: int, what: str, detail: str = "") -> None:
        counts.append({"n": number, "what": what, "detail": detail})

    flags = tally.flags
    if kind == "predict":
        add(tally.items, "items", "the latest predict run's output lines")
        add(tally.predicted, "predicted")
        failures = tally.failures
        add(flags["failed"], "failed", ", ".join(f"{s} {n}" for s, n in sorted(failures.items())))
        if flags["pending"]:
            add(flags["pending"], "not predicted yet")
        add(tally.json_states["valid"], "valid JSON")
        add(tally.json_states["repaired"], "repaired JSON", "not valid as written")
        add(tally.json_states["unusable"], "unreadable answers", "no JSON object of attributes")
        add(flags["stopped"], "stopped generation")
        add(flags["warned"], "with notes")
    else:
        absent = tally.absent
        add(tally.items, "items", f"{absent} never reached the run" if absent else "")
        add(flags["failed"], "failed")
        add(flags["disagree"], "disagree")
        add(flags["no-label"], "without labels")
        add(flags["warned"], "with warnings")
    unusable = tally.unusable
    add(tally.photos - unusable, "usable photos", f"{unusable} not usable" if unusable else "")
    add(flags["photos"], "items with photo problems")
    by_source = tally.by_source
    add(
        sum(by_source.values()),
        "boxes",
        ", ".join(f"{s} {n}" for s, n in sorted(by_source.items())),
    )
    duplicates = tally.duplicates
    add(
        tally.crops - duplicates,
        "crops",
        f"{duplicates} duplicates, not used" if duplicates else "",
    )
    return counts


def attribute_rows(
    labels: dict[str, Any], final: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], bool]:
    """The attribute table (group.field -> value per teacher, then final) and whether teachers differ."""
    flat = {teacher: _flatten(attributes) for teacher, attributes in labels.items()}
    flat_final = _flatten(final)
    keys: list[str] = []
    for values in [*flat.values(), flat_final]:
        keys.extend(k for k in values if k not in keys)
    rows = []
    for key in keys:
        compared = {flat[t][key][1] if key in flat[t] else None for t in flat}
        rows.append(
            {
                "key": key,
                "values": [flat[t][key][0] if key in flat[t] else None for t in flat],
                "final": flat_final[key][0] if key in flat_final else None,
                "diff": len(flat) >= 2 and len(compared) > 1,
            }
        )
    return rows, any(r["diff"] for r in rows)


def _flatten(value: Any, prefix: str = "") -> dict[str, tuple[str, Any]]:
    """{dotted key: (display text, comparison key)} of an attributes object; empties dropped."""
    if isinstance(value, dict):
        flat: dict[str, tuple[str, Any]] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if value is None or value == "" or value == []:
        return {}
    group, _, name = prefix.partition(".")
    key = prefix or "(value)"
    if isinstance(value, list):
        texts = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value]
        return {key: (", ".join(texts), frozenset(normalise(t, group, name) for t in texts))}
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return {key: (text, normalise(text, group, name))}


def boxes_disagree(boxes: list[Box], iou_threshold: float = BOX_AGREE_IOU) -> bool:
    """Whether two box teachers differ: a box of one has no IoU>=threshold match in another's, per image."""
    by_source: dict[str, list[Box]] = {}
    for box in boxes:
        if box.source != FUSED_SOURCE:
            by_source.setdefault(box.source, []).append(box)
    if len(by_source) < 2:
        return False
    images = {b.image for b in boxes if b.source != FUSED_SOURCE}
    for a, a_boxes in by_source.items():
        for b, b_boxes in by_source.items():
            if a == b:
                continue
            for image in images:
                theirs = [x for x in b_boxes if x.image == image]
                for mine in (x for x in a_boxes if x.image == image):
                    if not any(_iou(mine, other) >= iou_threshold for other in theirs):
                        return True
    return False


def _iou(a: Box, b: Box) -> float:
    w = min(a.x2, b.x2) - max(a.x1, b.x1)
    h = min(a.y2, b.y2) - max(a.y1, b.y1)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


class _Renderer:
    """Turns an item's rows into the template's view of it: thumbnails drawn and encoded."""

    def __init__(self, run_dir: Path, colours: dict[str, str], thumb_side: int) -> None:
        self.run_dir = run_dir
        self.colours = colours
        self.palette = list(colours)  # class ids of the annotators: index in this list
        self.thumb_side = thumb_side
        self.crop_side = max(64, thumb_side // 2)
        self.thickness = max(2, round(thumb_side / 240))

    def render(self, it: _Item) -> dict[str, Any]:
        """The template's dict for one item."""
        indices = sorted({r.index for r in it.images} | {b.image for b in it.boxes})
        rows = {r.index: r for r in it.images}
        item = it.item
        return {
            "id": it.item_id,
            "where": it.where,
            "stored": item is not None,
            "title": item.title if item else None,
            "category": it.category,
            "text": item.text if item else None,
            "position": it.position,
            "page": it.page,
            "flags": it.flags,
            "teachers": it.teachers,
            "rows": it.rows,
            "has_final": it.has_final,
            "errors": it.errors,
            "warnings": it.warnings,
            "outcome": it.outcome,
            "figures": [
                self._figure(
                    i, rows.get(i), [b for b in it.boxes if b.image == i], it.photo_problems.get(i)
                )
                for i in indices
            ],
            "crops": [self._crop(c) for c in it.crops],
        }

    def _figure(
        self, index: int, row: ImageRow | None, boxes: list[Box], problem: str | None = None
    ) -> dict[str, Any]:
        from toolkit.catalog import load_ingested_image
        from toolkit.images import ImageLoadError

        figure: dict[str, Any] = {
            "index": index,
            "name": _display_name(row.uri) if row else None,
            "width": row.width if row else None,
            "height": row.height if row else None,
            "src": None,
            "error": None,
            "boxes": [self._box_view(b, row) for b in boxes],
        }
        if row is None:
            figure["error"] = "this image is not in the catalog item (boxes refer to it)"
        elif problem is not None:
            figure["error"] = problem  # found in the first pass: not decoded again
        else:
            try:
                image = load_ingested_image(row)
            except (ImageLoadError, OSError, ValueError) as exc:
                figure["error"] = str(exc) or type(exc).__name__
            else:
                thumb = self._draw(image, boxes)
                figure.update(src=_data_uri(thumb), thumb_w=thumb.width, thumb_h=thumb.height)
                figure.update(width=image.width, height=image.height)
        return figure

    def _box_view(self, box: Box, row: ImageRow | None) -> dict[str, Any]:
        view = {
            "image": box.image,
            "source": box.source,
            "label": box.label,
            "score": "" if box.score is None else f"{box.score:.2f}",
            "xyxy": ",".join(_num(v) for v in box.xyxy),
            "colour": self.colours.get(box.source, TEACHER_COLOURS[0]),
            "style": None,
        }
        if row is not None and row.width and row.height:
            w, h = row.width, row.height
            view["style"] = (
                f"left:{100 * box.x1 / w:.3f}%;top:{100 * box.y1 / h:.3f}%;"
                f"width:{100 * box.width / w:.3f}%;height:{100 * box.height / h:.3f}%"
            )
        return view

    def _draw(self, image: Image.Image, boxes: list[Box]) -> Image.Image:
        """A thumbnail of at most thumb_side with the boxes drawn on it at its own scale."""
        import numpy as np
        import supervision as sv

        thumb = _shrink(image, self.thumb_side)
        if not boxes:
            return thumb
        sx, sy = thumb.width / image.width, thumb.height / image.height
        palette = sv.ColorPalette([sv.Color.from_hex(self.colours[s]) for s in self.palette])

        def detections(selected: list[Box]) -> sv.Detections:
            xyxy = np.array(
                [
                    [
                        min(b.x1 * sx, thumb.width - 1),
                        min(b.y1 * sy, thumb.height - 1),
                        min(b.x2 * sx, thumb.width - 1),
                        min(b.y2 * sy, thumb.height - 1),
                    ]
                    for b in selected
                ],
                dtype=np.float32,
            ).reshape(-1, 4)
            class_id = np.array([self.palette.index(b.source) for b in selected], dtype=int)
            return sv.Detections(xyxy=xyxy, class_id=class_id)

        # Fused boxes first and thick, the teachers' on top and thin: both stay visible
        # where a fused box coincides with a teacher's.
        fused = [b for b in boxes if b.source == FUSED_SOURCE]
        teachers = [b for b in boxes if b.source != FUSED_SOURCE]
        if fused:
            annotator = sv.BoxAnnotator(color=palette, thickness=self.thickness * 2 + 1)
            thumb = annotator.annotate(thumb, detections(fused))
        if teachers:
            annotator = sv.BoxAnnotator(color=palette, thickness=self.thickness)
            thumb = annotator.annotate(thumb, detections(teachers))
        return thumb

    def _crop(self, crop: CropRow) -> dict[str, Any]:
        from toolkit.images import ImageLoadError, decode_image

        view: dict[str, Any] = {
            "image": crop.image,
            "region": ",".join(str(v) for v in crop.region),
            "size": f"{crop.region[2] - crop.region[0]}×{crop.region[3] - crop.region[1]}",
            "path": crop.path,
            # Set by the crop stage's pHash de-duplication: kept on disk, unused.
            "duplicate_of": crop.duplicate_of,
            "src": None,
            "error": None,
        }
        root = self.run_dir.resolve()
        path = (self.run_dir / crop.path).resolve()
        if not path.is_relative_to(root):
            view["error"] = "crop path is outside the run folder"
            return view
        try:
            thumb = _shrink(decode_image(path.read_bytes()), self.crop_side)
        except FileNotFoundError:
            view["error"] = "crop file is missing (run `croptune crop` again)"
        except (ImageLoadError, OSError, ValueError) as exc:
            view["error"] = str(exc) or type(exc).__name__
        else:
            view.update(src=_data_uri(thumb), thumb_w=thumb.width, thumb_h=thumb.height)
        return view


def _shrink(image: Image.Image, side: int) -> Image.Image:
    from PIL import Image

    scale = side / max(image.width, image.height)
    if scale >= 1:
        return image.copy()
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    # 4:4:4 chroma: the default 4:2:0 smears thin coloured box lines.
    image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _display_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


def _ordered_map(
    fn: Callable[[_T], _R], items: Iterable[_T], workers: int, window: int = 2
) -> Iterator[_R]:
    """fn over items in worker threads, results in order, at most workers*window in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="report") as pool:
        pending: deque[Future[_R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= workers * window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
