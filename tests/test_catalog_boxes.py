"""Reference boxes in the wrong convention or shape, catalogs with other column names, and
reference attributes off the schema: `croptune catalog validate` names each one, `label`
applies the same checks, and the other items are untouched."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from croptune.cli import app
from toolkit.catalog import inspect_item, load_catalog
from toolkit.errors import CroptuneError
from toolkit.store import RunStore

# The catalog's own labels as the teacher (no key, no server), as in the starter configs.
REFERENCE_TEACHER = {"name": "reference", "role": "both", "kind": "reference", "coords": "pixels"}
# The untouched item of every catalog below: one box, (80, 60, 160, 120) in pixels of big.png.
GOOD_PIXELS = (80.0, 60.0, 160.0, 120.0)
GOOD_BOX = {
    "pixels": [80, 60, 160, 120],
    "norm1": [0.1, 0.1, 0.2, 0.2],
    "norm1000": [100] * 2 + [200] * 2,
}
HINT = (
    ". It fits the image read as {reading}: if that is the catalog's convention, declare it: "
    "box_convention: {first} in the label config, --box-convention {first} on `croptune "
    "catalog validate`"
)
NORM1 = "norm1 (0..1 fractions of the image)"
NORM1000 = "norm1000 (0..1000 per axis, Qwen style)"
PIXELS = "pixels (pixels of the oriented image)"


def _photo(path: Path, size: tuple[int, int]) -> None:
    """A photo that is not uniform (its hash depends on every pixel's place)."""
    width, height = size
    ramp = np.linspace(0, 255, width * height, dtype=np.float64).reshape(height, width)
    Image.fromarray(np.stack([ramp, ramp[::-1], np.full_like(ramp, 90)], -1).astype(np.uint8)).save(
        path
    )


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "catalog"
    (folder / "img").mkdir(parents=True)
    _photo(folder / "img" / "big.png", (800, 600))
    _photo(folder / "img" / "small.png", (640, 480))
    return folder


def _item(xyxy: list[float] | None = None, image: str = "big.png", **fields: Any) -> dict:
    """Item T, the one each case is about."""
    boxes = [] if xyxy is None else [{"image": 0, "xyxy": xyxy, "label": "barcode"}]
    return {"item_id": "T", "images": [f"img/{image}"], "boxes": boxes, **fields}


def _good(convention: str = "pixels") -> dict:
    return {
        "item_id": "GOOD",
        "images": ["img/big.png"],
        "boxes": [{"image": 0, "xyxy": GOOD_BOX[convention]}],
    }


def _jsonl(folder: Path, records: list[dict]) -> Path:
    path = folder / "catalog.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _csv(folder: Path, records: list[dict], names: dict[str, str]) -> Path:
    """A CSV catalog whose columns are named by `names` (croptune field -> column)."""
    path = folder / "catalog.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([names.get(f, f) for f in ("item_id", "images", "boxes")])
        for r in records:
            writer.writerow([r["item_id"], "|".join(r["images"]), json.dumps(r["boxes"])])
    return path


def _parquet(folder: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "catalog.parquet"
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _dataset(folder: Path, records: list[dict]) -> Path:
    """A `datasets` folder (save_to_disk); its image paths are relative to it."""
    from datasets import Dataset

    path = folder / "dataset"
    Dataset.from_list(records).save_to_disk(str(path))
    (folder / "img").rename(path / "img")
    return path


def _validate(*args: str) -> tuple[int, str, str]:
    """`croptune catalog validate ARGS` in process: exit code, stdout, stderr as the console
    script gives them (its entry point prints a CroptuneError as `croptune: ...`, exit 1)."""
    result = CliRunner().invoke(app, ["--no-progress", "catalog", "validate", *args])
    if isinstance(result.exception, CroptuneError):
        return 1, result.stdout, result.stderr + f"croptune: {result.exception}\n"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    return result.exit_code, result.stdout, result.stderr


JSONL_NAMES = {"item_id": "sku", "images": "photos"}
CSV_NAMES = {"item_id": "id", "images": "image_paths"}


def _renamed(record: dict, names: dict[str, str]) -> dict:
    return {names.get(k, k): v for k, v in record.items()}


# (records in croptune's names, catalog format, field names the file uses, validate's flags,
#  exit code, the exact lines on stdout, the exact last line (stdout on 0, stderr on 1),
#  item T's pixel boxes after loading with those flags, or None when the file is refused)
CASES = [
    # norm1 declared: converted to pixels, counted, nothing to complain about.
    pytest.param(
        [_item([0.25, 0.5, 0.75, 1.0]), _good("norm1")], "jsonl", {}, ["--box-convention", "norm1"],
        0, [],
        "{path}: 2 items, 2 images, 2 reference box(es) converted from norm1 to pixels, no problems",
        [(200.0, 300.0, 600.0, 600.0)],
        id="norm1-declared",
    ),
    # norm1 not declared on an 800x600 photo: named, dropped, norm1 suggested.
    pytest.param(
        [_item([0.25, 0.5, 0.75, 1.0]), _good()], "jsonl", {}, [],
        1,
        ["item T: reference box [0.25, 0.5, 0.75, 1.0] on image 0 (800x600) has every coordinate "
         "<= 1: as pixels, a box under one pixel in size; dropped"
         + HINT.format(reading=NORM1, first="norm1")],
        "1 problem(s) in {path} (2 items, 2 images)",
        [],
        id="norm1-undeclared",
    ),
    # norm1000 declared (Qwen style): converted.
    pytest.param(
        [_item([250, 500, 750, 1000]), _good("norm1000")], "jsonl", {}, ["--box-convention", "norm1000"],
        0, [],
        "{path}: 2 items, 2 images, 2 reference box(es) converted from norm1000 to pixels, no problems",
        [(200.0, 300.0, 600.0, 600.0)],
        id="norm1000-declared",
    ),
    # 0..1000 coordinates on a 640x480 photo, taken as pixels: clipped, but named as an error
    # with norm1000 suggested (it sticks out by far more than rounding).
    pytest.param(
        [_item([100, 200, 900, 950], image="small.png"), _good()], "jsonl", {}, [],
        1,
        ["item T: reference box [100.0, 200.0, 900.0, 950.0] on image 0 (640x480) is partly outside "
         "the image: clipped to [100.0, 200.0, 640.0, 480.0] (75% of its area was outside)"
         + HINT.format(reading=NORM1000, first="norm1000")],
        "1 problem(s) in {path} (2 items, 2 images)",
        [(100.0, 200.0, 640.0, 480.0)],
        id="norm1000-undeclared",
    ),
    # Pixel boxes in a catalog declared norm1: outside, dropped; both readings that fit named.
    pytest.param(
        [_item([80, 60, 160, 120]), _good("norm1")], "jsonl", {}, ["--box-convention", "norm1"],
        1,
        ["item T: reference box [80.0, 60.0, 160.0, 120.0] (norm1; [64000.0, 36000.0, 128000.0, "
         "72000.0] in pixels) on image 0 (800x600) lies outside the image; dropped"
         + HINT.format(reading=f"{PIXELS} or as {NORM1000}", first="pixels")],
        "1 problem(s) in {path} (2 items, 2 images, 1 reference box(es) converted from norm1 to pixels)",
        [],
        id="pixels-declared-as-norm1",
    ),
    # Zero area: dropped.
    pytest.param(
        [_item([10, 10, 10, 50]), _good()], "jsonl", {}, [],
        1,
        ["item T: reference box [10.0, 10.0, 10.0, 50.0] on image 0 (800x600) has zero area "
         "(x1 == x2 or y1 == y2); dropped"],
        "1 problem(s) in {path} (2 items, 2 images)",
        [],
        id="zero-area",
    ),
    # A little past the right and bottom edges: clipped, reported with how much, kept (exit 0).
    pytest.param(
        [_item([700, 500, 810, 610]), _good()], "jsonl", {}, [],
        0,
        ["item T: reference box [700.0, 500.0, 810.0, 610.0] on image 0 (800x600) is partly outside "
         "the image: clipped to [700.0, 500.0, 800.0, 600.0] (17% of its area was outside)"],
        "{path}: 2 items, 2 images, no problems, 1 warning(s) above (kept, changed as said)",
        [(700.0, 500.0, 800.0, 600.0)],
        id="partly-outside-clipped",
    ),
    # Entirely right of and below the photo: dropped (no convention fits it either).
    pytest.param(
        [_item([1200, 900, 1300, 1000]), _good()], "jsonl", {}, [],
        1,
        ["item T: reference box [1200.0, 900.0, 1300.0, 1000.0] on image 0 (800x600) lies outside "
         "the image; dropped"],
        "1 problem(s) in {path} (2 items, 2 images)",
        [],
        id="fully-outside-dropped",
    ),
    # x2 < x1: an [x, y, width, height] box given as xyxy; its xyxy reading is shown.
    pytest.param(
        [_item([300, 200, 100, 50]), _good()], "jsonl", {}, [],
        1,
        ["item T: reference box [300.0, 200.0, 100.0, 50.0] on image 0 (800x600) has x2<x1 or "
         "y2<y1; dropped. Read as [x, y, width, height] it is [300.0, 200.0, 400.0, 250.0] in "
         "xyxy: croptune's boxes are [x1, y1, x2, y2]"],
        "1 problem(s) in {path} (2 items, 2 images)",
        [],
        id="x2-before-x1",
    ),
    # A CSV with its own column names: one message with the mapping to pass, not one per row.
    pytest.param(
        [_item([10, 10, 50, 50]), _good()], "csv", CSV_NAMES, [],
        1, [],
        "croptune: catalog {path}: found columns id,image_paths,boxes; expected item_id,images "
        "(missing: item_id, images), optionally title,category,text,attributes,boxes. Rename "
        "them, or map yours: --column item_id=id --column images=image_paths on `croptune "
        "catalog validate`, columns: {{item_id: id, images: image_paths}} in the label config "
        "(images: a list of photo paths, or paths joined by '|')",
        None,
        id="csv-other-columns",
    ),
    # The same CSV with the mapping: every row loads.
    pytest.param(
        [_item([10, 10, 50, 50]), _good()], "csv", CSV_NAMES,
        ["--column", "item_id=id", "--column", "images=image_paths"],
        0, [], "{path}: 2 items, 2 images, no problems", [(10.0, 10.0, 50.0, 50.0)],
        id="csv-columns-mapped",
    ),
    # JSON Lines with other field names: the same single message, in terms of fields.
    pytest.param(
        [_item([10, 10, 50, 50]), _good()], "jsonl", JSONL_NAMES, [],
        1, [],
        "croptune: catalog {path}: found fields boxes,photos,sku; expected item_id,images "
        "(missing: item_id, images), optionally title,category,text,attributes,boxes. Rename "
        "them, or map yours: --column item_id=sku --column images=photos on `croptune catalog "
        "validate`, columns: {{item_id: sku, images: photos}} in the label config (images: a "
        "list of photo paths, or paths joined by '|')",
        None,
        id="jsonl-other-fields",
    ),
    # The same JSON Lines with the mapping.
    pytest.param(
        [_item([10, 10, 50, 50]), _good()], "jsonl", JSONL_NAMES,
        ["--column", "item_id=sku", "--column", "images=photos"],
        0, [], "{path}: 2 items, 2 images, no problems", [(10.0, 10.0, 50.0, 50.0)],
        id="jsonl-fields-mapped",
    ),
    # A mapping naming a column the file does not have: said once, with what it has.
    pytest.param(
        [_item([10, 10, 50, 50]), _good()], "csv", CSV_NAMES,
        ["--column", "item_id=sku", "--column", "images=image_paths"],
        1, [],
        "croptune: catalog {path}: column mapping item_id=sku names columns the catalog does not "
        "have; found columns id,image_paths,boxes",
        None,
        id="mapping-names-a-missing-column",
    ),
    # Parquet with other column names: the same single message, before any row is read.
    pytest.param(
        [_item([10, 10, 50, 50]), _good()], "parquet", JSONL_NAMES, [],
        1, [],
        "croptune: catalog {path}: found columns sku,photos,boxes; expected item_id,images "
        "(missing: item_id, images), optionally title,category,text,attributes,boxes. Rename "
        "them, or map yours: --column item_id=sku --column images=photos on `croptune catalog "
        "validate`, columns: {{item_id: sku, images: photos}} in the label config (images: a "
        "list of photo paths, or paths joined by '|')",
        None,
        id="parquet-other-columns",
    ),
    # The same Parquet file with the mapping.
    pytest.param(
        [_item([10, 10, 50, 50]), _good()], "parquet", JSONL_NAMES,
        ["--column", "item_id=sku", "--column", "images=photos"],
        0, [], "{path}: 2 items, 2 images, no problems", [(10.0, 10.0, 50.0, 50.0)],
        id="parquet-columns-mapped",
    ),
    # A `datasets` folder with other column names, mapped.
    pytest.param(
        [_item([10, 10, 50, 50]), _good()], "dataset", JSONL_NAMES,
        ["--column", "item_id=sku", "--column", "images=photos"],
        0, [], "{path}: 2 items, 2 images, no problems", [(10.0, 10.0, 50.0, 50.0)],
        id="dataset-columns-mapped",
    ),
    # Reference attributes with a field no schema group has: named per item, an error.
    pytest.param(
        [_item(attributes={"identifiers": {"gtin": "4006381333931"}, "shoe_size": "42"}), _good()],
        "jsonl", {}, [],
        1,
        ["item T: reference attributes: unknown field 'shoe_size' dropped (no group has it)"],
        "1 problem(s) in {path} (2 items, 2 images)",
        [],
        id="attributes-unknown-field",
    ),
    # A field of a group given flat: it will be placed in its group, and validate says so.
    pytest.param(
        [_item(attributes={"brand": "Acme", "identifiers": {"gtin": "4006381333931"}}), _good()],
        "jsonl", {}, [],
        0,
        ["item T: reference attributes: field 'brand' given at the top level: placed in group "
         "'attributes'"],
        "{path}: 2 items, 2 images, no problems, 1 warning(s) above (kept, changed as said)",
        [],
        id="attributes-flat-field-mapped",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("records", "fmt", "names", "args", "code", "lines", "last", "target_boxes"), CASES
)
def test_validate_names_each_problem(
    tmp_path: Path,
    records: list[dict],
    fmt: str,
    names: dict[str, str],
    args: list[str],
    code: int,
    lines: list[str],
    last: str,
    target_boxes: list[tuple[float, ...]] | None,
) -> None:
    folder = _folder(tmp_path)
    renamed = [_renamed(r, names) for r in records]
    if fmt == "csv":
        path = _csv(folder, records, names)
    elif fmt == "parquet":
        path = _parquet(folder, renamed)
    elif fmt == "dataset":
        path = _dataset(folder, renamed)
    else:
        path = _jsonl(folder, renamed)

    exit_code, out, err = _validate(str(path), *args)

    assert exit_code == code, (out, err)
    expected_last = last.format(path=path)
    if code == 0:
        assert out.splitlines() == [*lines, expected_last]
        assert err == ""
    else:
        assert out.splitlines() == lines
        assert err.splitlines() == [expected_last]
    if target_boxes is None:
        return
    # The same options load the same catalog: T as validated, GOOD untouched.
    options: dict[str, Any] = {"box_convention": "pixels", "columns": {}}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag == "--box-convention":
            options["box_convention"] = value
        else:
            target, column = value.split("=")
            options["columns"][target] = column
    catalog = load_catalog(path, **options)
    inspected = {item.item_id: inspect_item(catalog, item) for item in catalog.items}
    assert list(inspected) == ["T", "GOOD"]
    assert [b.xyxy for b in inspected["T"].boxes] == target_boxes
    good = inspected["GOOD"]
    assert good.problems == [] and [b.xyxy for b in good.boxes] == [GOOD_PIXELS]
    assert good.boxes[0].source == "reference"


def test_validate_takes_the_label_configs_schema_and_catalog_options(tmp_path: Path) -> None:
    """--config reads the schema, box_convention and columns `croptune label` will use."""
    folder = _folder(tmp_path)
    records = [
        _item([0.25, 0.5, 0.75, 1.0], attributes={"name": "Kettle"}),
        _good("norm1"),
    ]
    path = _jsonl(folder, [_renamed(r, JSONL_NAMES) for r in records])
    # A schema where `name` is in two groups: a flat `name` cannot be placed.
    schema = tmp_path / "two-names.yaml"
    schema.write_text(
        yaml.safe_dump(
            {"name": "two-names", "groups": {"product": {"name": {}}, "maker": {"name": {}}}},
            sort_keys=False,
        )
    )
    config = tmp_path / "label.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "teachers": [REFERENCE_TEACHER],
                "schema": str(schema),
                "box_convention": "norm1",
                "columns": JSONL_NAMES,
            }
        )
    )
    ambiguous = (
        "item T: reference attributes: field 'name' at the top level fits groups product, "
        "maker; dropped"
    )

    code, out, err = _validate(str(path), "--config", str(config))
    assert code == 1, (out, err)
    assert out.splitlines() == [ambiguous]
    assert err.splitlines() == [
        f"1 problem(s) in {path} (2 items, 2 images, 2 reference box(es) converted from norm1 "
        "to pixels)"
    ]
    # A flag overrides the config: the built-in schema places `name` in its one group.
    code, out, _ = _validate(str(path), "--config", str(config), "--schema", "compliance")
    assert code == 0
    assert out.splitlines()[0] == (
        "item T: reference attributes: field 'name' given at the top level: placed in group "
        "'attributes'"
    )


def test_a_bad_column_flag_or_convention_is_one_message(tmp_path: Path) -> None:
    path = _jsonl(_folder(tmp_path), [_good()])
    for args, message in [
        (
            ["--column", "item_id"],
            "croptune: --column 'item_id': give FIELD=COLUMN, e.g. --column item_id=id "
            "(FIELD is croptune's name, COLUMN the catalog's)",
        ),
        (
            ["--column", "sku=id"],
            "croptune: column mapping: 'sku' is not a catalog field; map onto item_id, images, "
            "title, category, text, attributes, boxes",
        ),
        (
            ["--box-convention", "xywh"],
            "croptune: unknown box convention 'xywh'; use one of pixels, norm1, norm1000",
        ),
    ]:
        code, out, err = _validate(str(path), *args)
        assert (code, out, err.splitlines()) == (1, "", [message]), args


def _marked_photo(path: Path, size: tuple[int, int], rect: tuple[int, int, int, int]) -> None:
    """A dark photo with one red rectangle at rect (pixels, xyxy)."""
    array = np.full((size[1], size[0], 3), 40, dtype=np.uint8)
    array[:, :, 1] = np.arange(size[0], dtype=np.uint8)[None, :] // 8  # not uniform
    x1, y1, x2, y2 = rect
    array[y1:y2, x1:x2] = (255, 0, 0)
    Image.fromarray(array).save(path)


def test_a_norm1_catalog_labeled_by_the_reference_teacher_is_cut_at_the_right_pixels(
    tmp_path: Path,
) -> None:
    """End to end: boxes declared norm1 in the label config are stored and cropped in pixels;
    the checks `validate` runs name the same boxes at label time."""
    folder = tmp_path / "catalog"
    (folder / "img").mkdir(parents=True)
    rects = {"R": ((400, 300), (100, 150, 200, 210)), "S": ((320, 240), (160, 24, 240, 96))}
    records = []
    for item_id, (size, rect) in rects.items():
        _marked_photo(folder / "img" / f"{item_id}.png", size, rect)
        norm = [rect[0] / size[0], rect[1] / size[1], rect[2] / size[0], rect[3] / size[1]]
        records.append(
            {"item_id": item_id, "images": [f"img/{item_id}.png"],
             "attributes": {"attributes": {"brand": item_id}},
             "boxes": [{"image": 0, "xyxy": norm, "label": "mark"}]}
        )  # fmt: skip
    _marked_photo(folder / "img" / "E.png", (400, 300), (0, 0, 1, 1))
    records.append(  # sticks out past the bottom-right corner: clipped and said so
        {"item_id": "E", "images": ["img/E.png"], "attributes": {"attributes": {"brand": "E"}},
         "boxes": [{"image": 0, "xyxy": [0.9, 0.9, 1.05, 1.02], "label": "mark"}]}
    )  # fmt: skip
    catalog = _jsonl(folder, records)
    config = tmp_path / "label.yaml"
    config.write_text(yaml.safe_dump({"teachers": [REFERENCE_TEACHER], "box_convention": "norm1"}))
    clipped = (
        "item E: reference box [0.9, 0.9, 1.05, 1.02] (norm1; [360.0, 270.0, 420.0, 306.0] in "
        "pixels) on image 0 (400x300) is partly outside the image: clipped to [360.0, 270.0, "
        "400.0, 300.0] (44% of its area was outside)"
    )
    code, out, _ = _validate(str(catalog), "--config", str(config))
    assert code == 0 and out.splitlines()[0] == clipped

    run = tmp_path / "run"
    runner = CliRunner()
    labeled = runner.invoke(
        app,
        ["--no-progress", "label", str(catalog), "--config", str(config), "--run", str(run)],
        env={"COLUMNS": "200"},
    )
    assert labeled.exit_code == 0, (labeled.output, labeled.exception)
    assert clipped in labeled.stderr.splitlines()  # the same check, the same words
    assert re.search(r"reference boxes converted \(norm1 -> pixels\)\s*│\s*3\s", labeled.stdout)
    with RunStore(run, create=False) as store:
        stored = {i: [b.xyxy for _, b in store.boxes(i)] for i in ("R", "S", "E")}
        attributes = {i: store.final_attributes(i) for i in ("R", "S", "E")}
    assert stored == {
        "R": [(100.0, 150.0, 200.0, 210.0)],
        "S": [(160.0, 24.0, 240.0, 96.0)],
        "E": [(360.0, 270.0, 400.0, 300.0)],
    }
    assert attributes == {i: {"attributes": {"brand": i}} for i in ("R", "S", "E")}

    cropped = runner.invoke(app, ["--no-progress", "crop", "--run", str(run)])
    assert cropped.exit_code == 0, (cropped.output, cropped.exception)
    with RunStore(run, create=False) as store:
        for item_id, (_, (x1, y1, x2, y2)) in rects.items():
            (crop,) = store.crops(item_id)
            left, top, right, bottom = crop.region
            assert left <= x1 and top <= y1 and right >= x2 and bottom >= y2, crop.region
            assert left > 0 and top > 0, crop.region  # not cut at the image corner
            pixels = np.asarray(Image.open(run / crop.path).convert("RGB"))
            centre = pixels[(y1 + y2) // 2 - top, (x1 + x2) // 2 - left]
            assert tuple(centre) == (255, 0, 0), item_id
            # Every red pixel of the photo is inside the crop.
            assert (np.all(pixels == (255, 0, 0), axis=-1)).sum() == (x2 - x1) * (y2 - y1)


def test_the_wrong_columns_message_reaches_the_console_once(tmp_path: Path) -> None:
    """Through the console script: one line on stderr however many rows, exit 1."""
    import subprocess

    folder = _folder(tmp_path)
    records = [{"item_id": f"I{i}", "images": ["img/big.png"], "boxes": []} for i in range(30)]
    path = _csv(folder, records, CSV_NAMES)
    croptune = str(Path(sys.executable).parent / "croptune")
    result = subprocess.run(
        [croptune, "--no-progress", "catalog", "validate", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"croptune: catalog {path}: found columns id,image_paths,boxes; ")
    assert "--column item_id=id --column images=image_paths" in line
