"""Drawing and writing helpers shared by the synthetic catalog generators."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]
Rect = tuple[int, int, int, int]
Labelled = list[tuple[str, Rect]]  # (box label, xyxy) pairs drawn on one photo

JPEG_QUALITY = 90
BOX_MARGIN = 2  # px added around every drawn region
EXIF_RATE = 1 / 6  # share of photos stored rotated with an EXIF Orientation tag
ORIENTATION_TAG = 0x0112
# Orientation tag -> the transpose that stores an upright drawing so that
# ImageOps.exif_transpose gives it back (the inverse of what exif_transpose applies).
STORE_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}

INK: RGB = (22, 22, 24)
PAPER: RGB = (250, 250, 246)


def write_catalog(
    out_dir: Path,
    n_items: int,
    make_item: Callable[[Path, int], dict],
    kind: str,
    workers: int = 1,
) -> Path:
    """catalog.jsonl (one line per make_item(img_dir, index)) and img/ under out_dir.

    workers > 1: items are drawn in that many processes (make_item must be picklable, and
    depend only on its index, so the catalog is the same for any number of workers).
    """
    out_dir = Path(out_dir)
    img_dir = out_dir / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    catalog = out_dir / "catalog.jsonl"
    with contextlib.ExitStack() as stack:
        lines: Iterable[dict]
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            pool = stack.enter_context(ProcessPoolExecutor(workers))
            draw = functools.partial(make_item, img_dir)
            lines = pool.map(draw, range(n_items), chunksize=8)  # in index order
        else:
            lines = (make_item(img_dir, index) for index in range(n_items))
        fh = stack.enter_context(catalog.open("w", encoding="utf-8", newline="\n"))
        for line in lines:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    log.info("wrote %d %s items to %s", n_items, kind, catalog)
    return catalog


def clip(rect: Rect, size: tuple[int, int]) -> Rect:
    """The rectangle clipped to the image."""
    w, h = size
    return (max(0, rect[0]), max(0, rect[1]), min(w, rect[2]), min(h, rect[3]))


def shade(color: RGB, factor: float) -> RGB:
    """The colour scaled towards black (<1) or white (>1)."""
    if factor <= 1:
        return tuple(int(c * factor) for c in color)  # type: ignore[return-value]
    return tuple(int(c + (255 - c) * (factor - 1)) for c in color)  # type: ignore[return-value]


def grow(rect: Rect, margin: int = BOX_MARGIN) -> Rect:
    """The rectangle grown by a margin on every side."""
    return (rect[0] - margin, rect[1] - margin, rect[2] + margin, rect[3] + margin)


def save_photo(image: Image.Image, path: Path, rng: random.Random) -> None:
    """Save as JPEG; about one photo in six is stored rotated with an EXIF Orientation tag."""
    tagged = rng.random() < EXIF_RATE
    save_jpeg(image, path, rng.choice(sorted(STORE_TRANSPOSE)) if tagged else None)


def save_jpeg(image: Image.Image, path: Path, orientation: int | None) -> None:
    """Save an upright image so that exif_transpose of the file gives it back."""
    if orientation is None:
        image.save(path, "JPEG", quality=JPEG_QUALITY)
        return
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    stored = image.transpose(STORE_TRANSPOSE[orientation])
    stored.save(path, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
