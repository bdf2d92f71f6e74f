"""The seeded example catalog: product photos with small printed labels and reference boxes."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from croptune.synthetic.drawing import (
    BOX_MARGIN,
    INK,
    PAPER,
    RGB,
    Labelled,
    Rect,
    clip,
    grow,
    save_photo,
    shade,
    write_catalog,
)

# Images per item, 2..8, skewed small (median 4) to keep a CPU demo fast.
DEFAULT_LONG_SIDE = 640  # the example catalog's photos: about 640x480
_N_IMAGES = (2, 3, 4, 5, 6, 7, 8)
_N_IMAGES_WEIGHTS = (16, 26, 22, 14, 10, 7, 5)
# Order of the small-print elements on a sticker, top to bottom.
_ELEMENT_ORDER = ("model_number", "country_of_origin", "certification_mark", "warning", "barcode")


@dataclass(frozen=True)
class _Kind:
    product_type: str
    shape: str  # "box" | "bottle" | "cylinder"
    model_prefix: str
    sizes: tuple[str, ...]


@dataclass(frozen=True)
class _Category:
    name: str
    brands: tuple[str, ...]
    kinds: tuple[_Kind, ...]
    warnings: tuple[str, ...]
    marks: tuple[str, ...]


_CATEGORIES = (
    _Category(
        "kitchen appliances",
        ("Kettora", "Brevina", "Cucino"),
        (
            _Kind("electric kettle", "cylinder", "KT", ("1.7 L", "1.5 L", "1.0 L")),
            _Kind("toaster", "box", "TS", ("2-slice", "4-slice")),
            _Kind("coffee grinder", "cylinder", "CG", ("200 g", "75 g")),
        ),
        ("Warning: hot surface", "Caution: do not immerse in water"),
        ("CE", "UKCA", "RoHS"),
    ),
    _Category(
        "toys",
        ("Tinkly", "Bloxo", "Plufi"),
        (
            _Kind("building blocks set", "box", "BB", ("120 pcs", "250 pcs", "60 pcs")),
            _Kind("plush bear", "box", "PB", ("30 cm", "45 cm")),
            _Kind("toy car", "box", "TC", ("1:24", "1:18")),
        ),
        ("Warning: choking hazard - small parts", "Not suitable for children under 3 years"),
        ("CE", "UKCA"),
    ),
    _Category(
        "electronics",
        ("Voltaro", "Sonique", "Ampra"),
        (
            _Kind("wireless speaker", "cylinder", "WS", ("10 W", "20 W")),
            _Kind("power bank", "box", "PW", ("10000 mAh", "20000 mAh")),
            _Kind("usb charger", "box", "UC", ("65 W", "30 W")),
        ),
        ("Warning: risk of electric shock", "Do not expose to rain or moisture"),
        ("CE", "FCC", "UKCA", "RoHS"),
    ),
    _Category(
        "cosmetics",
        ("Lumea", "Velisse", "Aurel"),
        (
            _Kind("shampoo", "bottle", "SH", ("250 ml", "400 ml")),
            _Kind("body lotion", "bottle", "BL", ("200 ml", "500 ml")),
            _Kind("face cream", "cylinder", "FC", ("50 ml", "30 ml")),
        ),
        ("Avoid contact with eyes", "For external use only"),
        (),
    ),
    _Category(
        "tools",
        ("Forgeline", "Torqen", "Brakk"),
        (
            _Kind("cordless drill", "box", "CD", ("18 V", "12 V")),
            _Kind("tape measure", "box", "TM", ("5 m", "8 m")),
            _Kind("utility knife", "box", "UK", ("18 mm", "25 mm")),
        ),
        ("Caution: sharp blade", "Wear eye protection"),
        ("CE", "UKCA", "RoHS"),
    ),
)
_COLORS: dict[str, RGB] = {
    "red": (196, 42, 40),
    "blue": (38, 82, 182),
    "green": (40, 132, 70),
    "black": (34, 34, 38),
    "white": (236, 236, 232),
    "grey": (128, 130, 136),
    "yellow": (226, 196, 44),
    "orange": (226, 118, 32),
    "pink": (222, 120, 160),
    "purple": (108, 62, 146),
}
_NAME_HEADS = ("Aqua", "Nova", "Pure", "Flex", "Zen", "Max", "Eco", "Swift", "Terra", "Lumi")
_NAME_TAILS = ("Line", "One", "Go", "Plus", "Pro", "Mini", "Core", "Wave")
_COUNTRIES = (
    "China",
    "Germany",
    "Vietnam",
    "Poland",
    "Italy",
    "Turkey",
    "Portugal",
    "Japan",
    "India",
    "Mexico",
)
_PITCHES = (
    "A favourite for everyday use.",
    "Ships in original retail packaging.",
    "Great value, fast delivery.",
    "New and unused.",
)


@dataclass(frozen=True)
class _Product:
    item_id: str
    category: _Category
    kind: _Kind
    brand: str
    name: str
    size: str
    color_name: str
    gtin: str | None
    model_number: str | None
    marks: tuple[str, ...]
    warning: str | None
    country: str | None


@dataclass(frozen=True)
class _Block:
    """A laid-out piece of small print: its size and how to draw it at a top-left point."""

    w: int
    h: int
    draw: Callable[[ImageDraw.ImageDraw, int, int], Labelled]


def make_example_catalog(
    out_dir: Path,
    n_items: int = 30,
    seed: int = 0,
    photo_long_side: int = DEFAULT_LONG_SIDE,
    workers: int = 1,
) -> Path:
    """Write a synthetic catalog (catalog.jsonl + img/) and return the catalog path.

    photo_long_side: about this many pixels on a photo's longer side (640: the example
    catalog; 1600: real-size 1600x1200 photos, the same small print, so smaller in the
    frame); workers: processes drawing items (the catalog is the same for any number).
    """
    return write_catalog(
        out_dir,
        n_items,
        functools.partial(_make_item, seed=seed, long_side=photo_long_side),
        "synthetic",
        workers,
    )


def ean13_check_digit(digits12: str) -> str:
    """The EAN-13 check digit of a 12-digit string."""
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(digits12))
    return str((10 - total % 10) % 10)


def ean13_modules(code: str) -> str:
    """The 95 bar modules ('1' dark, '0' light) of a 13-digit EAN code."""
    left = ("0001101", "0011001", "0010011", "0111101", "0100011",
            "0110001", "0101111", "0111011", "0110111", "0001011")  # fmt: skip
    parity = ("LLLLLL", "LLGLGG", "LLGGLG", "LLGGGL", "LGLLGG",
              "LGGLLG", "LGGGLL", "LGLGLG", "LGLGGL", "LGGLGL")  # fmt: skip
    right = ["".join("1" if b == "0" else "0" for b in p) for p in left]
    out = "101"
    for d, p in zip(code[1:7], parity[int(code[0])], strict=True):
        out += left[int(d)] if p == "L" else right[int(d)][::-1]
    out += "01010"
    out += "".join(right[int(d)] for d in code[7:])
    return out + "101"


# ---------------------------------------------------------------- item content


def _make_item(
    img_dir: Path, index: int, seed: int, long_side: int = DEFAULT_LONG_SIDE
) -> dict[str, Any]:
    """One catalog item; depends only on (seed, index, long_side)."""
    rng = random.Random(f"croptune-synthetic:{seed}:{index}")
    product = _make_product(rng, f"EX{index + 1:04d}")
    plan = _plan_photos(rng, product)
    images: list[str] = []
    boxes: list[dict[str, Any]] = []
    for i, elements in enumerate(plan):
        image, drawn = _draw_photo(rng, product, elements, long_side)
        name = f"{product.item_id}_{i}.jpg"
        save_photo(image, img_dir / name, rng)
        images.append(f"img/{name}")
        boxes += [{"image": i, "xyxy": list(xyxy), "label": label} for label, xyxy in drawn]
    return {
        "item_id": product.item_id,
        "images": images,
        "title": f"{product.brand} {product.name} {product.kind.product_type} {product.size}",
        "category": product.category.name,
        "text": _listing_text(rng, product),
        "attributes": _attributes(product),
        "boxes": boxes,
    }


def _make_product(rng: random.Random, item_id: str) -> _Product:
    """Random product facts; small-print fields may be absent."""
    category = rng.choice(_CATEGORIES)
    kind = rng.choice(category.kinds)
    marks: tuple[str, ...] = ()
    if category.marks and rng.random() < 0.8:
        chosen = set(rng.sample(category.marks, rng.randint(1, len(category.marks))))
        marks = tuple(m for m in category.marks if m in chosen)
    gtin = _random_gtin(rng) if rng.random() < 0.9 else None
    model = f"{kind.model_prefix}-{rng.randint(1000, 9899)}" if rng.random() < 0.85 else None
    warning = rng.choice(category.warnings) if rng.random() < 0.7 else None
    country = rng.choice(_COUNTRIES) if rng.random() < 0.8 else None
    if not (gtin or model or marks or warning or country):
        gtin = _random_gtin(rng)
    return _Product(
        item_id=item_id,
        category=category,
        kind=kind,
        brand=rng.choice(category.brands),
        name=rng.choice(_NAME_HEADS) + rng.choice(_NAME_TAILS),
        size=rng.choice(kind.sizes),
        color_name=rng.choice(sorted(_COLORS)),
        gtin=gtin,
        model_number=model,
        marks=marks,
        warning=warning,
        country=country,
    )


def _random_gtin(rng: random.Random) -> str:
    """A valid 13-digit EAN code."""
    body = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(11))
    return body + ean13_check_digit(body)


def _elements(product: _Product) -> list[str]:
    """The small-print elements this product carries, in sticker order."""
    present = {
        "barcode": product.gtin,
        "model_number": product.model_number,
        "certification_mark": product.marks,
        "warning": product.warning,
        "country_of_origin": product.country,
    }
    return [e for e in _ELEMENT_ORDER if present[e]]


def _plan_photos(rng: random.Random, product: _Product) -> list[list[str]]:
    """What each photo shows: photo 0 the front, some others a sticker, the rest nothing."""
    n = rng.choices(_N_IMAGES, weights=_N_IMAGES_WEIGHTS)[0]
    elements = _elements(product)
    rng.shuffle(elements)
    k = rng.randint(1, min(n - 1, len(elements)))
    label_photos = sorted(rng.sample(range(1, n), k))
    plan: list[list[str]] = [["front"]] + [[] for _ in range(n - 1)]
    for j, element in enumerate(elements):
        photo = label_photos[j] if j < k else rng.choice(label_photos)
        plan[photo].append(element)
    for elems in plan[1:]:
        elems.sort(key=_ELEMENT_ORDER.index)
    return plan


def _listing_text(rng: random.Random, product: _Product) -> str:
    """A short listing description naming the product type and category."""
    kind = product.kind.product_type
    return (
        f"{kind[0].upper()}{kind[1:]} from {product.brand}, part of our "
        f"{product.category.name} range. {rng.choice(_PITCHES)}"
    )


def _attributes(product: _Product) -> dict[str, Any]:
    """Reference labels in the compliance schema: only what is drawn or in the listing."""
    identifiers = {"gtin": product.gtin, "model_number": product.model_number}
    attributes = {
        "product_type": product.kind.product_type,
        "category": product.category.name,
        "brand": product.brand,
        "name": product.name,
        "size": product.size,
        "color": product.color_name,
    }
    regulatory = {
        "certification_marks": list(product.marks),
        "hazard_statements": [product.warning] if product.warning else [],
    }
    groups: dict[str, dict[str, Any]] = {
        "identifiers": identifiers,
        "attributes": attributes,
        "origin_production": {"country_of_origin": product.country},
        "regulatory_safety": regulatory,
    }
    out = {g: {k: v for k, v in fields.items() if v} for g, fields in groups.items()}
    return {g: fields for g, fields in out.items() if fields}


# ---------------------------------------------------------------- photos


def _draw_photo(
    rng: random.Random, product: _Product, elements: list[str], long_side: int
) -> tuple[Image.Image, Labelled]:
    """One upright photo of the product and the labelled regions drawn on it."""
    size = _photo_size(rng, long_side)
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    face = _draw_product(draw, rng, size, product)
    if elements == ["front"]:
        drawn = _draw_front_panel(draw, rng, face, product)
    elif elements:
        drawn = _draw_label_sticker(draw, rng, face, size, _blocks(rng, product, elements))
    else:
        drawn = []
    return _add_noise(image, rng), [(label, clip(rect, size)) for label, rect in drawn]


def _photo_size(rng: random.Random, long_side: int = DEFAULT_LONG_SIDE) -> tuple[int, int]:
    """About long_side x 3/4 of it (640x480 by default), sometimes portrait."""
    scale = long_side / DEFAULT_LONG_SIDE
    width = round((640 + rng.randint(-48, 48)) * scale)
    height = round((480 + rng.randint(-32, 32)) * scale)
    return (height, width) if rng.random() < 0.2 else (width, height)


def _background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A light vertical gradient with soft blotches and a darker table top."""
    w, h = size
    top = np.array([rng.randint(190, 235) for _ in range(3)], dtype=np.float32)
    bottom = top - rng.randint(10, 40)
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    arr = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    nrng = np.random.default_rng(rng.getrandbits(64))
    blotches = nrng.uniform(-8, 8, size=(6, 8)).astype(np.float32)
    soft = Image.fromarray(blotches).resize((w, h), Image.Resampling.BILINEAR)
    arr += np.asarray(soft)[:, :, None]
    table_y = int(h * rng.uniform(0.78, 0.9))
    arr[table_y:] *= 0.82
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _add_noise(image: Image.Image, rng: random.Random) -> Image.Image:
    """Mild sensor-like noise over the whole photo."""
    nrng = np.random.default_rng(rng.getrandbits(64))
    arr = np.asarray(image, dtype=np.int16)
    arr = arr + nrng.integers(-3, 4, size=arr.shape, dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _draw_product(
    draw: ImageDraw.ImageDraw, rng: random.Random, size: tuple[int, int], product: _Product
) -> Rect:
    """Draw the product shape with a shadow; return its printable front face."""
    w, h = size
    color = _COLORS[product.color_name]
    shape = product.kind.shape
    ph = int(h * rng.uniform(0.58, 0.68))
    if shape == "bottle":
        pw = min(int(w * 0.6), max(250, int(ph * rng.uniform(0.7, 0.85))))
    else:
        pw = int(w * rng.uniform(0.5, 0.66))
    x1 = (w - pw) // 2 + rng.randint(-w // 14, w // 14)
    y2 = int(h * rng.uniform(0.86, 0.9))
    rect = (x1, y2 - ph, x1 + pw, y2)
    draw.ellipse((x1 - 10, y2 - 16, x1 + pw + 24, y2 + 14), fill=(118, 116, 112))
    if shape == "box":
        return _draw_box(draw, rng, rect, color)
    if shape == "bottle":
        return _draw_bottle(draw, rng, rect, color)
    return _draw_cylinder(draw, rect, color)


def _draw_box(draw: ImageDraw.ImageDraw, rng: random.Random, rect: Rect, color: RGB) -> Rect:
    """A carton seen slightly from above-right."""
    x1, y1, x2, y2 = rect
    d = int((x2 - x1) * rng.uniform(0.08, 0.13))
    y1 += d
    draw.polygon([(x1, y1), (x1 + d, y1 - d), (x2 + d, y1 - d), (x2, y1)], fill=shade(color, 1.25))
    draw.polygon([(x2, y1), (x2 + d, y1 - d), (x2 + d, y2 - d), (x2, y2)], fill=shade(color, 0.72))
    draw.rectangle((x1, y1, x2, y2), fill=color)
    return (x1 + 6, y1 + 6, x2 - 6, y2 - 6)


def _draw_bottle(draw: ImageDraw.ImageDraw, rng: random.Random, rect: Rect, color: RGB) -> Rect:
    """A bottle: rounded body, shoulder, neck and cap."""
    x1, y1, x2, y2 = rect
    bw = x2 - x1
    neck_w = int(bw * rng.uniform(0.28, 0.38))
    cap_h = int((y2 - y1) * 0.08)
    neck_h = int((y2 - y1) * 0.06)
    body_top = y1 + cap_h + neck_h + int((y2 - y1) * 0.06)
    cx = (x1 + x2) // 2
    cap_color = shade(color, 0.55)
    draw.rectangle((cx - neck_w // 2 - 3, y1, cx + neck_w // 2 + 3, y1 + cap_h), fill=cap_color)
    draw.rectangle((cx - neck_w // 2, y1 + cap_h, cx + neck_w // 2, body_top + 4), fill=color)
    r = max(8, bw // 8)
    shoulder_top = y1 + cap_h + neck_h
    draw.polygon(
        [(cx - neck_w // 2, shoulder_top), (cx + neck_w // 2, shoulder_top),
         (x2 - r, body_top + 1), (x1 + r, body_top + 1)],
        fill=color,
    )  # fmt: skip
    draw.rounded_rectangle((x1, body_top, x2, y2), radius=r, fill=color)
    return (x1 + 6, body_top + r, x2 - 6, y2 - r // 2)


def _draw_cylinder(draw: ImageDraw.ImageDraw, rect: Rect, color: RGB) -> Rect:
    """An upright cylinder (kettle body, jar, speaker) with a lighter top."""
    x1, y1, x2, y2 = rect
    e = max(10, (x2 - x1) // 7)
    draw.ellipse((x1, y2 - e, x2, y2 + e // 2), fill=shade(color, 0.8))
    draw.rectangle((x1, y1 + e // 2, x2, y2 - e // 4), fill=color)
    draw.ellipse((x1, y1, x2, y1 + e), fill=shade(color, 1.3))
    return (x1 + 8, y1 + e + 6, x2 - 8, y2 - e // 2)


def _ink_for(color: RGB) -> RGB:
    """Black or white, whichever reads better on the colour."""
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return INK if luma > 140 else PAPER


# ---------------------------------------------------------------- printing


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font at a pixel size."""
    return ImageFont.load_default(size=size)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int, fill: RGB) -> Rect:
    """Draw text whose ink box starts at xy; return that box."""
    font = _font(size)
    # Pillow types FreeType boxes as floats; they hold whole pixels (ints) at run time.
    left, top, right, bottom = (int(v) for v in font.getbbox(text))
    draw.text((xy[0] - left, xy[1] - top), text, font=font, fill=fill)
    return (xy[0], xy[1], xy[0] + right - left, xy[1] + bottom - top)


def _text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height of the text's ink box."""
    left, top, right, bottom = (int(v) for v in _font(size).getbbox(text))  # whole pixels
    return right - left, bottom - top


def _draw_front_panel(
    draw: ImageDraw.ImageDraw, rng: random.Random, face: Rect, product: _Product
) -> Labelled:
    """Brand big, product name and size below it; one 'brand' box around the panel."""
    fill = _ink_for(_COLORS[product.color_name])
    fw = face[2] - face[0]
    fit = int(10 * fw * rng.uniform(0.65, 0.85) / _text_size(product.brand, 10)[0])
    brand_size = min(56, max(24, fit))
    name_size = max(16, brand_size // 2)
    lines = [(product.brand, brand_size), (product.name, name_size), (product.size, name_size)]
    heights = [_text_size(t, s)[1] for t, s in lines]
    gap = max(4, name_size // 3)
    total = sum(heights) + gap * (len(lines) - 1)
    y = face[1] + int((face[3] - face[1] - total) * rng.uniform(0.1, 0.45))
    rects = []
    for (text, size), height in zip(lines, heights, strict=True):
        tw = _text_size(text, size)[0]
        x = face[0] + max(0, (fw - tw) // 2)
        rects.append(_text(draw, (x, y), text, size, fill))
        y += height + gap
    union = (min(r[0] for r in rects), rects[0][1], max(r[2] for r in rects), rects[-1][3])
    return [("brand", grow(union))]


def _blocks(rng: random.Random, product: _Product, elements: list[str]) -> list[_Block]:
    """Laid-out small-print blocks for the given elements."""
    size = rng.randint(11, 14)  # font px: ink 8-11 px tall
    makers: dict[str, Callable[[], _Block]] = {
        "barcode": lambda: _barcode_block(rng, product.gtin or ""),
        "model_number": lambda: _text_block(f"Model: {product.model_number}", "model_number", size),
        "certification_mark": lambda: _marks_block(product.marks, size),
        "warning": lambda: _warning_block(product.warning or "", size),
        "country_of_origin": lambda: _text_block(
            f"Made in {product.country}", "country_of_origin", size
        ),
    }
    return [makers[e]() for e in elements]


def _text_block(text: str, label: str, size: int) -> _Block:
    """One line of small print with its own box."""
    w, h = _text_size(text, size)

    def draw_at(draw: ImageDraw.ImageDraw, x: int, y: int) -> Labelled:
        return [(label, grow(_text(draw, (x, y), text, size, INK)))]

    return _Block(w, h, draw_at)


def _warning_block(text: str, size: int) -> _Block:
    """A hazard triangle followed by the warning text, boxed together."""
    tw, th = _text_size(text, size)
    tri = th + 1

    def draw_at(draw: ImageDraw.ImageDraw, x: int, y: int) -> Labelled:
        draw.polygon([(x, y + tri), (x + tri // 2, y), (x + tri, y + tri)], outline=INK, width=1)
        draw.line((x + tri // 2, y + tri // 3, x + tri // 2, y + tri - 3), fill=INK)
        _text(draw, (x + tri + 4, y), text, size, INK)
        return [("warning", grow((x, y, x + tri + 4 + tw, y + max(th, tri))))]

    return _Block(tri + 4 + tw, max(th, tri), draw_at)


def _marks_block(marks: tuple[str, ...], size: int) -> _Block:
    """A row of framed certification marks, one box per mark."""
    pad = 3
    sizes = [_text_size(m, size) for m in marks]
    height = max(h for _, h in sizes) + 2 * pad
    widths = [w + 2 * pad for w, _ in sizes]
    gap = 6

    def draw_at(draw: ImageDraw.ImageDraw, x: int, y: int) -> Labelled:
        out: Labelled = []
        for mark, (_, th), fw in zip(marks, sizes, widths, strict=True):
            frame = (x, y, x + fw, y + height)
            if mark == "RoHS":
                draw.rounded_rectangle(frame, radius=4, outline=INK, width=1)
            else:
                draw.rectangle(frame, outline=INK, width=1)
            _text(draw, (x + pad, y + (height - th) // 2), mark, size, INK)
            out.append(("certification_mark", grow(frame)))
            x += fw + gap
        return out

    return _Block(sum(widths) + gap * (len(marks) - 1), height, draw_at)


def _barcode_block(rng: random.Random, gtin: str) -> _Block:
    """EAN-13 bars with the human-readable digits under them."""
    module = rng.choice((1, 2, 2))
    bar_h = rng.randint(22, 32)
    fitting = [n for n in (11, 12, 13) if _text_size("8" * 6, n)[0] <= 42 * module - 4]
    digit_size = rng.choice(fitting or [10])
    modules = ean13_modules(gtin)
    lead_w, digit_h = _text_size(gtin[0], digit_size)
    lead = lead_w + 3
    bars_w = len(modules) * module

    def draw_at(draw: ImageDraw.ImageDraw, x: int, y: int) -> Labelled:
        bx = x + lead
        for i, bit in enumerate(modules):
            if bit == "1":
                guard = i < 3 or 45 <= i < 50 or i >= 92
                bottom = y + bar_h + (digit_h // 2 if guard else 0)
                draw.rectangle((bx + i * module, y, bx + (i + 1) * module - 1, bottom), fill=INK)
        ty = y + bar_h + 2
        _text(draw, (x, ty), gtin[0], digit_size, INK)
        for chunk, start in ((gtin[1:7], 3), (gtin[7:], 50)):
            cw = _text_size(chunk, digit_size)[0]
            cx = bx + start * module + (42 * module - cw) // 2
            _text(draw, (cx, ty), chunk, digit_size, INK)
        return [("barcode", grow((x, y, bx + bars_w, ty + digit_h)))]

    return _Block(lead + bars_w, bar_h + 2 + digit_h, draw_at)


def _draw_label_sticker(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    face: Rect,
    size: tuple[int, int],
    blocks: list[_Block],
) -> Labelled:
    """A white sticker on the product face carrying the blocks stacked top to bottom."""
    pad, gap = 8, 7
    sw = max(b.w for b in blocks) + 2 * pad
    sh = sum(b.h for b in blocks) + gap * (len(blocks) - 1) + 2 * pad
    x = _place(rng, face[0], face[2], sw, 0, size[0])
    y = _place(rng, face[1], face[3], sh, 0, size[1])
    draw.rounded_rectangle((x, y, x + sw, y + sh), radius=5, fill=PAPER, outline=(170, 170, 165))
    drawn: Labelled = []
    cy = y + pad
    for block in blocks:
        drawn += block.draw(draw, x + pad, cy)
        cy += block.h + gap
    return drawn


def _place(rng: random.Random, lo: int, hi: int, length: int, limit_lo: int, limit_hi: int) -> int:
    """A start so that [start, start+length] lies in [lo, hi], else as inside the limits as fits."""
    if hi - lo >= length:
        return rng.randint(lo, hi - length)
    start = (lo + hi - length) // 2
    return max(limit_lo + BOX_MARGIN, min(start, limit_hi - length - BOX_MARGIN - 1))
