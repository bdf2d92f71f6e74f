"""The crop stage on real images: pHash duplicates, budget, pixels, re-runs, store migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from toolkit.boxes import Box
from toolkit.crops import CropConfig, crop_run
from toolkit.dataset import DatasetConfig
from toolkit.dataset.rows import example_images
from toolkit.images import file_stat, load_image
from toolkit.store import SCHEMA_VERSION, CropRow, ImageRow, ItemRow, RunStore

EXACT = {"margin": 0.0, "min_margin_px": 0, "min_side": 1}


def _photo(path: Path, seed: int, size: tuple[int, int] = (240, 180), **save) -> Path:
    """A smooth random 'photo' (distinct seeds give pHashes far apart)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, **save)
    return path


def _add_item(
    store: RunStore, item_id: str, paths: list[Path], boxes: list[Box], position: int = 0
) -> None:
    rows = []
    for index, path in enumerate(paths):
        loaded = load_image(str(path))
        rows.append(
            ImageRow(item_id, index, str(path), loaded.sha256, *loaded.size, None,
                     file_stat(str(path)))
        )  # fmt: skip
    store.put_item(ItemRow(item_id, None, None, None, None, []), position, "fp", rows)
    store.set_boxes(item_id, "ref", boxes)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    (tmp_path / "src").mkdir()
    with RunStore(tmp_path / "run") as run:
        yield run


def test_a_reencoded_copy_is_a_duplicate_and_different_photos_are_kept(store, tmp_path):
    src = tmp_path / "src"
    first = _photo(src / "a.png", seed=1)
    copy = src / "a-q70.jpg"
    Image.open(first).convert("RGB").save(copy, quality=70)  # the same photo, re-encoded
    other = _photo(src / "b.png", seed=2)
    _add_item(store, "I", [first, copy, other], [Box(2, 10, 10, 40, 30, "text")])
    summary = crop_run(store, CropConfig(**EXACT))
    config_hash = CropConfig(**EXACT).config_hash()
    phashes = store.image_phashes("I", config_hash)
    assert phashes[1][1] == "image:0"  # the copy repeats the main photo
    assert phashes[0][1] is None and phashes[2][1] is None  # different photos are kept
    assert all(p is not None and len(p) == 16 for p, _ in phashes.values())
    (crop,) = store.crops("I", config_hash)
    assert crop.phash is not None and crop.duplicate_of is None  # a small crop is new content
    assert (summary.duplicates, summary.duplicate_originals, summary.duplicate_crops) == (1, 1, 0)
    assert summary.images_per_box_crop == [4] and summary.images_after == [3]
    # The dataset leaves the copy out (its examples list originals, then crops).
    images = example_images(store, "I", DatasetConfig(), config_hash)
    assert len(images) == 3
    assert np.array_equal(np.asarray(images[1]), _pixels(other))
    assert np.array_equal(np.asarray(images[2]), _pixels(store.run_dir / crop.path))
    # Only the originals: the copy is still a duplicate of the main photo.
    assert len(example_images(store, "I", DatasetConfig(strategy="originals"), config_hash)) == 2


def test_a_crop_covering_its_whole_photo_is_a_duplicate(store, tmp_path):
    photo = _photo(tmp_path / "src" / "a.png", seed=3, size=(200, 200))
    _add_item(store, "I", [photo], [Box(0, 0, 0, 200, 200, "label")])
    config = CropConfig(**EXACT)
    summary = crop_run(store, config)
    (crop,) = store.crops("I", config.config_hash())
    assert crop.region == (0, 0, 200, 200)
    assert crop.duplicate_of == "image:0"
    assert summary.duplicate_crops == 1 and summary.images_after == [1]
    assert summary.uncovered == 1 and summary.cut_by_budget == 0  # seen in the photo instead
    assert (store.run_dir / crop.path).is_file()  # kept on disk, not used
    images = example_images(store, "I", DatasetConfig(), config.config_hash())
    assert len(images) == 1
    # Crops only: the photo is not used, so the crop is.
    assert len(example_images(store, "I", DatasetConfig(strategy="crops"), config.config_hash()))
    # De-duplication off: the crop is used.
    off = CropConfig(**EXACT, phash_threshold=-1)
    assert crop_run(store, off).images_after == [2]
    (crop,) = store.crops("I", off.config_hash())
    assert crop.duplicate_of is None and crop.phash is None


def test_budget_keeps_main_photo_then_crops_then_photos(store, tmp_path):
    src = tmp_path / "src"
    photos = [_photo(src / f"{i}.png", seed=10 + i) for i in range(4)]
    boxes = [
        Box(1, 10, 10, 50, 40, "a"),
        Box(2, 100, 20, 150, 60, "b"),
        Box(3, 10, 100, 60, 130, "c"),  # image 3: two boxes, one crop
        Box(3, 70, 100, 110, 140, "d"),
    ]
    _add_item(store, "I", photos, boxes)
    config = CropConfig(**EXACT)
    summary = crop_run(store, config, image_budget=3)  # the dataset's budget, for the summary
    crops = store.crops("I", config.config_hash())
    assert [c.image for c in crops] == [1, 2, 3]
    assert summary.duplicates == 0
    assert summary.images_after == [3]  # main photo, crop of image 1, crop of image 2
    assert summary.uncovered == 2 and summary.cut_by_budget == 2  # image 3's crop was cut
    assert summary.images_per_box_crop == [8]
    images = example_images(store, "I", DatasetConfig(max_images_per_item=3), config.config_hash())
    expected = [_pixels(photos[0])] + [_pixels(store.run_dir / c.path) for c in crops[:2]]
    assert len(images) == 3
    for image, pixels in zip(images, expected, strict=True):
        assert np.array_equal(np.asarray(image), pixels)
    # A larger budget: every crop, then the other photos in catalog order.
    summary = crop_run(store, config, image_budget=9)
    assert summary.made == 0  # the budget is no crop setting: nothing is cut again
    assert summary.images_after == [7] and summary.uncovered == 0 and summary.cut_by_budget == 0


def _exif_rotated_jpeg(path: Path) -> Path:
    """Stored 300x200 with EXIF Orientation 6: upright 200x300."""
    rng = np.random.default_rng(5)
    raw = Image.fromarray(rng.integers(0, 255, size=(200, 300, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    raw.save(path, quality=95, exif=exif)
    return path


@pytest.mark.parametrize("overflow", ["pad", "image"])
def test_crop_pixels_are_the_oriented_source_region(store, tmp_path, overflow):
    path = _exif_rotated_jpeg(tmp_path / "src" / "rotated.jpg")
    oriented = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert oriented.shape == (300, 200, 3)
    boxes = [
        Box(0, 20, 30, 60, 70, "fits"),
        Box(0, 150, 10, 190, 290, "taller than the image is wide"),
    ]
    _add_item(store, "I", [path], boxes)
    config = CropConfig(**EXACT, strategy="per-box", overflow=overflow, fill=(1, 2, 3))
    crop_run(store, config)
    fits, tall = store.crops("I", config.config_hash())
    assert fits.region == (20, 30, 60, 70)
    assert np.array_equal(_pixels(store.run_dir / fits.path), oriented[30:70, 20:60])
    out = _pixels(store.run_dir / tall.path)
    if overflow == "pad":
        # a 280-pixel square centred across the 200-pixel width, padded with fill
        assert tall.region == (-40, 10, 240, 290)
        assert np.array_equal(out[:, 40:240], oriented[10:290, :])
        assert (out[:, :40] == (1, 2, 3)).all() and (out[:, 240:] == (1, 2, 3)).all()
    else:
        # the square clipped to the image: no padding at all
        assert tall.region == (0, 10, 200, 290)
        assert np.array_equal(out, oriented[10:290, :])


def test_rerun_makes_nothing_and_a_new_config_keeps_the_old_crops(store, tmp_path):
    src = tmp_path / "src"
    photos = [_photo(src / f"{i}.png", seed=20 + i) for i in range(2)]
    boxes = [Box(0, 10, 10, 40, 30), Box(0, 180, 130, 230, 170), Box(1, 50, 50, 90, 80)]
    _add_item(store, "I", photos, boxes)
    first = CropConfig(**EXACT)
    made = crop_run(store, first)
    assert (made.made, made.existing) == (2, 0)
    before = store.crops("I", first.config_hash())
    again = crop_run(store, first)
    assert (again.made, again.existing, again.errors) == (0, 2, [])
    assert store.crops("I", first.config_hash()) == before
    assert again.images_after == made.images_after
    second = CropConfig(**EXACT, strategy="per-box")
    more = crop_run(store, second)
    assert (more.made, more.existing, more.strategy) == (3, 0, "per-box")
    assert store.crops("I", first.config_hash()) == before  # the first config's crops stay
    assert len(store.crops("I", second.config_hash())) == 3
    assert len(store.crops("I")) == 5
    assert store.get_meta("crop_config_hash") == second.config_hash()
    for crop in store.crops("I"):
        assert (store.run_dir / crop.path).is_file()


def test_two_workers_store_the_same_crops(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    results = []
    for workers in (1, 2):
        with RunStore(tmp_path / f"run{workers}") as store:
            for n in range(6):
                photos = [_photo(src / f"{n}-{i}.png", seed=100 + 3 * n + i) for i in range(3)]
                boxes = [Box(i, 10 + n, 10, 60, 50) for i in range(3)]
                _add_item(store, f"I{n}", photos, boxes, position=n)
            summary = crop_run(store, CropConfig(**EXACT), workers=workers)
            crops = [
                (c.item_id, c.image, c.region, c.path, c.phash, c.duplicate_of)
                for item in store.items()
                for c in store.crops(item.item_id)
            ]
            results.append((summary.made, summary.images_after, crops))
    assert results[0] == results[1]
    assert results[0][0] == 18


V2_CROPS = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE crops (
    id INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL, image INTEGER NOT NULL,
    x1 INTEGER NOT NULL, y1 INTEGER NOT NULL, x2 INTEGER NOT NULL, y2 INTEGER NOT NULL,
    path TEXT NOT NULL, sha256 TEXT NOT NULL, strategy TEXT NOT NULL, config_hash TEXT NOT NULL,
    box_ids TEXT NOT NULL, created_at REAL NOT NULL,
    UNIQUE (item_id, image, config_hash));
INSERT INTO meta VALUES ('schema_version', '2');
INSERT INTO crops (item_id, image, x1, y1, x2, y2, path, sha256, strategy, config_hash, box_ids,
    created_at) VALUES ('A', 0, 0, 0, 10, 10, 'crops/old.png', 's', 'enclosing-square', 'h', '[1]', 0);
"""


def test_a_v2_store_is_migrated(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    conn = sqlite3.connect(run / "run.sqlite")
    conn.executescript(V2_CROPS)
    conn.close()
    with RunStore(run) as store:
        assert SCHEMA_VERSION == 3 and store.get_meta("schema_version") == "3"
        (old,) = store.crops("A")
        assert old == CropRow(
            "A", 0, (0, 0, 10, 10), "crops/old.png", "s", "enclosing-square", "h", [1]
        )
        assert old.phash is None and old.duplicate_of is None
        # v3: several crops of one image under one config (clustered, per-box)
        store.add_crop(CropRow("A", 0, (5, 5, 20, 20), "crops/new.png", "s", "per-box", "h", [2],
                               phash="00000000000000ff", duplicate_of="image:0"))  # fmt: skip
        assert [c.path for c in store.crops("A", "h")] == ["crops/old.png", "crops/new.png"]
        store.set_crop_duplicate("A", 0, "h", "crops/new.png", region=(0, 0, 10, 10))
        assert store.crops("A", "h")[0].duplicate_of == "crops/new.png"
        store.set_image_phashes("A", "h", {0: ("0000000000000000", None)})
        assert store.image_phashes("A", "h") == {0: ("0000000000000000", None)}
    with RunStore(run) as store:  # opening a v3 store again changes nothing
        assert len(store.crops("A")) == 2
