"""A generic synthetic "what does it show" task, on which the tiny-reader base is pretrained.

It plays the part of a real VLM's pretraining at toy scale: pictures of one large object
and, sometimes, a small paper label carrying a printed symbol, on patterned backgrounds with
other shapes around; the answer names the object's colour and shape and the label's symbol
by its colour and shape ("object: blue disc / label: red square"). Pictures come at every
scale a student sees: whole scenes (where a label is a few pixels once shrunk to the
student's input, so the base reads it poorly) and close-ups of a label (where it reads
well). The task knows nothing of catalogs, schemas, JSON, certification marks or any
item's labels: fine-tuning teaches those.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

READ_PROMPT = "Describe the object and the label."

RGB = tuple[int, int, int]
COLOURS: dict[str, RGB] = {
    "blue": (38, 82, 182),
    "red": (196, 42, 40),
    "green": (40, 132, 70),
    "orange": (226, 118, 32),
    "yellow": (226, 196, 44),
    "purple": (108, 62, 146),
    "pink": (222, 120, 160),
    "black": (34, 34, 38),
    "grey": (128, 130, 136),
    "teal": (30, 140, 150),
}
SHAPES = ("ring", "square", "triangle", "diamond", "disc")
PAPER: RGB = (250, 250, 246)
# The words the reader's vocabulary holds whole (one token each).
WORDS: tuple[str, ...] = (*COLOURS, *SHAPES, "object", "label", "none")


def corpus_lines() -> list[str]:
    """Lines for the reader's tokenizer: every answer word of the task and its prompt."""
    return [READ_PROMPT, *(f"object: {c} {s}" for c in COLOURS for s in SHAPES), "label: none"]


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, rect: tuple[int, int, int, int], colour: RGB
) -> None:
    """A filled (or, for 'ring', outlined) shape inscribed in rect."""
    x1, y1, x2, y2 = rect
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if shape == "ring":
        draw.ellipse(rect, outline=colour, width=max(2, (x2 - x1) // 3))
    elif shape == "disc":
        draw.ellipse(rect, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x1, y2), (cx, y1), (x2, y2)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=colour)
    else:
        draw.rectangle(rect, fill=colour)


def _background(rng: random.Random, side: int) -> Image.Image:
    """A light striped or dotted background."""
    base = (rng.randint(150, 215), rng.randint(150, 215), rng.randint(150, 215))
    ink = tuple(int(c * rng.uniform(0.7, 0.85)) for c in base)
    image = Image.new("RGB", (side, side), base)
    draw = ImageDraw.Draw(image)
    pitch = rng.randint(10, 22)
    if rng.random() < 0.25:
        r = max(2, pitch // 5)
        for cy in range(pitch // 2, side, pitch):
            for cx in range(pitch // 2, side, pitch):
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=ink)
    else:
        width, slope = max(2, pitch // 3), rng.choice((0, 1, 2))
        for k in range(-side, 2 * side, pitch):
            line = ((0, k, side, k), (k, 0, k, side), (k, 0, k - side, side))[slope]
            draw.line(line, fill=ink, width=width)
    return image


def _rect(rng: random.Random, side: int, low: int, high: int) -> tuple[int, int, int, int]:
    w, h = rng.randint(low, high), rng.randint(low, high)
    x, y = rng.randint(0, max(0, side - w - 1)), rng.randint(0, max(0, side - h - 1))
    return (x, y, x + w, y + h)


def reading_sample(rng: random.Random) -> tuple[Image.Image, str]:
    """One picture and its answer: a whole scene (448 px) or a close-up of its label."""
    object_colour, object_shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    label = (rng.choice(list(COLOURS)), rng.choice(SHAPES)) if rng.random() < 0.8 else None
    close_up = label is not None and rng.random() < 0.6
    side = 448
    image = _background(rng, side)
    draw = ImageDraw.Draw(image)
    draw_shape(draw, object_shape, _rect(rng, side, 180, 300), COLOURS[object_colour])
    for _ in range(rng.randint(1, 2)):  # distractors: shapes that are not on a label
        draw_shape(
            draw, rng.choice(SHAPES), _rect(rng, side, 24, 70), rng.choice(list(COLOURS.values()))
        )
    sticker = None
    if label is not None:
        w, h = rng.randint(34, 48), rng.randint(24, 34)
        x, y = rng.randint(4, side - w - 5), rng.randint(4, side - h - 5)
        sticker = (x, y, x + w, y + h)
        draw.rounded_rectangle(sticker, radius=3, fill=PAPER, outline=(170, 170, 165))
        cx, cy, half = (x + x + w) // 2, (y + y + h) // 2, rng.randint(5, 9)
        draw_shape(draw, label[1], (cx - half, cy - half, cx + half, cy + half), COLOURS[label[0]])
    answer = f"object: {object_colour} {object_shape}\nlabel: " + (label[0] if label else "none")
    if close_up and sticker is not None and label is not None:
        # A square around the label with some margin, as a crop would be.
        x1, y1, x2, y2 = sticker
        side_c = int(max(x2 - x1, y2 - y1) * rng.uniform(1.1, 2.2))
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        left = max(0, min(side - side_c, cx - side_c // 2 + rng.randint(-4, 4)))
        top = max(0, min(side - side_c, cy - side_c // 2 + rng.randint(-4, 4)))
        image = image.crop((left, top, left + side_c, top + side_c))
        answer = f"object: none\nlabel: {label[0]}"
    return image, answer
