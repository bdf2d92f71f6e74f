"""Tests of the synthetic example catalog generator."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from croptune.synthetic.catalog import ean13_check_digit, ean13_modules, make_example_catalog
from croptune.synthetic.drawing import ORIENTATION_TAG
from croptune.synthetic.drawing import save_jpeg as _save_jpeg
from toolkit.schema import load_schema

LABELS = {"barcode", "model_number", "certification_mark", "warning", "country_of_origin", "brand"}


def _items(catalog: Path) -> list[dict]:
    return [json.loads(line) for line in catalog.read_text(encoding="utf-8").splitlines()]


def _oriented(catalog: Path, rel: str) -> Image.Image:
    with Image.open(catalog.parent / rel) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def _orientation(catalog: Path, rel: str) -> int:
    with Image.open(catalog.parent / rel) as im:
        return im.getexif().get(ORIENTATION_TAG, 1)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_example_catalog(tmp_path_factory.mktemp("synthetic"), n_items=30, seed=0)


def test_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    a = make_example_catalog(tmp_path / "a", n_items=4, seed=7)
    b = make_example_catalog(tmp_path / "b", n_items=4, seed=7)
    assert a == tmp_path / "a" / "catalog.jsonl"
    files_a, files_b = _files(a.parent), _files(b.parent)
    assert len(files_a) > 8
    assert files_a == files_b


def test_other_seed_differs(tmp_path: Path) -> None:
    a = make_example_catalog(tmp_path / "a", n_items=2, seed=0)
    b = make_example_catalog(tmp_path / "b", n_items=2, seed=1)
    assert a.read_bytes() != b.read_bytes()


def test_fewer_items_are_a_prefix(tmp_path: Path) -> None:
    small = make_example_catalog(tmp_path / "small", n_items=3, seed=0)
    large = make_example_catalog(tmp_path / "large", n_items=6, seed=0)
    small_lines = small.read_text().splitlines()
    assert len(small_lines) == 3
    assert large.read_text().splitlines()[:3] == small_lines
    large_files = _files(large.parent)
    small_images = {k: v for k, v in _files(small.parent).items() if k.startswith("img")}
    assert small_images
    for name, data in small_images.items():
        assert large_files[name] == data


def test_workers_draw_the_same_catalog(tmp_path: Path) -> None:
    # bench/scale.py draws its catalogs in processes: the bytes must not depend on how many.
    one = make_example_catalog(tmp_path / "one", n_items=5, seed=2, workers=1)
    two = make_example_catalog(tmp_path / "two", n_items=5, seed=2, workers=2)
    assert _files(one.parent) == _files(two.parent)


def test_real_size_photos_keep_their_boxes_on_the_drawn_pixels(tmp_path: Path) -> None:
    small = _items(make_example_catalog(tmp_path / "small", n_items=3, seed=4))
    large_catalog = make_example_catalog(
        tmp_path / "large", n_items=3, seed=4, photo_long_side=1600
    )
    large = _items(large_catalog)
    # The same items (the listing does not depend on the photo size), photos 2.5x as large.
    assert [it["attributes"] for it in large] == [it["attributes"] for it in small]
    for item in large:
        for box in item["boxes"]:
            photo = _oriented(large_catalog, item["images"][box["image"]])
            assert 1_000_000 <= photo.width * photo.height <= 2_300_000
            x1, y1, x2, y2 = box["xyxy"]
            assert 0 <= x1 < x2 <= photo.width and 0 <= y1 < y2 <= photo.height
            # Printed matter: the box holds ink darker than the paper around it.
            assert np.asarray(photo.crop((x1, y1, x2, y2)).convert("L")).min() < 128


def test_item_fields_and_image_counts(catalog: Path) -> None:
    items = _items(catalog)
    assert [it["item_id"] for it in items] == [f"EX{i:04d}" for i in range(1, 31)]
    counts = [len(it["images"]) for it in items]
    assert all(2 <= n <= 8 for n in counts)
    assert 3 <= statistics.median(counts) <= 5
    assert len({it["category"] for it in items}) >= 4
    for it in items:
        assert it["title"] and it["text"] and it["category"]
        for rel in it["images"]:
            assert rel.startswith("img/") and rel.endswith(".jpg")
            assert (catalog.parent / rel).is_file()


def test_boxes_inside_oriented_images(catalog: Path) -> None:
    for it in _items(catalog):
        sizes = [_oriented(catalog, rel).size for rel in it["images"]]
        assert any(b["label"] == "brand" and b["image"] == 0 for b in it["boxes"])
        assert any(b["label"] != "brand" for b in it["boxes"]), "every item has some small print"
        for box in it["boxes"]:
            assert box["label"] in LABELS
            x1, y1, x2, y2 = box["xyxy"]
            assert all(isinstance(v, int) for v in box["xyxy"])
            w, h = sizes[box["image"]]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


def test_attributes_are_schema_clean(catalog: Path) -> None:
    schema = load_schema()
    for it in _items(catalog):
        cleaned, notes = schema.clean(it["attributes"])
        assert notes == []
        assert cleaned == it["attributes"]


def test_attributes_match_drawn_regions(catalog: Path) -> None:
    for it in _items(catalog):
        attrs = it["attributes"]
        labels = [b["label"] for b in it["boxes"]]
        gtin = attrs.get("identifiers", {}).get("gtin")
        assert (gtin is not None) == ("barcode" in labels)
        if gtin:
            assert gtin.isdigit() and len(gtin) == 13 and ean13_check_digit(gtin[:12]) == gtin[12]
        model = attrs.get("identifiers", {}).get("model_number")
        assert (model is not None) == ("model_number" in labels)
        country = attrs.get("origin_production", {}).get("country_of_origin")
        assert (country is not None) == ("country_of_origin" in labels)
        reg = attrs.get("regulatory_safety", {})
        assert len(reg.get("certification_marks", [])) == labels.count("certification_mark")
        assert len(reg.get("hazard_statements", [])) == labels.count("warning")
        assert attrs["attributes"]["category"] == it["category"]
        assert attrs["attributes"]["product_type"] in it["text"].lower()


def test_some_photos_carry_exif_orientation(catalog: Path) -> None:
    tags = [_orientation(catalog, rel) for it in _items(catalog) for rel in it["images"]]
    tagged = [t for t in tags if t != 1]
    assert set(tagged) <= {3, 6, 8}
    assert 0.05 <= len(tagged) / len(tags) <= 0.35


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_tagged_jpeg_reads_back_upright(tmp_path: Path, orientation: int) -> None:
    upright = Image.new("RGB", (64, 48), (255, 255, 255))
    upright.paste((200, 0, 0), (0, 0, 16, 16))  # marker in the top-left corner
    path = tmp_path / "p.jpg"
    _save_jpeg(upright, path, orientation)
    with Image.open(path) as raw:
        assert raw.getexif()[ORIENTATION_TAG] == orientation
        assert raw.size == ((48, 64) if orientation in (6, 8) else (64, 48))
        back = ImageOps.exif_transpose(raw).convert("RGB")
    assert back.size == upright.size
    diff = np.abs(np.asarray(back, np.int16) - np.asarray(upright, np.int16))
    assert diff.mean() < 4


def _looks_like_bars(gray: np.ndarray, xyxy: list[int]) -> bool:
    """Dark bars on white paper: columns differ strongly, each column is flat."""
    x1, y1, x2, y2 = xyxy
    inside = gray[y1:y2, x1:x2]
    bars = inside[3 : 3 + int(0.4 * (y2 - y1))]  # the bar zone, above the digits
    return bool(
        inside.std() > 60
        and (inside < 90).mean() > 0.15
        and (inside > 170).mean() > 0.3
        and bars.mean(axis=0).std() > 80
        and bars.std(axis=0).mean() < 15
    )


def test_barcode_boxes_cover_bars_on_oriented_pixels(catalog: Path) -> None:
    checked = checked_tagged = raw_mismatch = 0
    for it in _items(catalog):
        for box in it["boxes"]:
            if box["label"] != "barcode":
                continue
            rel = it["images"][box["image"]]
            gray = np.asarray(_oriented(catalog, rel).convert("L"), dtype=np.float32)
            assert _looks_like_bars(gray, box["xyxy"])
            x1, y1, x2, y2 = box["xyxy"]
            plain = gray[0 : y2 - y1, 0 : x2 - x1]  # top-left corner: background only
            assert plain.std() < 20
            assert not _looks_like_bars(gray, [0, 0, x2 - x1, y2 - y1])
            checked += 1
            if _orientation(catalog, rel) != 1:
                checked_tagged += 1
                with Image.open(catalog.parent / rel) as raw:
                    raw_gray = np.asarray(raw.convert("L"), dtype=np.float32)
                raw_mismatch += not _looks_like_bars(raw_gray, box["xyxy"])
    assert checked >= 10
    assert checked_tagged >= 1, "no barcode on an EXIF-tagged photo was checked"
    assert raw_mismatch >= 1, "the check cannot tell oriented from stored pixels"


def test_small_print_is_small(catalog: Path) -> None:
    for it in _items(catalog):
        sizes = [_oriented(catalog, rel).size for rel in it["images"]]
        for box in it["boxes"]:
            if box["label"] == "brand":
                continue
            x1, y1, x2, y2 = box["xyxy"]
            assert y2 - y1 < 0.15 * min(sizes[box["image"]])
            if box["label"] in {"model_number", "country_of_origin", "warning"}:
                assert y2 - y1 <= 20  # one line of ~8-11 px text plus margins


def test_ean13_helpers() -> None:
    assert ean13_check_digit("400638133393") == "1"
    modules = ean13_modules("4006381333931")
    assert len(modules) == 95
    assert modules.startswith("101") and modules.endswith("101") and modules[45:50] == "01010"
