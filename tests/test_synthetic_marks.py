"""Tests of the certification-mark catalog (croptune.synthetic.marks, the crop ablation's data)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from croptune.synthetic.drawing import ORIENTATION_TAG
from croptune.synthetic.marks import (
    _MARK_STYLE,
    _MARKS_PALETTE,
    MARK_CLASSES,
    MARK_LABEL,
    MARKS_PHOTO_SIDE,
    make_marks_catalog,
    marks_scene,
    marks_sticker,
    render_marks_photo,
)
from toolkit.catalog import load_catalog
from toolkit.schema import load_schema

ROOT = Path(__file__).resolve().parent.parent
WHITE = 236  # every channel at least this: sticker paper (nothing else is drawn this light)


def _items(catalog: Path) -> list[dict]:
    return [json.loads(line) for line in catalog.read_text(encoding="utf-8").splitlines()]


def _oriented(catalog: Path, rel: str) -> np.ndarray:
    with Image.open(catalog.parent / rel) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.int16)


def _stored(catalog: Path, rel: str) -> np.ndarray:
    with Image.open(catalog.parent / rel) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _orientation(catalog: Path, rel: str) -> int:
    with Image.open(catalog.parent / rel) as im:
        return im.getexif().get(ORIENTATION_TAG, 1)


def _white(pixels: np.ndarray) -> np.ndarray:
    return (pixels >= WHITE).all(axis=2)


def _inside(mask: np.ndarray, xyxy: list[int]) -> np.ndarray:
    x1, y1, x2, y2 = xyxy
    inner = np.zeros_like(mask)
    inner[y1:y2, x1:x2] = True
    return inner


def _mark_seen(pixels: np.ndarray, xyxy: list[int]) -> str:
    """The mark whose colour covers most pixels of the sticker's interior."""
    x1, y1, x2, y2 = xyxy
    interior = pixels[y1 + 5 : y2 - 5, x1 + 5 : x2 - 5].reshape(-1, 3)
    counts = {
        mark: int((np.abs(interior - np.array(colour)).sum(axis=1) < 60).sum())
        for mark, (_, colour) in _MARK_STYLE.items()
    }
    return max(counts, key=counts.get)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_marks_catalog(tmp_path_factory.mktemp("marks"), n_items=60, seed=3)


def test_items_photos_boxes_and_attributes(catalog: Path) -> None:
    items = _items(catalog)
    assert [it["item_id"] for it in items] == [f"MK{i:04d}" for i in range(1, 61)]
    assert {len(it["images"]) for it in items} == {1, 2, 3, 4}
    schema = load_schema("compliance")
    for it in items:
        [box] = it["boxes"]  # one sticker per item
        assert box["label"] == MARK_LABEL
        assert 0 <= box["image"] < len(it["images"])
        x1, y1, x2, y2 = box["xyxy"]
        assert 0 <= x1 < x2 <= MARKS_PHOTO_SIDE and 0 <= y1 < y2 <= MARKS_PHOTO_SIDE
        assert 38 <= x2 - x1 <= 50 and 26 <= y2 - y1 <= 36  # a ~40x28 sticker plus margins
        marks = it["attributes"]["regulatory_safety"]["certification_marks"]
        assert len(marks) == 1 and marks[0] in MARK_CLASSES
        assert it["attributes"] == {"regulatory_safety": {"certification_marks": marks}}
        assert schema.clean(it["attributes"]) == (it["attributes"], [])
        assert "title" not in it and "text" not in it  # nothing but pixels tells the mark
    assert set(Counter(it["attributes"]["regulatory_safety"]["certification_marks"][0]
                       for it in items)) == set(MARK_CLASSES)  # fmt: skip


def test_the_catalog_loads_with_its_reference_boxes(catalog: Path) -> None:
    loaded = load_catalog(catalog)
    assert not loaded.problems
    assert len(loaded.items) == 60


def test_sticker_on_exactly_one_photo_inside_its_box(catalog: Path) -> None:
    for it in _items(catalog):
        box = it["boxes"][0]
        for index, rel in enumerate(it["images"]):
            white = _white(_oriented(catalog, rel))
            if index == box["image"]:
                assert white.sum() > 400, (it["item_id"], int(white.sum()))
                assert not (white & ~_inside(white, box["xyxy"])).any(), it["item_id"]
            else:
                assert white.sum() < 10, (it["item_id"], index, int(white.sum()))


def test_attribute_names_the_mark_drawn_in_the_box(catalog: Path) -> None:
    for it in _items(catalog):
        box = it["boxes"][0]
        pixels = _oriented(catalog, it["images"][box["image"]])
        mark = it["attributes"]["regulatory_safety"]["certification_marks"][0]
        assert _mark_seen(pixels, box["xyxy"]) == mark, it["item_id"]


def test_boxes_are_in_oriented_pixels(catalog: Path) -> None:
    """Some sticker photos are stored rotated with an EXIF tag; the box fits only upright."""
    tagged = 0
    for it in _items(catalog):
        box = it["boxes"][0]
        rel = it["images"][box["image"]]
        if _orientation(catalog, rel) == 1:
            continue
        tagged += 1
        raw_white = _white(_stored(catalog, rel))
        assert (raw_white & ~_inside(raw_white, box["xyxy"])).sum() > 100
    assert tagged >= 2


def test_box_covers_every_pixel_the_sticker_changes() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        scene = marks_scene(rng, ("rect", rng.choice(_MARKS_PALETTE)))
        sticker = marks_sticker(rng, MARK_CLASSES[seed % 4])
        bare = np.asarray(render_marks_photo(scene, None), dtype=np.int16)
        marked = np.asarray(render_marks_photo(scene, sticker), dtype=np.int16)
        changed = (bare != marked).any(axis=2)
        x1, y1, x2, y2 = sticker.rect
        assert changed.sum() > 0.8 * (x2 - x1) * (y2 - y1)
        box = [x1 - 2, y1 - 2, x2 + 2, y2 + 2]  # the catalog's box: the rect plus 2 px
        assert not (changed & ~_inside(changed, box)).any()
        assert _mark_seen(marked, list(sticker.rect)) == sticker.mark


def test_colours_elsewhere_do_not_give_the_mark_away() -> None:
    """Product and distractor colours are drawn from a palette holding every mark's colour."""
    assert {colour for _, colour in _MARK_STYLE.values()} <= set(_MARKS_PALETTE)
    seen = Counter()
    for seed in range(300):
        scene = marks_scene(random.Random(seed), ("rect", (0, 0, 0)))
        seen.update(colour for _, colour, _ in scene["distractors"])
    for _, colour in _MARK_STYLE.values():
        assert seen[colour] > 20


def test_same_seed_same_bytes_and_prefix(tmp_path: Path) -> None:
    a = make_marks_catalog(tmp_path / "a", n_items=3, seed=1)
    b = make_marks_catalog(tmp_path / "b", n_items=5, seed=1)
    assert b.read_text().splitlines()[:3] == a.read_text().splitlines()
    for rel in (p.relative_to(a.parent) for p in (a.parent / "img").iterdir()):
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes()


def test_make_catalog_script_writes_the_marks_kind(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_catalog.py"), str(tmp_path), "--kind",
         "marks", "--items", "3", "--seed", "2"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    assert "3 items" in done.stdout
    assert [it["item_id"] for it in _items(tmp_path / "catalog.jsonl")] == [
        "MK0001",
        "MK0002",
        "MK0003",
    ]
