"""The review page of a run (`croptune report`): one self-contained HTML file.

Every item gets a section with its photos (boxes drawn into the pixels with supervision,
one colour per box teacher), its crops, each teacher's attributes next to the final ones,
and its errors. Filters and pagination are a small inline script; images are embedded as
``data:`` URIs, so the page makes no request at all (its Content-Security-Policy forbids
any, and only the page's own script, by nonce, may run).

Listing text (ids, titles, categories, labels, answers) is untrusted: the template is
rendered with autoescape on and never marks catalog text safe.

Flags of an item (``data-flags``), the rule each follows:

- ``failed``: the store holds at least one error event for the item.
- ``disagree``: (attributes) two or more teachers labeled the item and some field's
  normalised value (``toolkit.metrics.normalise``; lists as sets) differs between them,
  a field one teacher gives and another leaves out counting as a difference; or (boxes)
  two or more box teachers (the ``fused`` source left out) boxed the item and, on some
  image, a box of one teacher has no box of another teacher with IoU >= 0.5.
- ``no-label``: the item has no final attributes.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from toolkit.boxes import Box
from toolkit.crops import FUSED_SOURCE
from toolkit.files import atomic_write
from toolkit.metrics import normalise
from toolkit.store import CropRow, ImageRow, ItemRow, RunStore

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

_T = TypeVar("_T")
_R = TypeVar("_R")


def write_report(store: RunStore, out: Path, page_size: int = 50, thumb_side: int = 480) -> Path:
    """Write the run's review page (one self-contained HTML file) and return its path."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, not {page_size}")
    if thumb_side < 16:
        raise ValueError(f"thumb_side must be at least 16 pixels, not {thumb_side}")
    out = Path(out)
    crop_hash = store.get_meta("crop_config_hash")
    # First pass, store rows only (cheap): flags and counts are known before any image is
    # decoded, so the header can be written first and the items streamed after it.
    items = [
        _collect(store, item, position, page_size, crop_hash)
        for position, item in enumerate(store.items())
    ]
    sources = sorted({b.source for it in items for b in it.boxes if b.source != FUSED_SOURCE})
    colours = {s: TEACHER_COLOURS[i % len(TEACHER_COLOURS)] for i, s in enumerate(sources)}
    if any(b.source == FUSED_SOURCE for it in items for b in it.boxes):
        colours[FUSED_SOURCE] = FUSED_COLOUR
    categories: dict[str, int] = {}
    for it in items:
        categories[it.item.category or ""] = categories.get(it.item.category or "", 0) + 1

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
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "crop_hash": crop_hash,
        "nonce": secrets.token_urlsafe(16),
        "page_size": page_size,
        "pages": max(1, -(-len(items) // page_size)),
        "counts": {
            "items": len(items),
            "failed": sum("failed" in it.flags for it in items),
            "disagree": sum("disagree" in it.flags for it in items),
            "no-label": sum("no-label" in it.flags for it in items),
            "images": sum(len(it.images) for it in items),
            "boxes": sum(len(it.boxes) for it in items),
            "crops": sum(len(it.crops) for it in items),
        },
        "categories": [
            {"value": c, "label": c or "(no category)", "count": n}
            for c, n in sorted(categories.items())
        ],
        "legend": [
            {"name": s, "colour": c, "fused": s == FUSED_SOURCE} for s, c in colours.items()
        ],
        "run_errors": [e for e in store.errors() if e["item_id"] is None],
        "items": _ordered_map(renderer.render, items, workers=min(8, os.cpu_count() or 1)),
    }
    with atomic_write(out) as handle:
        for chunk in env.get_template(TEMPLATE).generate(**context):
            handle.write(chunk)
    return out


@dataclass
class _Item:
    """One item's store rows and what the page derives from them (no pixels yet)."""

    item: ItemRow
    position: int
    page: int
    images: list[ImageRow]
    boxes: list[Box]
    crops: list[CropRow]
    errors: list[dict[str, Any]]
    teachers: list[str]
    rows: list[dict[str, Any]]
    has_final: bool
    flags: list[str] = field(default_factory=list)


def _collect(
    store: RunStore, item: ItemRow, position: int, page_size: int, crop_hash: str | None
) -> _Item:
    labels = store.labels(item.item_id)
    final = store.final_attributes(item.item_id)
    boxes = [b for _, b in store.boxes(item.item_id)]
    rows, attributes_differ = attribute_rows(labels, final)
    errors = store.errors(item.item_id)
    flags = []
    if errors:
        flags.append("failed")
    if attributes_differ or boxes_disagree(boxes):
        flags.append("disagree")
    if final is None:
        flags.append("no-label")
    return _Item(
        item=item,
        position=position,
        page=position // page_size,
        images=store.images(item.item_id),
        boxes=boxes,
        crops=store.crops(item.item_id, crop_hash) if crop_hash else store.crops(item.item_id),
        errors=errors,
        teachers=list(labels),
        rows=rows,
        has_final=final is not None,
        flags=flags,
    )


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
        return {
            "id": it.item.item_id,
            "title": it.item.title,
            "category": it.item.category or "",
            "text": it.item.text,
            "position": it.position,
            "page": it.page,
            "flags": it.flags,
            "teachers": it.teachers,
            "rows": it.rows,
            "has_final": it.has_final,
            "errors": it.errors,
            "figures": [
                self._figure(i, rows.get(i), [b for b in it.boxes if b.image == i]) for i in indices
            ],
            "crops": [self._crop(c) for c in it.crops],
        }

    def _figure(self, index: int, row: ImageRow | None, boxes: list[Box]) -> dict[str, Any]:
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
        elif not row.usable:
            figure["error"] = row.error or "not usable"
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
            # Set by the crop stage's pHash de-duplication when present: kept on disk, unused.
            "duplicate_of": getattr(crop, "duplicate_of", None),
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
