"""Label export: JSONL lines field by field, COCO and YOLO detection datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from toolkit.boxes import Box
from toolkit.errors import CroptuneError
from toolkit.export import (
    MANIFEST,
    YOLO_SPLITS,
    export_labels_coco,
    export_labels_jsonl,
    export_labels_yolo,
    safe_stem,
)
from toolkit.images import load_image
from toolkit.store import CropRow, ImageRow, ItemRow, RunStore

ODD_ID = "B/2 é"  # not a safe file name, not ASCII


def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _exif_rotated_jpeg(path: Path) -> Path:
    """Stored 80x50 (left half red, right half blue) with EXIF Orientation 6: upright 50x80."""
    raw = Image.new("RGB", (80, 50), (255, 0, 0))
    raw.paste((0, 0, 255), (40, 0, 80, 50))
    exif = Image.Exif()
    exif[0x0112] = 6
    raw.save(path, quality=95, exif=exif)
    return path


def _row(item_id: str, index: int, path: Path) -> ImageRow:
    loaded = load_image(str(path))
    return ImageRow(item_id, index, str(path), loaded.sha256, *loaded.size, None)


def _item(item_id: str) -> ItemRow:
    return ItemRow(item_id, None, None, None, None, [])


QWEN_BOXES = [
    Box(0, 10.123, 5.456, 30.789, 25.0, label="barcode", score=0.9),
    Box(1, 10.5, 20.25, 30.5, 60.75, label="text", score=0.75),
]
REF_BOX = Box(0, 0, 0, 20, 20, label="", score=None)


@pytest.fixture
def run(tmp_path: Path) -> RunStore:
    """A run built through the store API: two items, two label teachers, two box teachers."""
    src = tmp_path / "src"
    src.mkdir()
    a0 = _png(src / "a0.png", (60, 40), (0, 128, 0))
    a1 = _exif_rotated_jpeg(src / "a1.jpg")
    b0 = _png(src / "b0.png", (32, 24), (200, 200, 200))
    store = RunStore(tmp_path / "run")
    broken = ImageRow("A1", 2, str(src / "missing.png"), None, None, None, "file not found")
    store.put_item(_item("A1"), 0, "fp-a", [_row("A1", 0, a0), _row("A1", 1, a1), broken])
    store.put_item(_item(ODD_ID), 1, "fp-b", [_row(ODD_ID, 0, b0)])
    store.record_answer("k1", "gpt-4.1", "gpt-4.1", "A1", None, "{}", {},
                        labels={"attributes": {"brand": "Acmé"}})  # fmt: skip
    store.record_answer("k2", "relabel", "gpt-4.1", "A1", None, "{}", {},
                        labels={"attributes": {"brand": "Acme Corp"}}, generation=1)  # fmt: skip
    store.record_answer("k3", "qwen", "qwen-vl", "A1", 0, "[]", {}, boxes=[QWEN_BOXES[0]])
    store.record_answer("k4", "qwen", "qwen-vl", "A1", 1, "[]", {}, boxes=[QWEN_BOXES[1]])
    store.record_answer("k5", "ref", "reference", "A1", 0, "[]", {}, boxes=[REF_BOX])
    store.add_crop(
        CropRow("A1", 0, (5, 0, 45, 40), "crops/abc123.png", "s", "enclosing-square", "h1", [1, 3])
    )
    store.log_event("label", "timed out after 120 s", "error", ODD_ID, "qwen", 0)
    store.log_event("label", "box clipped", "warning", "A1", "qwen", 0)  # not an error
    return store


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_lines_field_by_field(run: RunStore, tmp_path: Path):
    out = tmp_path / "out" / "labels.jsonl"
    assert export_labels_jsonl(run, out) == 2
    first, second = _lines(out)
    assert first["item_id"] == "A1"
    assert first["attributes"] == {"attributes": {"brand": "Acme Corp"}}  # the newest generation
    assert first["labels"] == {
        "gpt-4.1": {"attributes": {"brand": "Acmé"}},
        "relabel": {"attributes": {"brand": "Acme Corp"}},
    }
    assert first["boxes"] == [
        {"image": 0, "xyxy": [10.12, 5.46, 30.79, 25.0], "label": "barcode", "source": "qwen",
         "score": 0.9},
        {"image": 0, "xyxy": [0, 0, 20, 20], "label": "", "source": "ref", "score": None},
        {"image": 1, "xyxy": [10.5, 20.25, 30.5, 60.75], "label": "text", "source": "qwen",
         "score": 0.75},
    ]  # fmt: skip
    assert first["crops"] == [{"image": 0, "xyxy": [5, 0, 45, 40], "path": "crops/abc123.png"}]
    assert first["errors"] == []
    assert list(first) == ["item_id", "attributes", "labels", "boxes", "crops", "errors"]
    # An item nobody labeled: null attributes, its error listed.
    assert second == {
        "item_id": ODD_ID,
        "attributes": None,
        "labels": {},
        "boxes": [],
        "crops": [],
        "errors": [
            {"stage": "label", "teacher": "qwen", "image": 0, "message": "timed out after 120 s"}
        ],
    }


def test_jsonl_is_utf8_and_atomic(run: RunStore, tmp_path: Path):
    out = tmp_path / "labels.jsonl"
    out.write_text("stale\n")
    export_labels_jsonl(run, out)
    text = out.read_bytes().decode("utf-8")
    assert "Acmé" in text and ODD_ID in text  # not \u-escaped
    assert text.count("\n") == 2 and "stale" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.jsonl", "run", "src"]


def test_jsonl_crops_of_the_current_crop_config(run: RunStore, tmp_path: Path):
    run.add_crop(
        CropRow("A1", 0, (0, 0, 40, 40), "crops/new.png", "s", "enclosing-square", "h2", [1])
    )
    run.set_meta("crop_config_hash", "h2")
    export_labels_jsonl(run, tmp_path / "l.jsonl")
    first = _lines(tmp_path / "l.jsonl")[0]
    assert first["crops"] == [{"image": 0, "xyxy": [0, 0, 40, 40], "path": "crops/new.png"}]


def _coco(out: Path) -> dict:
    return json.loads((out / "annotations.json").read_text())


def test_coco_boxes_and_upright_images(run: RunStore, tmp_path: Path):
    out = tmp_path / "coco"
    summary = export_labels_coco(run, out)
    assert (summary.images, summary.boxes, summary.classes) == (3, 3, ["barcode", "text"])
    assert summary.skipped == []
    coco = _coco(out)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    images = {i["file_name"]: i for i in coco["images"]}
    odd = f"{safe_stem(ODD_ID)}_0.jpg"
    # Every usable image, the one without boxes too (a negative); not the unusable one.
    assert sorted(images) == sorted(["A1_0.jpg", "A1_1.jpg", odd])
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(images)

    rotated = images["A1_1.jpg"]
    assert (rotated["width"], rotated["height"]) == (50, 80)  # the oriented size
    (ann,) = [a for a in coco["annotations"] if a["image_id"] == rotated["id"]]
    x1, y1, x2, y2 = QWEN_BOXES[1].xyxy
    assert ann["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    assert names[ann["category_id"]] == "text"

    on_first = [a for a in coco["annotations"] if a["image_id"] == images["A1_0.jpg"]["id"]]
    got = sorted((names[a["category_id"]], tuple(a["bbox"])) for a in on_first)
    x1, y1, x2, y2 = QWEN_BOXES[0].xyxy
    assert got == [
        ("barcode", pytest.approx((x1, y1, x2 - x1, y2 - y1))),
        ("text", pytest.approx((0, 0, 20, 20))),  # an empty label is "text"
    ]
    assert not [a for a in coco["annotations"] if a["image_id"] == images[odd]["id"]]

    # The exported file is the upright image: red on top, blue below, no EXIF rotation left.
    with Image.open(out / "images" / "A1_1.jpg") as exported:
        assert exported.size == (50, 80)
        assert exported.getexif().get(0x0112) in (None, 1)
        pixels = np.asarray(exported.convert("RGB"), dtype=float)
    upright = np.asarray(load_image(run.images("A1")[1].uri).image, dtype=float)
    assert np.abs(pixels - upright).mean() < 3
    assert pixels[10, 25].tolist() == pytest.approx([255, 0, 0], abs=12)
    assert pixels[70, 25].tolist() == pytest.approx([0, 0, 255], abs=12)

    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert {(i["file"], i["item_id"], i["image"]) for i in manifest["images"]} == {
        ("images/A1_0.jpg", "A1", 0),
        ("images/A1_1.jpg", "A1", 1),
        (f"images/{odd}", ODD_ID, 0),
    }


def test_coco_round_trips_through_supervision(run: RunStore, tmp_path: Path):
    import supervision as sv

    out = tmp_path / "coco"
    export_labels_coco(run, out)
    coco = _coco(out)
    assert coco["licenses"] == [] and all("license" not in i for i in coco["images"])
    dataset = sv.DetectionDataset.from_coco(str(out / "images"), str(out / "annotations.json"))
    assert dataset.classes == ["barcode", "text"]
    by_name = {Path(p).name: d for p, d in dataset.annotations.items()}
    assert by_name["A1_1.jpg"].xyxy[0].tolist() == pytest.approx(QWEN_BOXES[1].xyxy)
    assert len(by_name[f"{safe_stem(ODD_ID)}_0.jpg"]) == 0


def test_yolo_lines_are_normalised_boxes(run: RunStore, tmp_path: Path):
    out = tmp_path / "yolo"
    summary = export_labels_yolo(run, out)
    assert summary.classes == ["barcode", "text"]
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == ["barcode", "text"] and data["nc"] == 2
    # Two items are too few to hold one out: only the train split exists, and only it is named.
    assert data["train"] == "images/train" and "val" not in data and "test" not in data
    assert summary.split_counts() == {"train": {"items": 2, "images": 3, "boxes": 3}}

    def lines(stem: str) -> list[list[float]]:
        text = (out / "labels" / "train" / f"{stem}.txt").read_text()
        return sorted([float(v) for v in line.split()] for line in text.splitlines())

    def expected(box: Box, cls: int, width: int, height: int) -> list[float]:
        return [cls, (box.x1 + box.x2) / 2 / width, (box.y1 + box.y2) / 2 / height,
                box.width / width, box.height / height]  # fmt: skip

    assert lines("A1_1") == [pytest.approx(expected(QWEN_BOXES[1], 1, 50, 80), abs=1e-5)]
    assert lines("A1_0") == [
        pytest.approx(expected(QWEN_BOXES[0], 0, 60, 40), abs=1e-5),
        pytest.approx(expected(REF_BOX, 1, 60, 40), abs=1e-5),
    ]
    assert lines(f"{safe_stem(ODD_ID)}_0") == []  # a negative image, with an empty label file
    with Image.open(out / "images" / "train" / "A1_1.jpg") as exported:
        assert exported.size == (50, 80)


def test_select_chooses_the_exported_boxes(run: RunStore, tmp_path: Path):
    summary = export_labels_coco(
        run, tmp_path / "coco", select=lambda boxes: [b for b in boxes if b.source == "qwen"]
    )
    assert (summary.boxes, summary.classes) == (2, ["barcode", "text"])
    assert len(_coco(tmp_path / "coco")["annotations"]) == 2


def test_detection_export_replaces_only_its_own_folders(run: RunStore, tmp_path: Path):
    out = tmp_path / "coco"
    export_labels_coco(run, out)
    (out / "images" / "stale.jpg").write_bytes(b"old")
    export_labels_coco(run, out)  # an earlier export is replaced as a whole
    assert not (out / "images" / "stale.jpg").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folders

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CroptuneError, match="not an earlier croptune export"):
        export_labels_yolo(run, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_labels_yolo(run, empty).images == 3


def test_changed_image_is_skipped_with_a_reason(run: RunStore, tmp_path: Path):
    _png(Path(run.images("A1")[0].uri), (60, 40), (1, 2, 3))  # edited after ingest
    summary = export_labels_coco(run, tmp_path / "coco")
    assert summary.images == 2
    assert summary.skipped == ["item A1 image 0: changed since ingest, its boxes may not fit"]


@pytest.mark.parametrize(
    ("item_id", "stem"),
    [
        # A safe id is kept as is.
        pytest.param("A1-x_2", "A1-x_2", id="safe"),
        # Unsafe characters are replaced and a hash of the id keeps names apart.
        pytest.param("a/b", "a_b-", id="slash"),
        # A dot is replaced too: no hidden files, no "..".
        pytest.param("..", "_-", id="dots"),
    ],
)
def test_safe_stem(item_id: str, stem: str):
    got = safe_stem(item_id)
    assert got.startswith(stem) and len(got) == len(stem) + (8 if stem != item_id else 0)


def test_safe_stem_keeps_ids_apart():
    ids = ["a/b", "a b", "a_b", "a?b", "A/B"]
    assert len({safe_stem(i) for i in ids}) == len(ids)


# ------------------------------------------- YOLO splits by item, shared photos written once

SHARED_BOX = (1, 1, 10, 10, "barcode")  # every item boxes this on each of its photos


def _photo_file(src: Path, name: str) -> Path:
    """The file of photo `name`; "x@copy" is another file with the pixels of "x"."""
    pixels = name.split("@")[0]
    digest = sha256_digest(pixels.encode())
    colour = (digest[0], digest[1], digest[2])
    path = src / f"{name.replace('@', '_')}.png"
    if not path.exists():
        _png(path, (48, 40), colour)
    return path


def sha256_digest(data: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(data).digest()


def _listings_run(tmp_path: Path, listings: list[tuple[str, str, list[str], bool]]) -> RunStore:
    """A run of (item_id, category, photo names, labeled) listings with a box teacher's boxes.

    Each item boxes SHARED_BOX on each of its photos (identical across items sharing a photo)
    and one box of its own, so a photo of k items has 1 + k distinct boxes.
    """
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    store = RunStore(tmp_path / "run")
    for position, (item_id, category, photos, labeled) in enumerate(listings):
        rows = [_row(item_id, i, _photo_file(src, name)) for i, name in enumerate(photos)]
        store.put_item(ItemRow(item_id, None, category, None, None, []), position, item_id, rows)
        own = 2 + position  # an item's own box differs from every other item's
        boxes = [Box(i, *SHARED_BOX[:4], SHARED_BOX[4]) for i in range(len(photos))]
        boxes += [Box(i, own, 12, own + 20, 30, "text") for i in range(len(photos))]
        store.set_boxes(item_id, "ref", boxes)
        if labeled:
            store.record_answer(f"k-{item_id}", "t", "m", item_id, None, "{}", {},
                                labels={"attributes": {"brand": item_id}})  # fmt: skip
    return store


def _student_splits(store: RunStore, out: Path, ratios: dict) -> dict[str, str]:
    """item_id -> split of the DatasetDict `dataset build` really writes for these ratios."""
    from datasets import load_from_disk

    from toolkit.dataset import DatasetConfig, build_dataset
    from toolkit.schema import load_schema

    config = DatasetConfig(strategy="originals", **ratios)
    build_dataset(store, out, load_schema(), config)
    saved = load_from_disk(str(out))
    return {item_id: name for name in saved for item_id in saved[name]["item_id"]}


def _own(n: int, category: str = "a", labeled: bool = True) -> tuple[str, str, list[str], bool]:
    return (f"L{n:02d}", category, [f"p{n}"], labeled)


SPLIT_CASES = [
    # 12 labeled items in two categories, one photo each: train, validation and test all used
    pytest.param([_own(n, "ab"[n % 2]) for n in range(12)], {}, id="plain"),
    # two items share a photo (L00 has a second one): it is written once with 3 boxes
    pytest.param(
        [("L00", "a", ["s", "p0"], True), ("L01", "a", ["s"], True)]
        + [_own(n) for n in range(2, 12)],
        {},
        id="shared-pair",
    ),
    # unlabeled items (not in the student's dataset) sharing labeled items' photos, and one
    # bridging two labeled items: they follow the most held-out of those, never train
    pytest.param(
        [_own(n) for n in range(12)]
        + [("U1", "a", ["p3", "p7"], False), ("U2", "a", ["p5"], False), _own(20, labeled=False)],
        {},
        id="unlabeled-sharers",
    ),
    # a stock photo on 6 of 14 listings: one group, in one split, the photo written once
    pytest.param(
        [(f"L{n:02d}", "a", ["stock", f"p{n}"], True) for n in range(6)]
        + [_own(n) for n in range(6, 14)],
        {},
        id="stock-photo",
    ),
    # the same pixels in two files (another path) are one photo: identified by pixel hash
    pytest.param(
        [("L00", "a", ["c"], True), ("L01", "a", ["c@copy"], True)]
        + [_own(n) for n in range(2, 10)],
        {},
        id="same-pixels-other-path",
    ),
    # other ratios and seed: the export follows them as the dataset does
    pytest.param(
        [_own(n, "abc"[n % 3]) for n in range(16)],
        {"validation_ratio": 0.25, "test_ratio": 0.25, "seed": 3},
        id="ratios-and-seed",
    ),
    # two items: too few to hold any out, everything trains
    pytest.param([_own(0), _own(1)], {}, id="tiny"),
]


@pytest.mark.parametrize(("listings", "ratios"), SPLIT_CASES)
def test_yolo_export_splits_by_item_as_the_dataset_does(tmp_path: Path, listings, ratios):
    from toolkit.dataset.splits import SPLITS

    store = _listings_run(tmp_path, listings)
    out = tmp_path / "yolo"
    summary = export_labels_yolo(store, out, **ratios)
    student = _student_splits(store, tmp_path / "dataset", ratios)

    # Every labeled item is where `dataset build` put it.
    assert {i: summary.item_splits[i] for i in student} == student
    # Photos by pixels: which items show each one, from the listings themselves.
    owners: dict[str, set[str]] = {}
    for item_id, _, photos, _ in listings:
        for name in photos:
            owners.setdefault(name.split("@")[0], set()).add(item_id)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    files = sorted(p.relative_to(out).as_posix() for p in (out / "images").glob("*/*.jpg"))
    assert len(files) == len(owners) == summary.images  # each photo exactly once
    assert sorted(e["file"] for e in manifest["images"]) == files
    shared = [name for name, items in owners.items() if len(items) > 1]
    assert summary.shared_photos == manifest["shared_photos"] == len(shared)
    assert summary.merged_boxes == sum(len(owners[name]) - 1 for name in shared)

    counts = {name: 0 for name in SPLITS}
    for entry in manifest["images"]:
        items = {o["item_id"] for o in entry["items"]}
        assert items in owners.values()
        # the union of all its items' boxes, identical ones once: count the label lines
        label = out / entry["file"].replace("images/", "labels/", 1).replace(".jpg", ".txt")
        assert len(label.read_text().splitlines()) == 1 + len(items) == entry["boxes"]
        # the photo sits in the most held-out split of its items: a photo of a validation or
        # test item is never in train
        split = entry["split"]
        assert split == max((summary.item_splits[i] for i in items), key=SPLITS.index)
        if split == "train":
            assert all(student.get(i, "train") == "train" for i in items)
        assert entry["file"].startswith(f"images/{YOLO_SPLITS[split]}/")
        counts[split] += 1

    data = yaml.safe_load((out / "data.yaml").read_text())
    assert {k for k in ("train", "val", "test") if k in data} == {
        YOLO_SPLITS[s] for s, n in counts.items() if n
    }  # only the non-empty splits are named
    for key in ("train", "val", "test"):
        if key in data:
            assert data[key] == f"images/{key}" and any((out / data[key]).iterdir())
    assert data.get("val") != data["train"]
    assert {s: c["images"] for s, c in summary.split_counts().items()} == {
        s: n for s, n in counts.items() if n
    }
    store.close()


def test_a_split_that_leaves_train_empty_is_refused(tmp_path: Path):
    store = _listings_run(tmp_path, [_own(n) for n in range(3)])
    with pytest.raises(CroptuneError, match=r"no photo of run .* is left for train") as caught:
        export_labels_yolo(store, tmp_path / "yolo", validation_ratio=0.9, test_ratio=0.9)
    assert "Lower validation_ratio/test_ratio; nothing was written" in str(caught.value)
    assert not (tmp_path / "yolo").exists()
    store.close()


def test_coco_writes_a_shared_photo_once_with_all_boxes(tmp_path: Path):
    listings = [("L00", "a", ["s", "p0"], True), ("L01", "a", ["s"], False), _own(2)]
    store = _listings_run(tmp_path, listings)
    summary = export_labels_coco(store, tmp_path / "coco")
    coco = _coco(tmp_path / "coco")
    assert (summary.images, summary.shared_photos, summary.merged_boxes) == (3, 1, 1)
    assert len(coco["images"]) == 3
    (shared,) = [i for i in coco["images"] if i["file_name"] == "L00_0.jpg"]
    assert len([a for a in coco["annotations"] if a["image_id"] == shared["id"]]) == 3
    store.close()


CLI_CASES = [
    # yolo with the split settings as key=value: the split and the shared photo are reported
    pytest.param(
        ["--format", "yolo", "seed=1"],
        0,
        [
            "1 photos are shown by several items",
            "1 identical boxes on the same photo",
            "split by item as `dataset build` splits (validation_ratio 0.1, test_ratio 0.2, "
            "seed 1): train ",
        ],
        id="yolo-split-reported",
    ),  # fmt: skip
    # the split of a dataset config file (as `dataset build` saved it), a key overridden
    pytest.param(
        ["--format", "yolo", "--dataset-config", "ds.yaml", "test_ratio=0.3"],
        0,
        ["(validation_ratio 0.2, test_ratio 0.3, seed 4)"],
        id="yolo-dataset-config",
    ),
    # a misspelt split key is named (the dataset config's keys)
    pytest.param(["--format", "yolo", "test_ration=0.1"], 1, ["test_ration"], id="bad-key"),
    # split settings on a format that is not split are refused, not ignored
    pytest.param(
        ["--format", "jsonl", "seed=1"], 1, ["apply to --format yolo only"], id="jsonl-split"
    ),
    # a split holding every item out (test takes all 10): exit 1, the reason and what to do
    pytest.param(
        ["--format", "yolo", "test_ratio=0.99"],
        1,
        ["is left for train", "Lower validation_ratio/test_ratio"],
        id="train-empty",
    ),
]


@pytest.mark.parametrize(("args", "code", "messages"), CLI_CASES)
def test_labels_export_cli(tmp_path: Path, args, code, messages):
    import subprocess
    import sys

    listings = [("L00", "a", ["s", "p0"], True), ("L01", "a", ["s"], True)]
    _listings_run(tmp_path, listings + [_own(n) for n in range(2, 10)]).close()
    (tmp_path / "ds.yaml").write_text("strategy: crops\nvalidation_ratio: 0.2\nseed: 4\n")
    croptune = str(Path(sys.executable).parent / "croptune")
    result = subprocess.run(
        [croptune, "labels", "export", "--run", "run", "--out", "out", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    for message in messages:
        assert message in (result.stdout if code == 0 else result.stderr)
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out").exists() == (code == 0)
