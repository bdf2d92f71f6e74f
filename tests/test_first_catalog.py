"""A newcomer's first catalog: real photos from installed packages, several mistakes at once.

Each stage runs as a user runs it (the `croptune` console script in a subprocess) and must
name every problem, keep the other items whole, and exit with a code that means something.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import toolkit

CROPTUNE = str(Path(sys.executable).parent / "croptune")


def _package_folder(name: str) -> Path:
    """An installed package's folder, without importing it (ultralytics patches PIL on import)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, f"{name} is not installed"
    return Path(spec.origin).parent


ASSETS = _package_folder("ultralytics") / "assets"
SAMPLES = _package_folder("matplotlib") / "mpl-data" / "sample_data"


def _attributes(**fields: str) -> dict:
    return {"attributes": fields}


def _first_catalog(folder: Path) -> Path:
    """Nine rows of real photos with the mistakes people make (one or more per row)."""
    img = folder / "img"
    img.mkdir(parents=True)
    shutil.copy(ASSETS / "bus.jpg", img / "bus.jpg")  # 810x1080
    shutil.copy(ASSETS / "zidane.jpg", img / "stock.jpg")  # a stock photo two listings use
    shutil.copy(SAMPLES / "Minduka_Present_Blue_Pack.png", img / "pack.png")  # 128x128, alpha
    Image.open(SAMPLES / "grace_hopper.jpg").convert("CMYK").save(img / "hopper_cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; upright it is zidane.jpg again (1280x720)
    turned = Image.open(ASSETS / "zidane.jpg").transpose(Image.Transpose.ROTATE_90)
    turned.save(img / "zidane_turned.jpg", exif=exif)
    (img / "broken.jpg").write_bytes((ASSETS / "bus.jpg").read_bytes()[:5000])  # truncated
    rows = [
        # 0..1 fractions given as boxes without saying so; attributes without their group
        {"item_id": "bus", "images": ["img/bus.jpg"], "title": "City bus",
         "attributes": {"brand": "Mercedes"},
         "boxes": [{"image": 0, "xyxy": [0.1, 0.2, 0.5, 0.6], "label": "text"}]},
        # a box running off the photo; a transparent PNG
        {"item_id": "pack", "images": ["img/pack.png"], "title": "Blue pack",
         "attributes": _attributes(brand="Minduka"),
         "boxes": [{"image": 0, "xyxy": [10, 10, 5000, 80], "label": "text"}]},
        # a CMYK JPEG; a field the schema does not know
        {"item_id": "hopper", "images": ["img/hopper_cmyk.jpg"], "title": "Portrait",
         "attributes": _attributes(brand="Navy", colour_name="blue")},
        # an EXIF-turned photo (box given upright), and a second photo that is not there
        {"item_id": "zid", "images": ["img/zidane_turned.jpg", "img/missing.jpg"],
         "title": "Football", "attributes": _attributes(brand="Adidas"),
         "boxes": [{"image": 0, "xyxy": [100, 100, 300, 200], "label": "text"}]},
        # the same id twice
        {"item_id": "zid", "images": ["img/stock.jpg"], "title": "dup",
         "attributes": _attributes(brand="x")},
        # a truncated file: the item's only photo
        {"item_id": "broken", "images": ["img/broken.jpg"], "title": "Broken",
         "attributes": _attributes(brand="y")},
        # a path leaving the catalog folder
        {"item_id": "out", "images": ["../../etc/passwd"], "title": "Escape"},
        # two listings of one stock photo
        {"item_id": "stock1", "images": ["img/stock.jpg"], "title": "Stock one",
         "attributes": _attributes(brand="Nike")},
        {"item_id": "stock2", "images": ["img/stock.jpg"], "title": "Stock two",
         "attributes": _attributes(brand="Puma")},
    ]  # fmt: skip
    catalog = folder / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return catalog


def _croptune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CROPTUNE, "--no-progress", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


# Every problem of the catalog, as `validate` and `label` name it (item, image, what, why).
EVERY_PROBLEM = [
    "item zid: duplicate item_id (line 5); this copy is skipped",
    "item out: image 0 path '../../etc/passwd' leaves the catalog folder {root} (refused; "
    "pass --allow-outside-paths if this is intended)",
    "item bus: reference box [0.1, 0.2, 0.5, 0.6] on image 0 (810x1080) has every coordinate "
    "<= 1: as pixels, a box under one pixel in size; dropped. It fits the image read as norm1 "
    "(0..1 fractions of the image): if that is the catalog's convention, declare it: "
    "box_convention: norm1 in the label config, --box-convention norm1 on `croptune catalog "
    "validate`",
    "item pack: image 0 (img/pack.png): transparency composited on white",
    "item pack: reference box [10.0, 10.0, 5000.0, 80.0] on image 0 (128x128) is partly "
    "outside the image: clipped to [10.0, 10.0, 128.0, 80.0] (98% of its area was outside)",
    "item hopper: image 0 (img/hopper_cmyk.jpg): CMYK converted to RGB",
    "item zid: image 0 (img/zidane_turned.jpg): EXIF orientation 6 applied (720x1280 file, "
    "1280x720 oriented; boxes are read in the oriented frame)",
    "item zid: image 1 (img/missing.jpg): file not found",
    "item broken: image 0 (img/broken.jpg): corrupt or truncated image: image file is "
    "truncated (61 bytes not processed)",
    "item broken: no usable image; the item is skipped",
]
# Reference attributes: `validate` checks them against the schema ...
ATTRIBUTE_PROBLEMS = [
    "item bus: reference attributes: field 'brand' given at the top level: placed in group "
    "'attributes'",
    "item hopper: reference attributes: unknown field attributes.colour_name dropped",
]
# ... and `label` says what it did with them, grouped by cause.
LABEL_WARNINGS = [
    "  1 x reference: field 'brand' given at the top level: placed in group 'attributes' "
    "(1 item(s): bus)",
    "  1 x reference: unknown field attributes.colour_name dropped (1 item(s): hopper)",
]


@pytest.mark.slow
def test_first_catalog_every_problem_named_nothing_silently_wrong(tmp_path: Path):
    catalog = _first_catalog(tmp_path / "cat")
    root = str(tmp_path / "cat")
    problems = [line.format(root=root) for line in EVERY_PROBLEM]

    # validate: every problem, one line each, exit 1 (a duplicate, an escape, a dropped box)
    validate = _croptune("catalog", "validate", str(catalog), cwd=tmp_path)
    assert validate.returncode == 1, validate.stderr
    said = validate.stdout.splitlines()
    assert sorted(said) == sorted(problems + ATTRIBUTE_PROBLEMS)
    assert validate.stderr.strip().splitlines()[-1] == (
        f"7 problem(s) and 5 warning(s) in {catalog} (7 items, 8 images)"
    )

    # label: the same problems (on stderr), the rest labeled; exit 0: labels were made
    run = tmp_path / "run"
    config = Path(toolkit.__file__).parent / "configs" / "label-reference.yaml"
    label = _croptune(
        "label", str(catalog), "--config", str(config), "--run", str(run), cwd=tmp_path
    )
    assert label.returncode == 0, label.stderr
    err = label.stderr.splitlines()
    assert [line for line in err if line.startswith("item ")] == problems
    assert all(line in err for line in LABEL_WARNINGS), label.stderr
    (dropped,) = [line for line in label.stdout.splitlines() if "items dropped" in line]
    assert dropped.split()[-2:] == ["3", "│"]  # the zid copy, out, broken

    # What the run holds is what was said: nothing guessed, clipped or dropped in silence.
    with sqlite3.connect(run / "run.sqlite") as db:
        items = [r[0] for r in db.execute("SELECT item_id FROM items ORDER BY position")]
        boxes = {
            item: [round(v, 2) for v in xyxy]
            for item, *xyxy in db.execute("SELECT item_id, x1, y1, x2, y2 FROM boxes")
        }
        labels = {
            item: json.loads(attributes)
            for item, attributes in db.execute("SELECT item_id, attributes FROM labels")
        }
        images = db.execute("SELECT item_id, idx, width, height, error FROM images").fetchall()
    assert items == ["bus", "pack", "hopper", "zid", "stock1", "stock2"]
    assert boxes == {"pack": [10.0, 10.0, 128.0, 80.0], "zid": [100.0, 100.0, 300.0, 200.0]}
    assert labels["bus"] == {"attributes": {"brand": "Mercedes"}}  # placed in its group
    assert labels["hopper"] == {"attributes": {"brand": "Navy"}}  # the unknown field: said
    assert ("zid", 0, 1280, 720, None) in images  # upright, as the box was given
    assert ("zid", 1, None, None, "file not found") in images

    # crop + dataset build: the stock photo's two listings share one split, and it is said
    crop = _croptune("crop", "--run", str(run), cwd=tmp_path)
    assert crop.returncode == 0, crop.stderr
    # pack's crop is (nearly) its whole 128x128 photo: a pHash duplicate, left out, and said
    (uncovered,) = [line for line in crop.stdout.splitlines() if "not covered" in line]
    assert "│ 1 (item(s) pack)" in uncovered
    dataset = tmp_path / "dataset"
    build = _croptune("dataset", "build", "--run", str(run), "--out", str(dataset), cwd=tmp_path)
    assert build.returncode == 0, build.stderr
    assert "2 in 1 group(s), the largest 2 (stock1, stock2)" in build.stdout
    from datasets import load_from_disk

    splits = {name: list(rows["item_id"]) for name, rows in load_from_disk(str(dataset)).items()}
    assert sorted(i for ids in splits.values() for i in ids) == sorted(items)  # none lost
    assert len({name for name, ids in splits.items() for i in ids if i.startswith("stock")}) == 1

    # the review page counts what happened, items that never reached the run included
    assert _croptune("report", "--run", str(run), cwd=tmp_path).returncode == 0
    from tests.test_report import _header_counts

    assert _header_counts((run / "report.html").read_text(encoding="utf-8"))[:4] == [
        "8 items (2 never reached the run)",
        "2 failed",
        "0 disagree",
        "2 without labels",
    ]
