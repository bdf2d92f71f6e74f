"""The detector's measured coverage (share of held-out teacher boxes inside its crops): measured
where it is trained, carried into the bundle, said by predict."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from PIL import Image

from finetune.predict import load_bundle, predict_catalog
from finetune.predict.bundle import COVERAGE_TARGET
from tests.bundles import manifest_data, write_manifest
from tests.fake_openai import FakeOpenAI, FixedAnswer
from toolkit.boxes import Box
from toolkit.crops import CropConfig
from toolkit.errors import CroptuneError
from toolkit.export import ExportedPhoto
from toolkit.store import ImageRow

ANSWER = {"attributes": {"brand": "Acme"}}


def _detector_facts(**extra: object) -> dict:
    return {"path": "detector", "weights": "detector/detector.pt", **extra}


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        # a bundle exported before coverage was measured: it still loads, coverage unknown
        pytest.param(_detector_facts(), None, id="old-bundle"),
        # a measured detector: the figure is read back typed
        pytest.param(_detector_facts(coverage=0.93), 0.93, id="measured"),
        # no detector shipped: no coverage
        pytest.param(None, None, id="no-detector"),
    ],
)
def test_the_manifest_carries_the_detectors_coverage(tmp_path, facts, expected):
    data = manifest_data(box_source="detector" if facts else "none")
    data["detector"] = facts
    bundle = load_bundle(write_manifest(tmp_path / "b", data))
    assert bundle.detector_coverage == expected


def test_a_coverage_outside_0_1_is_refused(tmp_path):
    data = manifest_data(box_source="detector")
    data["detector"] = _detector_facts(coverage=1.5)
    with pytest.raises(CroptuneError, match="coverage"):
        load_bundle(write_manifest(tmp_path / "b", data))


@pytest.mark.parametrize(
    ("coverage", "level", "said"),
    [
        # measured below the target: a warning naming the figure and what to do
        pytest.param(0.42, logging.WARNING, "42% of the held-out teacher boxes", id="low"),
        # at or above the target: an info line with the figure
        pytest.param(COVERAGE_TARGET, logging.INFO, "90% of the held-out", id="at-target"),
        # not measured (older export, nothing held out): said, not guessed
        pytest.param(None, logging.INFO, "records no measured coverage", id="unknown"),
    ],
)
def test_predict_says_what_coverage_its_crops_had(tmp_path, coverage, level, said):
    data = manifest_data(box_source="detector")
    data["detector"] = _detector_facts(coverage=coverage)
    note_level, note = load_bundle(write_manifest(tmp_path / "b", data)).coverage_note()
    assert note_level == level and said in note


class _NamedDetector:
    """A box source named as the detector, proposing nothing (no model loaded)."""

    name = "detector"

    def key(self) -> str:
        return "fake-detector"

    def prepare(self) -> None:
        pass

    def boxes(self, photos):
        return []

    def close(self) -> None:
        pass


def test_predict_logs_the_low_coverage_and_records_it_in_its_stats(tmp_path, caplog):
    folder = tmp_path / "catalog"
    folder.mkdir()
    Image.new("RGB", (160, 120), (120, 130, 140)).save(folder / "a.png")
    catalog = folder / "catalog.jsonl"
    catalog.write_text(json.dumps({"item_id": "A", "images": ["a.png"]}) + "\n")
    data = manifest_data(box_source="detector")
    data["detector"] = _detector_facts(coverage=0.5)
    bundle = load_bundle(write_manifest(tmp_path / "b", data))
    from teacher_labeling.endpoint import EndpointBackend, EndpointConfig

    with FakeOpenAI(FixedAnswer(json.dumps(ANSWER))) as server:
        config = EndpointConfig(
            name="croptune-tiny", model="croptune-tiny", base_url=server.base_url, max_retries=0
        )
        backend = EndpointBackend(config, cache_dir=None, max_new_tokens=64)
        with caplog.at_level(logging.INFO, logger="finetune"):
            summary = predict_catalog(
                bundle, catalog, tmp_path / "p.jsonl", backend, _NamedDetector()
            )
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("50% of the held-out teacher boxes" in r.getMessage() for r in warned)
    assert summary.stats["box_source_coverage"] == 0.5


def test_export_copies_the_measured_coverage_into_the_manifest(tmp_path):
    from finetune.export.writer import _write_detector

    source = tmp_path / "detector"
    source.mkdir()
    (source / "detector.pt").write_bytes(b"not a zip: nothing to clean")
    settings = {"imgsz": 320, "classes": ["region"], "metrics": {"coverage": 0.91}}
    (source / "detector.yaml").write_text(yaml.safe_dump(settings))
    facts = _write_detector(source, tmp_path / "bundle" / "detector")
    assert facts.coverage == 0.91
    # a detector trained before coverage was measured: none recorded, none invented
    (source / "detector.yaml").write_text(yaml.safe_dump({"imgsz": 320, "metrics": {}}))
    assert _write_detector(source, tmp_path / "bundle2" / "detector").coverage is None


def test_held_out_coverage_is_of_the_crops_planned_from_the_served_proposals(tmp_path, monkeypatch):
    import finetune.detector.metrics as metrics
    from finetune.detector.load import Detector

    image = Image.new("RGB", (400, 300))
    row = ImageRow("I", 0, str(tmp_path / "x.png"), "sha", 400, 300, None)
    teacher = [Box(0, 10, 10, 60, 30), Box(0, 300, 250, 390, 290)]
    photo = ExportedPhoto(sha256="sha", owners=[("I", 0)], rows=[row], boxes=teacher)
    # The detector serves one box on the first sticker only (the low-conf call for mAP
    # returns the same): the enclosing square around it misses the second sticker.
    proposals = [Box(0, 12, 12, 58, 28, "region", "detector", 0.9)]
    monkeypatch.setattr(metrics, "_load_photo", lambda photo: image)
    monkeypatch.setattr(metrics, "predict_boxes", lambda det, images, conf=None: [proposals])
    figures = metrics.evaluate_detector(Detector(model=None), [photo], CropConfig())
    assert figures["coverage"] == 0.5
    assert figures["crop_area"] is not None and 0 < figures["crop_area"] < 0.1
    # no teacher boxes on the held-out photos: coverage None, not 0
    empty = ExportedPhoto(sha256="sha", owners=[("I", 0)], rows=[row], boxes=[])
    assert metrics.evaluate_detector(Detector(model=None), [empty])["coverage"] is None


def test_the_run_crop_config_is_the_one_coverage_is_measured_with(tmp_path):
    from finetune.detector.train import _run_crop_config
    from toolkit.store import RunStore

    with RunStore(Path(tmp_path / "run")) as store:
        assert _run_crop_config(store) == CropConfig()  # never cropped: the default
        store.set_meta("crop_config", CropConfig(strategy="per-box").model_dump_json())
        assert _run_crop_config(store).strategy == "per-box"


@pytest.mark.parametrize(
    ("settings", "nbs"),
    [
        # the default: one optimizer update per batch (not ultralytics' 64 photos)
        pytest.param({"batch": 8}, 8, id="default-one-update-per-batch"),
        # a nominal batch sums the gradients of several batches per update
        pytest.param({"batch": 8, "nominal_batch": 32}, 32, id="nominal-batch"),
    ],
)
def test_the_detector_updates_once_per_nominal_batch(tmp_path, monkeypatch, settings, nbs):
    import ultralytics

    import finetune.detector.train as train
    from finetune.detector import DetectorConfig

    seen: dict = {}

    class FakeYOLO:
        def __init__(self, source, task):
            self.trainer = None

        def add_callback(self, event, callback):
            pass

        def train(self, **kwargs):
            seen.update(kwargs)
            save = Path(kwargs["project"]) / kwargs["name"]
            (save / "weights").mkdir(parents=True)
            (save / "weights" / "last.pt").write_bytes(b"weights")

            class Trainer:
                save_dir = save

            self.trainer = Trainer()

    monkeypatch.setattr(ultralytics, "YOLO", FakeYOLO)
    weights = train._fit(
        "yolo11n.yaml", tmp_path / "fit.yaml", tmp_path / "out", DetectorConfig(**settings), False
    )
    assert weights.read_bytes() == b"weights"
    assert (seen["batch"], seen["nbs"]) == (settings["batch"], nbs)


@pytest.mark.parametrize(
    ("coverage", "said"),
    [
        # measured: the card names it
        pytest.param(0.93, "its crops held 93% of the held-out teacher boxes", id="measured"),
        # not measured: the card says so rather than staying silent
        pytest.param(None, "coverage of teacher boxes not measured", id="unknown"),
    ],
)
def test_the_model_card_names_the_detectors_coverage(coverage, said):
    from finetune.export.card import model_card
    from toolkit.bundle import BundleManifest

    data = manifest_data(box_source="detector")
    data["detector"] = _detector_facts(coverage=coverage)
    assert said in model_card(BundleManifest.model_validate(data))
