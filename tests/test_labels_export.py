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
    assert (data["train"], data["val"]) == ("images", "images")

    def lines(stem: str) -> list[list[float]]:
        text = (out / "labels" / f"{stem}.txt").read_text()
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
    with Image.open(out / "images" / "A1_1.jpg") as exported:
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
