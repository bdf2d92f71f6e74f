"""ingest_catalog: a catalog's items into the run store; load_ingested_image reads one back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from toolkit.boxes import BoxConvention
from toolkit.catalog.checks import inspect_item
from toolkit.catalog.items import Catalog, Problem, item_fingerprint
from toolkit.images import (
    DEFAULT_MAX_PIXELS,
    ImageChangedError,
    decode_image,
    decode_resized,
    file_stat,
    pixel_hash,
    read_image_bytes,
    resized,
)
from toolkit.store import INGEST_STAGE, ImageRow, ItemRow, RunStore


@dataclass
class IngestSummary:
    """What ingest did: items stored, skipped as unchanged, dropped, and the problems."""

    stored: int = 0
    unchanged: int = 0
    dropped: int = 0
    problems: list[Problem] = field(default_factory=list)
    box_convention: BoxConvention = "pixels"
    converted: int = 0  # reference boxes converted from box_convention to pixels

    @property
    def errors(self) -> list[Problem]:
        """The problems that left something out (not the warnings: kept, changed as said)."""
        return [p for p in self.problems if p.level == "error"]


def ingest_catalog(
    catalog: Catalog,
    store: RunStore,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limit: int | None = None,
    progress: bool = False,
) -> IngestSummary:
    """Copy a catalog's items into the run store, decoding each new or changed item once."""
    from toolkit.progress import track

    # Records the catalog refused count as dropped too: the summary covers every line read.
    summary = IngestSummary(
        dropped=catalog.refused,
        problems=list(catalog.problems),
        box_convention=catalog.box_convention,
    )
    for problem in catalog.problems:
        # A catalog problem is met again on every re-run; record it once.
        store.log_event(
            INGEST_STAGE, str(problem), problem.level, item_id=_problem_item(problem), once=True
        )
    items = catalog.items[:limit] if limit is not None else catalog.items
    for position, item in enumerate(track(items, "ingest", progress)):
        resolved = [catalog.resolve(item, ref) for ref in item.images]
        fingerprint = item_fingerprint(item, resolved, catalog.box_convention)
        if store.item_fingerprint(item.item_id) == fingerprint:
            summary.unchanged += 1
            continue
        inspected = inspect_item(catalog, item, max_pixels)
        summary.problems += inspected.problems
        summary.converted += inspected.converted
        for problem in inspected.problems:
            store.log_event(
                INGEST_STAGE, problem.message, problem.level, item_id=item.item_id, once=True
            )
        if not inspected.usable:
            summary.dropped += 1
            continue
        row = ItemRow(
            item_id=item.item_id,
            title=item.title,
            category=item.category,
            text=item.text,
            reference_attributes=item.attributes,
            reference_boxes=[
                {"image": b.image, "xyxy": list(b.xyxy), "label": b.label} for b in inspected.boxes
            ],
        )
        store.put_item(row, position, fingerprint, inspected.images)
        summary.stored += 1
    return summary


def _problem_item(problem: Problem) -> str | None:
    return problem.where[5:] if problem.where.startswith("item ") else None


def load_ingested_image(row: ImageRow) -> Image.Image:
    """The oriented RGB pixels of an ingested image; ImageLoadError if it changed since ingest.

    An unchanged local file (same size and mtime) is decoded without hashing it again.
    """
    image = read_ingested_image(row, decode=True)[1]
    assert image is not None  # decode=True always decodes
    return image


def read_ingested_image(row: ImageRow, decode: bool = True) -> tuple[bytes, Image.Image | None]:
    """An ingested image's file bytes and oriented RGB pixels, read once; ImageLoadError if its
    pixels changed since ingest.

    An unchanged local file (same size and mtime) is not hashed again, and with decode=False
    not decoded either (pixels None): the dataset stores such bytes as they are.
    """
    stat = file_stat(row.uri)
    data = read_image_bytes(row.uri)
    if stat is not None and stat == row.file_stat:
        return data, decode_image(data) if decode else None
    image = decode_image(data)
    if pixel_hash(image) != row.sha256:
        raise ImageChangedError("changed since ingest; run `croptune label` again to re-ingest")
    return data, image


def load_ingested_resized(
    row: ImageRow, sizes: Sequence[tuple[int, int] | None], draft: bool = True
) -> list[Image.Image]:
    """An ingested image at each of `sizes` (None: as ingested), resized as every image sent to
    a teacher is (`toolkit.images.decode_resized`); ImageLoadError if it changed since ingest.

    An unchanged file is decoded at the smallest JPEG scale each size needs (draft); a changed
    one at full scale, to check its pixels against the ingested hash.
    """
    data, image = read_ingested_image(row, decode=False)
    if image is None:
        return decode_resized(data, sizes, draft=draft)[0]
    return [image if size is None else resized(image, size) for size in sizes]
