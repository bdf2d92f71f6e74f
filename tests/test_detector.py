"""The region-proposal detector: item split, oriented-pixel boxes, offline training, the CLI."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from finetune.detector import (
    DETECTOR_SOURCE,
    DetectorConfig,
    load_detector,
    predict_boxes,
    train_detector,
)
from finetune.detector.config import REGION_CLASS
from finetune.detector.data import box_selector
from finetune.detector.load import boxes_from_result, model_input
from toolkit.boxes import Box
from toolkit.config import load_stage_config
from toolkit.crops import FUSED_SOURCE
from toolkit.errors import CroptuneError
from toolkit.images import load_image
from toolkit.store import ImageRow, ItemRow, RunStore

CROPTUNE = str(Path(sys.executable).parent / "croptune")
HAS_ONNX = importlib.util.find_spec("onnx") is not None
RED = (230, 20, 20)


# ------------------------------------------------------------------------- small helpers


def _exif_rotated_photo(path: Path, size: tuple[int, int] = (120, 80)) -> Path:
    """A JPEG whose pixels are stored turned, with EXIF orientation 6 turning them upright.

    Upright (oriented) it is size wide, grey, with a red square at its top-left corner.
    """
    upright = Image.new("RGB", size, (128, 128, 128))
    upright.paste(RED, (0, 0, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    # exif_transpose applies ROTATE_270 for orientation 6, so the file holds ROTATE_90.
    upright.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=95, exif=exif)
    return path


def _store(tmp_path: Path, boxes: dict[str, list[Box]], items: int = 2) -> RunStore:
    """A run with `items` one-photo items; each item gets the given boxes per source."""
    store = RunStore(tmp_path / "run")
    for n in range(items):
        photo = tmp_path / f"p{n}.jpg"
        Image.new("RGB", (64, 48), (10 * n, 90, 140)).save(photo)
        loaded = load_image(str(photo))
        item = ItemRow(f"I{n}", None, None, None, None, [])
        row = ImageRow(f"I{n}", 0, str(photo), loaded.sha256, 64, 48, None)
        store.put_item(item, n, f"fp{n}", [row])
        for source, source_boxes in boxes.items():
            store.set_boxes(f"I{n}", source, source_boxes)
    return store


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # the defaults: the detector splits as a default `dataset build` does
        ["seed=7"],  # another seed
        ["validation_ratio=0.25", "test_ratio=0.05"],  # other ratios
        ["validation_ratio=0", "test_ratio=0"],  # nothing held out
    ],
)
def test_the_detector_takes_the_datasets_split_settings(overrides):
    from toolkit.dataset import SPLIT_KEYS, DatasetConfig

    detector = load_stage_config(DetectorConfig, None, overrides)
    dataset = load_stage_config(DatasetConfig, None, overrides)
    assert {k: getattr(detector, k) for k in SPLIT_KEYS} == {
        k: getattr(dataset, k) for k in SPLIT_KEYS
    }


def _results(boxes: list[list[float]], size_wh: tuple[int, int] = (100, 200)):
    import torch
    from ultralytics.engine.results import Results

    width, height = size_wh
    data = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 6)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    return Results(image, path="x.jpg", names={0: "region", 1: "barcode"}, boxes=data)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # inside the (portrait, oriented) image: kept as is, with label and score
        ([[10, 150, 90, 190, 0.9, 0]], [(10, 150, 90, 190, "region", 0.9)]),
        # the class id picks the label
        ([[5, 5, 20, 30, 0.5, 1]], [(5, 5, 20, 30, "barcode", 0.5)]),
        # sticking out past the right and bottom edges: clipped to 100x200
        ([[50, 180, 130, 260, 0.8, 0]], [(50, 180, 100, 200, "region", 0.8)]),
        # wholly outside the image: dropped
        ([[120, 10, 150, 40, 0.8, 0]], []),
        # zero width: dropped
        ([[30, 30, 30, 60, 0.8, 0]], []),
        # nothing proposed
        ([], []),
    ],
)
def test_detector_outputs_become_oriented_pixel_boxes(raw, expected):
    boxes = boxes_from_result(_results(raw), image=3)
    got = [(*(round(v, 3) for v in b.xyxy), b.label, round(b.score, 3)) for b in boxes]
    assert got == expected
    assert all(b.image == 3 and b.source == DETECTOR_SOURCE for b in boxes)


def test_the_model_is_given_the_oriented_photo_as_bgr(tmp_path):
    path = _exif_rotated_photo(tmp_path / "turned.jpg")
    assert Image.open(path).size == (80, 120)  # as stored
    array = model_input(load_image(str(path)).image)
    assert array.shape == (80, 120, 3)  # oriented: 120 wide, 80 high
    blue, green, red = (int(v) for v in array[10, 10])
    assert red > 180 and blue < 80 and green < 80  # the red corner is top-left, in BGR order
    assert int(array[70, 110, 2]) < 160  # and the bottom-right stays grey


# -------------------------------------------------------------- configs and user errors


def test_config_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "detector.yaml"
    path.write_text("epochs: 5\nimgsz: 320\nclasses: labels\n")
    config = load_stage_config(DetectorConfig, path, ["epochs=2", "--test_ratio=0.3"])
    assert (config.epochs, config.imgsz, config.test_ratio, config.classes) == (
        2,
        320,
        0.3,
        "labels",
    )
    assert all(f.description for f in DetectorConfig.model_fields.values())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("test_ratio=1", "test_ratio"),  # everything held out leaves nothing to train on
        ("holdout=0.2", "holdout"),  # the old key: the split is the dataset's now
        ("classes=kinds", "classes"),  # only region | labels
        ("no_such_key=1", "no_such_key"),  # unknown keys are named
    ],
)
def test_bad_config_values_are_named(override, message):
    with pytest.raises(CroptuneError, match=message):
        load_stage_config(DetectorConfig, None, [override])


def test_a_run_without_boxes_is_a_clear_error(tmp_path):
    store = _store(tmp_path, {})
    store.close()
    with pytest.raises(CroptuneError, match="has no boxes to train a detector on"):
        train_detector(tmp_path / "run", tmp_path / "out", DetectorConfig())
    assert not (tmp_path / "out" / "detector.pt").exists()


def test_the_cli_says_so_without_a_traceback(tmp_path):
    _store(tmp_path, {}).close()
    result = subprocess.run(
        [CROPTUNE, "detector", "train", "--run", "run", "--out", "out", "epochs=1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("croptune: ") and "no boxes" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_box_source_lists_the_ones_there(tmp_path):
    store = _store(tmp_path, {"qwen": [Box(0, 1, 1, 20, 20, "barcode")]})
    with pytest.raises(CroptuneError, match=r"no boxes from 'gpt'.*'qwen'"):
        box_selector(store, DetectorConfig(boxes="gpt"))
    store.close()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # fused boxes are what crops are cut from: the teachers' own are left out
        (DetectorConfig(), [("fused", REGION_CLASS)]),
        # a named teacher's boxes alone
        (DetectorConfig(boxes="qwen"), [("qwen", REGION_CLASS)]),
        # classes=labels keeps the teacher's labels
        (DetectorConfig(classes="labels"), [("fused", "barcode")]),
    ],
)
def test_box_selection(tmp_path, config, expected):
    boxes = {
        "qwen": [Box(0, 1, 1, 20, 20, "warning", "qwen")],
        FUSED_SOURCE: [Box(0, 2, 2, 30, 30, "barcode", FUSED_SOURCE)],
    }
    store = _store(tmp_path, boxes)
    select, _ = box_selector(store, config)
    stored = [b for _, b in store.boxes("I0")]
    assert [(b.source, b.label) for b in select(stored)] == expected
    store.close()


def test_a_single_teacher_run_uses_that_teachers_boxes(tmp_path):
    store = _store(tmp_path, {"reference": [Box(0, 1, 1, 20, 20, "barcode", "reference")]})
    select, source = box_selector(store, DetectorConfig())
    assert source == "reference"
    assert len(select([b for _, b in store.boxes("I1")])) == 1
    store.close()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("yolo11n.pt", "does not download weights"),  # a hub name, not a file: never fetched
        ("weights.bin", "neither an architecture"),  # not a model at all
    ],
)
def test_models_that_would_need_a_download_are_refused(tmp_path, model, message):
    _store(tmp_path, {"t": [Box(0, 1, 1, 20, 20)]}).close()
    with pytest.raises(CroptuneError, match=message):
        train_detector(tmp_path / "run", tmp_path / "out", DetectorConfig(model=model))


def test_onnx_export_without_the_onnx_package_fails_before_training(tmp_path, monkeypatch):
    _store(tmp_path, {"t": [Box(0, 1, 1, 20, 20)]}).close()
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    with pytest.raises(CroptuneError, match="pip install onnx"):
        train_detector(tmp_path / "run", tmp_path / "out", DetectorConfig(export_onnx=True))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------- a real offline training run (1 epoch)


SERVE_CONF = 0.01  # low, so that a 1-epoch detector proposes something to measure


def _share_a_photo(catalog: Path) -> dict[str, object]:
    """Let the catalog's second item show the first item's first photo too, boxing the same
    boxes on it as the first item plus one of its own; returns what was shared."""
    lines = [json.loads(line) for line in catalog.read_text().splitlines()]
    first, second = lines[0], lines[1]
    index = len(second["images"])
    second["images"].append(first["images"][0])
    same = [dict(b, image=index) for b in first["boxes"] if b["image"] == 0]
    extra = {"image": index, "xyxy": [2, 2, 40, 30], "label": "extra"}
    second["boxes"] += [*same, extra]
    catalog.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"items": {first["item_id"], second["item_id"]}, "boxes": len(same) + 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-item synthetic run (two items share a photo) labeled by the reference teacher, and
    a detector trained on it through the CLI (in process) with every network connection
    refused and recorded."""
    from typer.testing import CliRunner

    from croptune.cli import app
    from croptune.pipeline import run_label
    from croptune.synthetic.catalog import make_example_catalog
    from teacher_labeling.teachers import LabelConfig, TeacherConfig

    work = tmp_path_factory.mktemp("detector")
    catalog = make_example_catalog(work / "catalog", n_items=6, seed=0)
    shared = _share_a_photo(catalog)
    teacher = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")
    run_label(catalog, LabelConfig(teachers=[teacher]), work / "run")

    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network refused by the test")

    # Relative paths, as a user types them (ultralytics would put a relative project elsewhere).
    args = ["detector", "train", "--run", "run", "--out", "det"]
    args += ["epochs=1", "imgsz=128", "batch=8", "workers=0", f"export_onnx={HAS_ONNX}"]
    args += [f"conf={SERVE_CONF}", "device=cpu"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(socket.socket, "connect", refuse)
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})  # table rows unwrapped
    return {
        "work": work,
        "out": work / "det",
        "result": result,
        "attempts": attempts,
        "shared": shared,
    }


@pytest.mark.slow
def test_cli_trains_and_prints_the_summary(trained):
    result = trained["result"]
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    metrics = json.loads((trained["out"] / "metrics.json").read_text())
    for row in (
        "split by item, as `dataset build`",
        "validation_ratio 0.1, test_ratio 0.2, seed 0",
        f"{metrics['items']['train']} / {metrics['items']['held_out']}",
        "1 shown by several items, used once with all their boxes",
        # every figure names the kept weights and predict's threshold
        "detector.pt (kept, loaded as predict loads it) on 6 held-out photos",
        f"precision / recall (conf {SERVE_CONF}, predict's)",
        "mAP50 / mAP50-95",
        "train seconds",
    ):
        assert row in result.output, row


@pytest.mark.slow
def test_training_tried_no_network_and_wrote_nothing_home(trained):
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    assert trained["attempts"] == []
    assert SETTINGS["sync"] is False
    assert not Path(USER_CONFIG_DIR).resolve().is_relative_to(Path.home().resolve())


def _photo_owners(dataset: Path) -> dict[str, set[str]]:
    """Exported image file -> the items that show the photo (from the export manifest)."""
    manifest = json.loads((dataset / "croptune_export.json").read_text())
    return {e["file"]: {o["item_id"] for o in e["items"]} for e in manifest["images"]}


@pytest.mark.slow
def test_the_detector_never_trains_on_the_students_held_out_items(trained, tmp_path):
    from datasets import load_from_disk

    from croptune.pipeline import run_dataset
    from toolkit.dataset import DatasetConfig

    # The split `dataset build` really makes of this run (the detector used the defaults).
    run_dataset(trained["work"] / "run", tmp_path / "ds", DatasetConfig(strategy="originals"))
    saved = load_from_disk(str(tmp_path / "ds"))
    student_held = {i for name in ("validation", "test") if name in saved
                    for i in saved[name]["item_id"]}  # fmt: skip
    assert student_held and set(saved["train"]["item_id"])

    out = trained["out"]
    split = yaml.safe_load((out / "detector.yaml").read_text())["split"]
    assert split["held_out"] and split["train"]
    assert not set(split["train"]) & student_held  # by item
    assert set(split["held_out"]) == student_held
    dataset = out / "dataset"
    fit = yaml.safe_load((dataset / "fit.yaml").read_text())
    assert fit["train"] == "images/train" and fit["train"] not in fit["val"]
    owners = _photo_owners(dataset)
    trained_on = [f"images/train/{p.name}" for p in (dataset / "images" / "train").iterdir()]
    assert trained_on
    for file in trained_on:  # by photo: no photo a held-out item shows is trained on
        assert not owners[file] & student_held, file
    for file, items in owners.items():
        if items & student_held:
            assert not file.startswith("images/train/"), file


@pytest.mark.slow
def test_a_shared_photo_is_trained_once_with_all_boxes(trained):
    dataset = trained["out"] / "dataset"
    shared = [(f, items) for f, items in _photo_owners(dataset).items() if len(items) > 1]
    assert [items for _, items in shared] == [trained["shared"]["items"]]
    ((file, _),) = shared
    label = dataset / file.replace("images/", "labels/", 1).replace(".jpg", ".txt")
    # the first item's boxes once (the second boxed the same ones) and the second's own box
    assert len(label.read_text().splitlines()) == trained["shared"]["boxes"]
    metrics = json.loads((trained["out"] / "metrics.json").read_text())
    # the second item's copies of the first item's boxes are the merged ones
    assert (metrics["shared_photos"], metrics["merged_boxes"]) == (
        1,
        trained["shared"]["boxes"] - 1,
    )


def _greedy_matches(proposed: list[Box], truth: list[Box]) -> int:
    """Proposals matching a box one-to-one at IoU >= 0.5, pairs taken by descending IoU."""

    def iou(a: Box, b: Box) -> float:
        w = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
        h = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
        return w * h / (a.area + b.area - w * h)

    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(proposed)
                    for j, t in enumerate(truth)), reverse=True)  # fmt: skip
    used_p, used_t, found = set(), set(), 0
    for value, i, j in pairs:
        if value >= 0.5 and i not in used_p and j not in used_t:
            used_p.add(i), used_t.add(j)
            found += 1
    return found


@pytest.mark.slow
def test_every_summary_figure_is_of_the_kept_weights_at_predicts_threshold(trained):
    from supervision.metrics import MeanAveragePrecision

    from finetune.detector.config import MAP_CONF
    from toolkit.catalog import load_ingested_image

    out = trained["out"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["weights"], metrics["conf"]) == ("detector.pt", SERVE_CONF)
    detector = load_detector(out)  # the kept file and the settings predict reads
    assert detector.conf == SERVE_CONF

    # Re-measure the held-out photos from scratch, as predict would see them.
    manifest = json.loads((out / "dataset" / "croptune_export.json").read_text())
    held = [e for e in manifest["images"] if e["split"] in ("validation", "test")]
    labels_dir = out / "dataset" / "labels"
    tp = n_proposed = n_truth = 0
    ranked, targets = [], []
    with RunStore(trained["work"] / "run", create=False) as store:
        for entry in held:
            row = store.images(entry["item_id"])[entry["image"]]
            image = load_ingested_image(row)
            width, height = image.size
            label = labels_dir / entry["file"].split("/", 1)[1].replace(".jpg", ".txt")
            truth = []
            for line in label.read_text().splitlines():
                _, cx, cy, w, h = (float(v) for v in line.split())
                truth.append(Box(0, (cx - w / 2) * width, (cy - h / 2) * height,
                                 (cx + w / 2) * width, (cy + h / 2) * height))  # fmt: skip
            served = predict_boxes(detector, [image])[0]  # predict's call: its conf and iou
            tp += _greedy_matches(served, truth)
            n_proposed, n_truth = n_proposed + len(served), n_truth + len(truth)
            low = predict_boxes(detector, [image], conf=MAP_CONF)[0]
            ranked.append(_sv(low))
            targets.append(_sv(truth))
    figures = metrics["metrics"]
    assert figures["images"] == len(held) and figures["boxes"] == n_truth > 0
    # The proposal count depends on the weights and the threshold: it must be predict's.
    assert figures["proposals"] == n_proposed != sum(len(r) for r in ranked)
    assert figures["precision"] == pytest.approx(tp / n_proposed if n_proposed else 0.0, abs=1e-4)
    assert figures["recall"] == pytest.approx(tp / n_truth, abs=1e-4)
    result = MeanAveragePrecision().update(ranked, targets).compute()
    assert figures["map50"] == pytest.approx(max(0.0, float(result.map50)), abs=1e-6)
    assert figures["map50_95"] == pytest.approx(max(0.0, float(result.map50_95)), abs=1e-6)


def _sv(boxes: list[Box]):
    import supervision as sv

    if not boxes:
        return sv.Detections.empty()
    return sv.Detections(
        xyxy=np.array([b.xyxy for b in boxes], dtype=np.float64),
        class_id=np.zeros(len(boxes), dtype=np.int64),
        confidence=np.array([1.0 if b.score is None else b.score for b in boxes]),
    )


@pytest.mark.slow
def test_outputs_hold_the_settings_and_metrics(trained):
    out = trained["out"]
    settings = yaml.safe_load((out / "detector.yaml").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert settings["classes"] == [REGION_CLASS] and settings["imgsz"] == 128
    assert settings["config"]["epochs"] == 1 and settings["box_source"] == "reference"
    assert settings["split"]["validation_ratio"] == 0.1 and settings["split"]["seed"] == 0
    assert metrics["items"] == {
        "train": len(settings["split"]["train"]),
        "held_out": len(settings["split"]["held_out"]),
    }
    assert metrics["metrics"]["boxes"] > 0
    for key in ("precision", "recall", "map50", "map50_95"):
        assert 0.0 <= metrics["metrics"][key] <= 1.0, key
        assert settings["metrics"][key] == metrics["metrics"][key]
    assert "detector.pt" in metrics["measured_by"] and f">= {SERVE_CONF}" in metrics["measured_by"]
    assert (out / "detector.pt").is_file()
    assert (out / "train" / "args.yaml").is_file() and not (trained["work"] / "runs").exists()
    assert (out / "detector.onnx").is_file() == HAS_ONNX


@pytest.mark.slow
def test_trained_detector_predicts_on_the_oriented_photo(trained, tmp_path):
    detector = load_detector(trained["out"])
    assert (detector.imgsz, detector.classes) == (128, [REGION_CLASS])
    seen = []
    detector.model.add_callback(
        "on_predict_batch_start", lambda predictor: seen.extend(predictor.batch[1])
    )
    photo = load_image(str(_exif_rotated_photo(tmp_path / "turned.jpg"))).image
    upright = Image.new("RGB", (90, 140), (200, 200, 200))
    boxes = predict_boxes(detector, [photo, upright], conf=0.001)
    assert len(boxes) == 2
    assert [a.shape for a in seen] == [(80, 120, 3), (140, 90, 3)]
    assert np.array_equal(seen[0], model_input(photo))
    for index, (image, found) in enumerate(zip([photo, upright], boxes, strict=True)):
        for box in found:
            assert box.image == index and box.source == DETECTOR_SOURCE
            assert 0 <= box.x1 < box.x2 <= image.width and 0 <= box.y1 < box.y2 <= image.height
            assert 0.001 <= box.score <= 1


def test_importing_ultralytics_leaves_corrupt_image_errors_alone(tmp_path):
    # ultralytics patches PIL.Image.open to pip-install a HEIF plugin on unknown files;
    # croptune undoes that so a corrupt photo stays a per-item error, not an install or crash
    from PIL import Image, UnidentifiedImageError

    from finetune.detector import prepare_ultralytics
    from toolkit.images import ImageLoadError, decode_image

    prepare_ultralytics()
    import ultralytics  # noqa: F401  - the whole package, as training imports it

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(UnidentifiedImageError):
        Image.open(corrupt)
    with pytest.raises(ImageLoadError, match="not an image"):
        decode_image(corrupt.read_bytes())
