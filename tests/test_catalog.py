"""Tests of catalog ingest: every format, every kind of bad row, the run store, the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import toolkit.catalog.checks
import toolkit.catalog.ingest
from toolkit.catalog import (
    Catalog,
    Problem,
    ingest_catalog,
    inspect_item,
    load_catalog,
)
from toolkit.errors import CroptuneError
from toolkit.images import pixel_hash
from toolkit.store import RunStore

CROPTUNE = Path(sys.executable).parent / "croptune"

# Image files every catalog below can use: name -> (size, colour).
IMAGES = {
    "a1_0.png": ((40, 30), (200, 30, 30)),
    "a1_1.png": ((24, 16), (30, 200, 30)),
    "b2_0.png": ((20, 20), (30, 30, 200)),
    "good.png": ((40, 30), (90, 90, 90)),
}


def _image(name: str) -> Image.Image:
    size, colour = IMAGES[name]
    image = Image.new("RGB", size, colour)
    image.putpixel((0, 0), (255, 255, 255))  # not uniform: hashes depend on position too
    return image


def _write_images(root: Path) -> None:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name in IMAGES:
        _image(name).save(root / "img" / name)


def _jsonl(root: Path, records: list[dict[str, Any] | str], name: str = "catalog.jsonl") -> Path:
    """A JSONL catalog; str records are written as raw lines."""
    _write_images(root)
    path = root / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _csv(root: Path, records: list[dict[str, Any]]) -> Path:
    """A CSV catalog: images joined by '|', attributes and boxes as JSON text (or raw str)."""
    _write_images(root)
    path = root / "catalog.csv"
    columns = ["item_id", "images", "title", "category", "text", "attributes", "boxes"]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for record in records:
            row = {}
            for key in columns:
                value = record.get(key)
                if key == "images" and isinstance(value, list):
                    value = "|".join(value)
                elif key in ("attributes", "boxes") and not isinstance(value, str | None):
                    value = json.dumps(value)
                row[key] = "" if value is None else value
            writer.writerow(row)
    return path


def _parquet(root: Path, records: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write_images(root)
    path = root / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _dataset(root: Path, records: list[dict[str, Any]]) -> Path:
    from datasets import Dataset

    Dataset.from_list(records).save_to_disk(str(root))
    _write_images(root)  # image paths are relative to the dataset folder
    return root


def _dataset_dict(root: Path, records: list[dict[str, Any]]) -> Path:
    from datasets import Dataset, DatasetDict

    splits = {"train": records[:1], "test": records[1:]}
    DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(root))
    _write_images(root)
    return root


RECORDS: list[dict[str, Any]] = [
    {
        "item_id": "A1",
        "images": ["img/a1_0.png", "img/a1_1.png"],
        "title": "Kettle 1.7 l",
        "category": "kitchen",
        "attributes": {"attributes": {"brand": "Acme", "color": "red"}},
        "boxes": [
            {"image": 1, "xyxy": [2.0, 3.0, 20.0, 15.0], "label": "barcode"},
            {"image": 0, "xyxy": [0.0, 0.0, 10.0, 10.0]},  # no label
        ],
    },
    {
        "item_id": "B2",
        "images": ["img/b2_0.png"],
        "title": "Mug",
        "attributes": {"identifiers": {"gtin": "4006381333931"}},  # other keys than A1
        "boxes": [],
    },
]


@pytest.mark.parametrize(
    "write",
    [
        # One JSON object per line.
        pytest.param(_jsonl, id="jsonl"),
        # Images joined by '|', attributes and boxes as JSON text in their columns.
        pytest.param(_csv, id="csv"),
        # Parquet: images a list column, attributes and boxes nested structs.
        pytest.param(_parquet, id="parquet"),
        # A datasets folder from save_to_disk.
        pytest.param(_dataset, id="datasets-folder"),
        # A DatasetDict folder: both splits are read, in order.
        pytest.param(_dataset_dict, id="datasets-dict"),
    ],
)
def test_every_format_loads_the_same_items(
    tmp_path: Path, write: Callable[[Path, list[dict[str, Any]]], Path]
) -> None:
    root = tmp_path / "catalog"
    root.mkdir()
    catalog = load_catalog(write(root, RECORDS))

    assert catalog.problems == []
    assert [item.item_id for item in catalog.items] == ["A1", "B2"]
    a1, b2 = catalog.items
    resolved = [catalog.resolve(a1, ref) for ref in a1.images]
    assert resolved == [str((root / "img" / n).resolve()) for n in ("a1_0.png", "a1_1.png")]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in resolved)
    assert (a1.title, a1.category, a1.text) == ("Kettle 1.7 l", "kitchen", None)
    # Columnar formats pad missing keys with nulls: they must not leak into the item.
    assert a1.attributes == {"attributes": {"brand": "Acme", "color": "red"}}
    assert b2.attributes == {"identifiers": {"gtin": "4006381333931"}}
    assert [(b.image, b.xyxy, b.label) for b in a1.boxes] == [
        (1, (2.0, 3.0, 20.0, 15.0), "barcode"),
        (0, (0.0, 0.0, 10.0, 10.0), ""),
    ]
    assert b2.boxes == []
    inspected = inspect_item(catalog, a1)
    assert inspected.problems == []
    assert [(r.width, r.height) for r in inspected.images] == [(40, 30), (24, 16)]


# --- bad input ---------------------------------------------------------------------------

GOOD = {"item_id": "GOOD", "images": ["img/good.png"], "title": "fine"}


def _all_problems(catalog: Catalog) -> list[Problem]:
    """What `catalog validate` reports: load problems, then each item's image/box problems."""
    problems = list(catalog.problems)
    for item in catalog.items:
        problems += inspect_item(catalog, item).problems
    return problems


def _with_file(name: str, data: bytes) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "img" / name).write_bytes(data)

    return write


def _truncated_png() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _truncated_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _outside_file(root: Path) -> Path:
    """An image next to the catalog folder, not inside it."""
    path = root.parent / "outside.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    return path


def _nothing(root: Path) -> None:
    pass


BadCase = Callable[[Path], Path]


@pytest.mark.parametrize(
    ("prepare", "build", "where", "fragments", "n_problems"),
    [
        # An image file that does not exist: that image fails, then the item has none left.
        pytest.param(
            _nothing,
            lambda r: _jsonl(r, [{"item_id": "BAD", "images": ["img/missing.png"]}, GOOD]),
            "item BAD",
            ["image 0 (img/missing.png): file not found"],
            2,
            id="missing-image-file",
        ),
        # A file with an image name holding no image.
        pytest.param(
            _with_file("corrupt.jpg", b"\x00garbage" * 50),
            lambda r: _jsonl(r, [{"item_id": "BAD", "images": ["img/corrupt.jpg"]}, GOOD]),
            "item BAD",
            ["image 0 (img/corrupt.jpg): not an image"],
            2,
            id="corrupt-image",
        ),
        # A JPEG cut in half.
        pytest.param(
            _with_file("half.jpg", _truncated_jpeg()),
            lambda r: _jsonl(r, [{"item_id": "BAD", "images": ["img/half.jpg"]}, GOOD]),
            "item BAD",
            ["image 0 (img/half.jpg): corrupt or truncated image"],
            2,
            id="truncated-jpeg",
        ),
        # A PNG cut in half.
        pytest.param(
            _with_file("half.png", _truncated_png()),
            lambda r: _jsonl(r, [{"item_id": "BAD", "images": ["img/half.png"]}, GOOD]),
            "item BAD",
            ["image 0 (img/half.png): corrupt or truncated image"],
            2,
            id="truncated-png",
        ),
        # A relative path climbing out of the catalog folder is refused before any read.
        pytest.param(
            _outside_file,
            lambda r: _jsonl(r, [{"item_id": "BAD", "images": ["../outside.png"]}, GOOD]),
            "item BAD",
            ["image 0 path '../outside.png' leaves the catalog folder", "refused"],
            1,
            id="path-escapes-relative",
        ),
        # An absolute path outside the catalog folder likewise.
        pytest.param(
            _outside_file,
            lambda r: _jsonl(
                r, [{"item_id": "BAD", "images": [str(r.parent / "outside.png")]}, GOOD]
            ),
            "item BAD",
            ["image 0 path", "outside.png", "leaves the catalog folder", "refused"],
            1,
            id="path-escapes-absolute",
        ),
        # The second copy of an id is skipped and says which line it was on.
        pytest.param(
            _nothing,
            lambda r: _jsonl(
                r,
                [
                    {"item_id": "BAD", "images": ["img/good.png"], "title": "first"},
                    {"item_id": "BAD", "images": ["img/good.png"], "title": "second"},
                    GOOD,
                ],
            ),
            "item BAD",
            ["duplicate item_id (line 2); this copy is skipped"],
            1,
            id="duplicate-item-id",
        ),
        # A line that is not JSON: no id to name, so the line number is given.
        pytest.param(
            _nothing,
            lambda r: _jsonl(r, ['{"item_id": "BAD", "images": [', GOOD]),
            "line 1",
            ["not valid JSON"],
            1,
            id="malformed-json-line",
        ),
        # Valid JSON that is a list, not an object.
        pytest.param(
            _nothing,
            lambda r: _jsonl(r, ['["BAD", ["img/good.png"]]', GOOD]),
            "line 1",
            ["expected an object, got list"],
            1,
            id="json-list-line",
        ),
        # No item_id at all.
        pytest.param(
            _nothing,
            lambda r: _jsonl(r, [{"images": ["img/good.png"]}, GOOD]),
            "line 1",
            ["item_id: missing; every item needs item_id and images"],
            1,
            id="missing-item-id",
        ),
        # An item_id of blanks is no id: the line is named, not "item ".
        pytest.param(
            _nothing,
            lambda r: _jsonl(r, [{"item_id": "   ", "images": ["img/good.png"]}, GOOD]),
            "line 1",
            ["item_id: empty: an item_id must be a non-blank text"],
            1,
            id="blank-item-id",
        ),
        # A title that is not text: said in the catalog's terms, not pydantic's.
        pytest.param(
            _nothing,
            lambda r: _jsonl(
                r, [{"item_id": "BAD", "images": ["img/good.png"], "title": ["x"]}, GOOD]
            ),
            "item BAD",
            ["title: must be text, not a list"],
            1,
            id="title-not-text",
        ),
        # An empty images list.
        pytest.param(
            _nothing,
            lambda r: _jsonl(r, [{"item_id": "BAD", "images": []}, GOOD]),
            "item BAD",
            ["images: no images: an item needs at least one photo"],
            1,
            id="empty-images",
        ),
        # A box on image 2 of a one-image item: reported once, the item stays usable.
        pytest.param(
            _nothing,
            lambda r: _jsonl(
                r,
                [
                    {
                        "item_id": "BAD",
                        "images": ["img/good.png"],
                        "boxes": [{"image": 2, "xyxy": [1, 1, 5, 5]}],
                    },
                    GOOD,
                ],
            ),
            "item BAD",
            ["box [1.0, 1.0, 5.0, 5.0] refers to image 2 but the item has 1 images"],
            1,
            id="box-image-index-out-of-range",
        ),
        # A negative image index is a validation error of the box.
        pytest.param(
            _nothing,
            lambda r: _jsonl(
                r,
                [
                    {
                        "item_id": "BAD",
                        "images": ["img/good.png"],
                        "boxes": [{"image": -1, "xyxy": [1, 1, 5, 5]}],
                    },
                    GOOD,
                ],
            ),
            "item BAD",
            ["boxes.0.image: Input should be greater than or equal to 0"],
            1,
            id="box-negative-image-index",
        ),
        # A box entirely right of/below the 40x30 image is dropped, with the image size.
        pytest.param(
            _nothing,
            lambda r: _jsonl(
                r,
                [
                    {
                        "item_id": "BAD",
                        "images": ["img/good.png"],
                        "boxes": [{"image": 0, "xyxy": [50, 40, 60, 45]}],
                    },
                    GOOD,
                ],
            ),
            "item BAD",
            [
                "reference box [50.0, 40.0, 60.0, 45.0] on image 0 (40x30) lies outside the image; dropped"
            ],
            1,
            id="box-fully-outside",
        ),
        # x2 < x1: dropped, not silently swapped.
        pytest.param(
            _nothing,
            lambda r: _jsonl(
                r,
                [
                    {
                        "item_id": "BAD",
                        "images": ["img/good.png"],
                        "boxes": [{"image": 0, "xyxy": [20, 5, 10, 15]}],
                    },
                    GOOD,
                ],
            ),
            "item BAD",
            [
                "reference box [20.0, 5.0, 10.0, 15.0] on image 0 (40x30) has x2<x1 or y2<y1; "
                "dropped. Read as [x, y, width, height] it is [20.0, 5.0, 30.0, 20.0] in xyxy"
            ],
            1,
            id="box-x2-before-x1",
        ),
        # NaN (which Python's json accepts) in a box.
        pytest.param(
            _nothing,
            lambda r: _jsonl(
                r,
                [
                    '{"item_id": "BAD", "images": ["img/good.png"], '
                    '"boxes": [{"image": 0, "xyxy": [NaN, 1, 5, 5]}]}',
                    GOOD,
                ],
            ),
            "item BAD",
            ["reference box [nan, 1.0, 5.0, 5.0] on image 0 (40x30) has a non-finite coordinate"],
            1,
            id="box-nan",
        ),
        # Every image broken: one problem per image plus "no usable image".
        pytest.param(
            _with_file("corrupt.jpg", b"\x00garbage" * 50),
            lambda r: _jsonl(
                r, [{"item_id": "BAD", "images": ["img/missing.png", "img/corrupt.jpg"]}, GOOD]
            ),
            "item BAD",
            ["no usable image; the item is skipped"],
            3,
            id="every-image-broken",
        ),
        # CSV: the attributes column is not valid JSON.
        pytest.param(
            _nothing,
            lambda r: _csv(
                r,
                [
                    {"item_id": "BAD", "images": "img/good.png", "attributes": '{"brand": '},
                    GOOD,
                ],
            ),
            "item BAD",
            ["attributes: not valid JSON"],
            1,
            id="csv-bad-json-attributes",
        ),
        # CSV: the boxes column is not valid JSON.
        pytest.param(
            _nothing,
            lambda r: _csv(
                r, [{"item_id": "BAD", "images": "img/good.png", "boxes": "[{image: 0}]"}, GOOD]
            ),
            "item BAD",
            ["boxes: not valid JSON"],
            1,
            id="csv-bad-json-boxes",
        ),
        # CSV row without an id is named by its row number (header is row 1).
        pytest.param(
            _nothing,
            lambda r: _csv(r, [{"images": "img/good.png"}, GOOD]),
            "row 2",
            ["item_id: missing; every item needs item_id and images"],
            1,
            id="csv-missing-item-id",
        ),
    ],
)
def test_bad_item_is_reported_and_good_item_still_loads(
    tmp_path: Path,
    prepare: Callable[[Path], Any],
    build: BadCase,
    where: str,
    fragments: list[str],
    n_problems: int,
) -> None:
    root = tmp_path / "catalog"
    root.mkdir()
    prepare(root)
    catalog = load_catalog(build(root))
    problems = _all_problems(catalog)

    assert len(problems) == n_problems, [str(p) for p in problems]
    assert all(p.where == where for p in problems), [str(p) for p in problems]
    text = [str(p) for p in problems]
    for fragment in fragments:
        assert any(line.startswith(f"{where}: ") and fragment in line for line in text), text
    good = [item for item in catalog.items if item.item_id == "GOOD"]
    assert len(good) == 1
    inspected = inspect_item(catalog, good[0])
    assert inspected.usable and inspected.problems == []


def test_duplicate_id_keeps_the_first_copy(tmp_path: Path) -> None:
    first = {"item_id": "DUP", "images": ["img/good.png"], "title": "first"}
    second = {"item_id": "DUP", "images": ["img/a1_0.png"], "title": "second"}
    catalog = load_catalog(_jsonl(tmp_path, [first, GOOD, second]))
    assert [(i.item_id, i.title) for i in catalog.items] == [("DUP", "first"), ("GOOD", "fine")]
    assert [str(p) for p in catalog.problems] == [
        "item DUP: duplicate item_id (line 3); this copy is skipped"
    ]


@pytest.mark.parametrize(
    "reference",
    [
        # A relative path climbing out of the catalog folder.
        pytest.param("../outside.png", id="relative"),
        # An absolute path elsewhere (filled in by the test).
        pytest.param(None, id="absolute"),
    ],
)
def test_outside_paths_are_accepted_when_allowed(tmp_path: Path, reference: str | None) -> None:
    root = tmp_path / "catalog"
    root.mkdir()
    outside = _outside_file(root)
    reference = reference or str(outside)
    path = _jsonl(root, [{"item_id": "OUT", "images": [reference]}])

    assert load_catalog(path).items == []
    catalog = load_catalog(path, allow_outside=True)
    assert catalog.problems == []
    (item,) = catalog.items
    assert catalog.resolve(item, reference) == str(outside.resolve())
    inspected = inspect_item(catalog, item)
    assert inspected.usable and inspected.problems == []
    assert (inspected.images[0].width, inspected.images[0].height) == (8, 8)


@pytest.mark.parametrize(
    ("xyxy", "clipped", "outside"),
    [
        # Sticks out left and top: clipped to the image edge at 0 (105 of 225 px² outside).
        pytest.param([-5, -3, 10, 12], (0.0, 0.0, 10.0, 12.0), "47%", id="left-top"),
        # Sticks out right and bottom of the 40x30 image: clipped to 40 and 30.
        pytest.param([30, 20, 55, 45], (30.0, 20.0, 40.0, 30.0), "84%", id="right-bottom"),
        # Larger than the image on every side: becomes the whole image.
        pytest.param([-1, -1, 100, 100], (0.0, 0.0, 40.0, 30.0), "88%", id="covers-all"),
    ],
)
def test_partly_outside_reference_box_is_clipped_and_reported(
    tmp_path: Path, xyxy: list[float], clipped: tuple[float, ...], outside: str
) -> None:
    record = {
        "item_id": "CLIP",
        "images": ["img/good.png"],
        "boxes": [{"image": 0, "xyxy": xyxy, "label": "brand"}],
    }
    catalog = load_catalog(_jsonl(tmp_path, [record]))
    inspected = inspect_item(catalog, catalog.items[0])
    assert [(p.level, str(p)) for p in inspected.problems] == [
        (
            "warning",
            f"item CLIP: reference box {[float(v) for v in xyxy]} on image 0 (40x30) is partly "
            f"outside the image: clipped to {list(clipped)} ({outside} of its area was outside)",
        )
    ]
    assert [(b.image, b.xyxy, b.label, b.source) for b in inspected.boxes] == [
        (0, clipped, "brand", "reference")
    ]


def test_one_broken_image_leaves_the_item_usable(tmp_path: Path) -> None:
    record = {
        "item_id": "HALF",
        "images": ["img/missing.png", "img/a1_1.png"],
        "boxes": [
            {"image": 0, "xyxy": [1, 1, 5, 5]},  # on the broken image
            {"image": 1, "xyxy": [1, 1, 5, 5]},
        ],
    }
    catalog = load_catalog(_jsonl(tmp_path, [record]))
    inspected = inspect_item(catalog, catalog.items[0])

    assert inspected.usable
    broken, good = inspected.images
    assert (broken.index, broken.error, broken.sha256, broken.width) == (
        0,
        "file not found",
        None,
        None,
    )
    assert not broken.usable
    assert (good.index, good.error, good.width, good.height) == (1, None, 24, 16)
    assert good.sha256 == pixel_hash(_image("a1_1.png"))
    assert [str(p) for p in inspected.problems] == [
        "item HALF: image 0 (img/missing.png): file not found",
        "item HALF: reference box [1.0, 1.0, 5.0, 5.0] refers to image 0, which is not usable",
    ]
    assert [b.image for b in inspected.boxes] == [1]


@pytest.mark.parametrize(
    ("make_path", "fragments"),
    [
        # A file type croptune does not read.
        pytest.param(
            lambda d: _touch(d / "catalog.txt"), ["unknown format '.txt'"], id="unknown-extension"
        ),
        # A path that does not exist.
        pytest.param(lambda d: d / "nope.jsonl", ["nope.jsonl", "does not exist"], id="missing"),
        # A folder that is not a save_to_disk dataset.
        pytest.param(lambda d: d, ["is not a dataset saved with save_to_disk"], id="plain-folder"),
        # A JSON array instead of JSON Lines: one message with the conversion, not one per line.
        pytest.param(
            lambda d: _touch(
                d / "catalog.json", b'[{"item_id": "A", "images": ["a.png"]},\n {"item_id": "B"}]'
            ),
            ["is a JSON array; croptune reads JSON Lines", "> catalog.jsonl"],
            id="json-array",
        ),
        # A CSV with other column names: the columns found and the ones expected, once.
        pytest.param(
            lambda d: _touch(d / "catalog.csv", b"id,image_paths\nA,a.png\nB,b.png\n"),
            ["found columns id,image_paths; expected item_id,images", "missing: item_id, images"],
            id="csv-other-columns",
        ),
        # A .parquet file that is not Parquet.
        pytest.param(
            lambda d: _touch(d / "catalog.parquet", b"PAR? no"),
            ["is not a readable Parquet file"],
            id="bad-parquet",
        ),
    ],
)
def test_unreadable_catalog_is_a_croptune_error(
    tmp_path: Path, make_path: Callable[[Path], Path], fragments: list[str]
) -> None:
    path = make_path(tmp_path)
    with pytest.raises(CroptuneError) as caught:
        load_catalog(path)
    for fragment in fragments:
        assert fragment in str(caught.value)


def _touch(path: Path, data: bytes = b"item_id\n") -> Path:
    path.write_bytes(data)
    return path


# --- ingest into a run store -------------------------------------------------------------


def test_ingest_stores_good_items_and_records_problems(tmp_path: Path) -> None:
    catalog = load_catalog(
        _jsonl(
            tmp_path / "cat",
            [
                RECORDS[0],
                {"item_id": "BAD", "images": ["img/missing.png"]},
                "{not json",
                RECORDS[1],
            ],
        )
    )
    with RunStore(tmp_path / "run") as store:
        summary = ingest_catalog(catalog, store)

        # Dropped: BAD (no usable image) and line 3, which never became an item (issue 14).
        assert (summary.stored, summary.unchanged, summary.dropped) == (2, 0, 2)
        assert [str(p) for p in summary.problems] == [
            "line 3: not valid JSON: Expecting property name enclosed in double quotes at column 2",
            "item BAD: image 0 (img/missing.png): file not found",
            "item BAD: no usable image; the item is skipped",
        ]
        items = list(store.items())
        assert [i.item_id for i in items] == ["A1", "B2"]
        assert items[0].title == "Kettle 1.7 l"
        assert items[0].reference_attributes == {"attributes": {"brand": "Acme", "color": "red"}}
        assert items[0].reference_boxes == [
            {"image": 1, "xyxy": [2.0, 3.0, 20.0, 15.0], "label": "barcode"},
            {"image": 0, "xyxy": [0.0, 0.0, 10.0, 10.0], "label": ""},
        ]
        images = store.images("A1")
        assert [(r.index, r.width, r.height, r.error) for r in images] == [
            (0, 40, 30, None),
            (1, 24, 16, None),
        ]
        assert [r.sha256 for r in images] == [
            pixel_hash(_image("a1_0.png")),
            pixel_hash(_image("a1_1.png")),
        ]
        assert images[0].uri == str((tmp_path / "cat" / "img" / "a1_0.png").resolve())
        assert store.images("BAD") == []
        assert [e["message"] for e in store.errors(item_id="BAD")] == [
            "image 0 (img/missing.png): file not found",
            "no usable image; the item is skipped",
        ]
        unnamed = [e for e in store.errors(stage="ingest") if e["item_id"] is None]
        assert [e["message"] for e in unnamed] == [str(summary.problems[0])]


def _clean_catalog(root: Path, title_b2: str = "Mug") -> Catalog:
    records = [RECORDS[0], {**RECORDS[1], "title": title_b2}, GOOD]
    return load_catalog(_jsonl(root, records))


def test_second_ingest_of_unchanged_catalog_decodes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RunStore(tmp_path / "run") as store:
        first = ingest_catalog(_clean_catalog(tmp_path / "cat"), store)
        assert (first.stored, first.unchanged, first.dropped) == (3, 0, 0)

        def refuse(uri: str, **kwargs: object) -> None:
            raise AssertionError(f"decoded {uri} again")

        monkeypatch.setattr(toolkit.catalog.checks, "load_image", refuse)
        second = ingest_catalog(_clean_catalog(tmp_path / "cat"), store)
        assert (second.stored, second.unchanged, second.dropped) == (0, 3, 0)
        assert second.problems == []
        assert [i.item_id for i in store.items()] == ["A1", "B2", "GOOD"]


def test_changed_title_reingests_only_that_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RunStore(tmp_path / "run") as store:
        ingest_catalog(_clean_catalog(tmp_path / "cat"), store)
        decoded: list[str] = []
        real = toolkit.catalog.checks.load_image

        def counting(uri: str, **kwargs: Any) -> Any:
            decoded.append(Path(uri).name)
            return real(uri, **kwargs)

        monkeypatch.setattr(toolkit.catalog.checks, "load_image", counting)
        summary = ingest_catalog(_clean_catalog(tmp_path / "cat", title_b2="Mug, 350 ml"), store)

        assert (summary.stored, summary.unchanged, summary.dropped) == (1, 2, 0)
        assert decoded == ["b2_0.png"]
        assert [(i.item_id, i.title) for i in store.items()] == [
            ("A1", "Kettle 1.7 l"),
            ("B2", "Mug, 350 ml"),
            ("GOOD", "fine"),
        ]
        assert store.images("B2")[0].sha256 == pixel_hash(_image("b2_0.png"))


# --- CLI ---------------------------------------------------------------------------------


def _croptune(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CROPTUNE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_cli_validate_clean_catalog(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, RECORDS)
    result = _croptune("catalog", "validate", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{path}: 2 items, 3 images, no problems"]
    assert "Traceback" not in result.stderr


def test_cli_validate_reports_each_problem_and_exits_1(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path,
        [
            RECORDS[0],
            {"item_id": "BAD", "images": ["img/missing.png"]},
            "{not json",
            {
                "item_id": "BOX",
                "images": ["img/good.png"],
                "boxes": [{"image": 0, "xyxy": [9, 0, 1, 5]}],
            },
        ],
    )
    result = _croptune("catalog", "validate", path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "line 3: not valid JSON: Expecting property name enclosed in double quotes at column 2",
        "item BAD: image 0 (img/missing.png): file not found",
        "item BAD: no usable image; the item is skipped",
        "item BOX: reference box [9.0, 0.0, 1.0, 5.0] on image 0 (40x30) has x2<x1 or y2<y1; "
        "dropped. Read as [x, y, width, height] it is [9.0, 0.0, 10.0, 5.0] in xyxy: croptune's "
        "boxes are [x1, y1, x2, y2]",
    ]
    assert "4 problem(s)" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_validate_missing_catalog_is_one_paragraph(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    result = _croptune("catalog", "validate", path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"croptune: catalog {path} does not exist\n"
