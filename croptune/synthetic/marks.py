"""The certification-mark catalog: the crop ablation's data (bench/crop_ablation.py).

The "it matters where you look" experiment: 448x448 photos of one product on a striped or
dotted background with 1-2 distractor shapes; ONE photo of the item carries a small white
sticker (~40x28 px) with a ~14 px certification symbol. The symbol is ~3.5 px once the photo
is downscaled to a small student's input and ~25 px in a crop of the sticker. Product and
distractor colours come from a palette that holds the symbols' colours, drawn independently
of the mark, so no colour elsewhere gives it away.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from croptune.synthetic.drawing import (
    BOX_MARGIN,
    PAPER,
    RGB,
    Rect,
    clip,
    grow,
    save_photo,
    shade,
    write_catalog,
)
from finetune.students.reading import draw_shape
from finetune.students.vocab import SCRATCH_WHOLE_WORDS

# The marks the generator draws: exactly the words the tiny-scratch student holds whole.
MARK_CLASSES = SCRATCH_WHOLE_WORDS
MARKS_PHOTO_SIDE = 448
MARK_LABEL = "certification_mark"  # the reference box's label
# Each mark: a distinct shape in a distinct colour.
_MARK_STYLE: dict[str, tuple[str, RGB]] = {
    "CE": ("ring", (38, 82, 182)),  # blue ring
    "UKCA": ("square", (196, 42, 40)),  # red square
    "FCC": ("triangle", (40, 132, 70)),  # green triangle
    "RoHS": ("diamond", (226, 118, 32)),  # orange diamond
}
# Product and distractor colours: the four mark colours and six others, never near white
# (only the sticker is near white).
_MARKS_PALETTE: tuple[RGB, ...] = (
    *(colour for _, colour in _MARK_STYLE.values()),
    (226, 196, 44),
    (108, 62, 146),
    (222, 120, 160),
    (34, 34, 38),
    (128, 130, 136),
    (30, 140, 150),
)
_SHAPES = ("ring", "square", "triangle", "diamond", "disc", "rect")
# The palette's colour names: the product's colour attribute (make_marks_catalog(colour=True)).
COLOUR_NAMES: dict[RGB, str] = dict(
    zip(
        _MARKS_PALETTE,
        ("blue", "red", "green", "orange", "yellow", "purple", "pink", "black", "grey", "teal"),
        strict=True,
    )
)


@dataclass(frozen=True)
class MarksSticker:
    """Where the sticker sits on its photo and which mark it carries."""

    mark: str
    rect: Rect  # the paper's pixels, x1 y1 x2 y2 (inclusive drawing, so x2/y2 are exclusive+1)


def make_marks_catalog(
    out_dir: Path, n_items: int = 200, seed: int = 0, colour: bool = False
) -> Path:
    """Write the certification-mark catalog (catalog.jsonl + img/) and return its path.

    Each item has 1-4 photos of 448x448, one of which carries the mark's sticker; its
    reference box covers the sticker and its reference attributes name the one mark, and
    with colour=True also the product's colour (attributes.color: large, readable without
    a crop; the demo's second field). The photos are the same either way.
    """
    return write_catalog(
        out_dir,
        n_items,
        lambda img_dir, index: _make_marks_item(img_dir, index, seed, colour),
        "certification-mark",
    )


def _make_marks_item(img_dir: Path, index: int, seed: int, colour: bool = False) -> dict[str, Any]:
    """One item of the marks catalog; depends only on (seed, index)."""
    rng = random.Random(f"croptune-marks:{seed}:{index}")
    item_id = f"MK{index + 1:04d}"
    mark = rng.choice(MARK_CLASSES)
    n_photos = rng.randint(1, 4)
    sticker_photo = rng.randrange(n_photos)
    product = (rng.choice(("rect", "disc", "rounded")), rng.choice(_MARKS_PALETTE))
    images: list[str] = []
    boxes: list[dict[str, Any]] = []
    for i in range(n_photos):
        scene = marks_scene(rng, product)
        sticker = marks_sticker(rng, mark) if i == sticker_photo else None
        image = render_marks_photo(scene, sticker)
        name = f"{item_id}_{i}.jpg"
        save_photo(image, img_dir / name, rng)
        images.append(f"img/{name}")
        if sticker is not None:
            box = clip(grow(sticker.rect), image.size)
            boxes.append({"image": i, "xyxy": list(box), "label": MARK_LABEL})
    attributes: dict[str, Any] = {"regulatory_safety": {"certification_marks": [mark]}}
    if colour:
        attributes = {"attributes": {"color": COLOUR_NAMES[product[1]]}, **attributes}
    return {
        "item_id": item_id,
        "images": images,
        "category": "electronics",
        "attributes": attributes,
        "boxes": boxes,
    }


def marks_scene(rng: random.Random, product: tuple[str, RGB]) -> dict[str, Any]:
    """Random layout of one marks photo without its sticker: background, product, distractors."""
    side = MARKS_PHOTO_SIDE
    base: RGB = (rng.randint(150, 215), rng.randint(150, 215), rng.randint(150, 215))
    scene: dict[str, Any] = {
        "pattern": rng.choice(("stripes-h", "stripes-v", "stripes-d", "dots")),
        "base": base,
        "ink": shade(base, rng.uniform(0.7, 0.85)),
        "pitch": rng.randint(10, 22),
        "product": (product[0], product[1], _random_rect(rng, side, 180, 300)),
        "distractors": [
            (rng.choice(_SHAPES), rng.choice(_MARKS_PALETTE), _random_rect(rng, side, 24, 70))
            for _ in range(rng.randint(1, 2))
        ],
    }
    return scene


def marks_sticker(rng: random.Random, mark: str) -> MarksSticker:
    """A sticker of ~40x28 px at a random place, fully inside the photo."""
    w, h = rng.randint(38, 44), rng.randint(26, 30)
    x = rng.randint(BOX_MARGIN + 1, MARKS_PHOTO_SIDE - w - BOX_MARGIN - 2)
    y = rng.randint(BOX_MARGIN + 1, MARKS_PHOTO_SIDE - h - BOX_MARGIN - 2)
    return MarksSticker(mark, (x, y, x + w, y + h))


def render_marks_photo(scene: dict[str, Any], sticker: MarksSticker | None) -> Image.Image:
    """The photo of a scene, with the sticker drawn last (on top) if given; deterministic."""
    side = MARKS_PHOTO_SIDE
    image = Image.new("RGB", (side, side), scene["base"])
    draw = ImageDraw.Draw(image)
    pitch, ink = scene["pitch"], scene["ink"]
    if scene["pattern"] == "dots":
        r = max(2, pitch // 5)
        for cy in range(pitch // 2, side, pitch):
            for cx in range(pitch // 2, side, pitch):
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=ink)
    else:
        width = max(2, pitch // 3)
        for k in range(-side, 2 * side, pitch):
            if scene["pattern"] == "stripes-h":
                draw.line((0, k, side, k), fill=ink, width=width)
            elif scene["pattern"] == "stripes-v":
                draw.line((k, 0, k, side), fill=ink, width=width)
            else:
                draw.line((k, 0, k - side, side), fill=ink, width=width)
    shape, colour, rect = scene["product"]
    if shape == "rounded":
        draw.rounded_rectangle(rect, radius=24, fill=colour)
    else:
        draw_shape(draw, "disc" if shape == "disc" else "rect", rect, colour)
    for shape, colour, rect in scene["distractors"]:
        draw_shape(draw, shape, rect, colour)
    if sticker is not None:
        draw.rounded_rectangle(sticker.rect, radius=3, fill=PAPER, outline=(170, 170, 165))
        shape, colour = _MARK_STYLE[sticker.mark]
        x1, y1, x2, y2 = sticker.rect
        cx, cy, half = (x1 + x2) // 2, (y1 + y2) // 2, 7
        draw_shape(draw, shape, (cx - half, cy - half, cx + half, cy + half), colour)
    # No added sensor noise (JPEG adds its own): noisy pixels make every PNG the dataset
    # stores 4x larger and slower to write and read.
    return image


def _random_rect(rng: random.Random, side: int, low: int, high: int) -> Rect:
    """A square-ish rectangle of side low..high at a random place inside the photo."""
    w, h = rng.randint(low, high), rng.randint(low, high)
    x, y = rng.randint(0, side - w - 1), rng.randint(0, side - h - 1)
    return (x, y, x + w, y + h)
