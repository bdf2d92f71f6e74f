"""The run's one item split: recorded in the run store, obeyed by the dataset, the detector and
the label exports (issue 15: the detector could train on the student's test items)."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_labels_export import _listings_run, _own, _photo_file, _row
from toolkit.dataset import DatasetConfig, build_dataset
from toolkit.dataset.splits import item_splits, run_splits
from toolkit.errors import CroptuneError
from toolkit.export import export_labels_yolo
from toolkit.schema import load_schema
from toolkit.store import SPLIT_SETTINGS_KEY, ItemRow, RunStore

# 16 labeled items in three categories (one photo each), two sharing a photo, one unlabeled.
LISTINGS = (
    [_own(n, "abc"[n % 3]) for n in range(2, 16)]
    + [("L00", "a", ["s", "p0"], True), ("L01", "a", ["s"], True)]
    + [_own(20, labeled=False)]
)
OTHER = {"validation_ratio": 0.25, "test_ratio": 0.25, "seed": 3}  # not the defaults


def _dataset_splits(store: RunStore, out: Path, **settings) -> dict[str, str]:
    """item_id -> split of the DatasetDict `dataset build` writes with these settings."""
    from datasets import load_from_disk

    build_dataset(store, out, load_schema(), DatasetConfig(strategy="originals", **settings))
    saved = load_from_disk(str(out))
    return {item_id: name for name in saved for item_id in saved[name]["item_id"]}


def _detector_splits(store: RunStore, out: Path, **settings) -> tuple[set[str], set[str]]:
    """(train items, held-out items) of the data `detector train` would fit on."""
    from finetune.detector import DetectorConfig, DetectorSummary
    from finetune.detector.data import detector_dataset

    summary = DetectorSummary(out_dir=out)
    detector_dataset(store, out / "dataset", DetectorConfig(**settings), summary)
    return set(summary.train_items), set(summary.held_out_items)


@pytest.mark.parametrize("dataset_first", [True, False], ids=["dataset-first", "detector-first"])
def test_the_detector_holds_out_the_students_test_items(tmp_path, dataset_first):
    # The dataset and the detector are given DIFFERENT split settings (a user who changed the
    # dataset's seed and left the detector's default): they still share one split.
    store = _listings_run(tmp_path, LISTINGS)
    if dataset_first:
        student = _dataset_splits(store, tmp_path / "ds", **OTHER)
        train, held = _detector_splits(store, tmp_path / "det")
    else:
        train, held = _detector_splits(store, tmp_path / "det", **OTHER)
        student = _dataset_splits(store, tmp_path / "ds")
    student_held = {i for i, s in student.items() if s != "train"}
    assert student_held and held  # something is held out on both sides
    assert not train & student_held  # the detector never trains on a student held-out item
    assert held & set(student) == student_held
    assert train & set(student) == {i for i, s in student.items() if s == "train"}
    # the split is the one the first stage's settings made
    assert store.split_settings() == OTHER
    assert {i: store.recorded_splits()[i] for i in student} == student
    store.close()


def test_the_split_survives_reopening_the_store(tmp_path):
    store = _listings_run(tmp_path, LISTINGS)
    first = item_splits(store, **OTHER)
    assert first.status == "new"
    first.record(store)
    store.close()
    with RunStore(tmp_path / "run", create=False) as reopened:
        assert reopened.recorded_splits() == first.splits
        assert reopened.split_settings() == OTHER
        again = item_splits(reopened, **OTHER)
        assert (again.status, again.splits, again.unrecorded) == ("recorded", first.splits, {})


def test_other_settings_after_a_recorded_split_reuse_it_and_say_so(tmp_path, caplog):
    store = _listings_run(tmp_path, LISTINGS)
    recorded = _dataset_splits(store, tmp_path / "ds1")  # the defaults: seed 0
    assert run_splits(store, 0.25, 0.25, 3) != store.recorded_splits()  # seed 3 would differ
    with caplog.at_level(logging.WARNING, logger="toolkit.dataset.splits"):
        again = _dataset_splits(store, tmp_path / "ds2", **OTHER)
        export = export_labels_yolo(store, tmp_path / "yolo", **OTHER)
    assert again == recorded
    assert {i: export.item_splits[i] for i in recorded} == recorded
    assert export.split_settings == {"validation_ratio": 0.1, "test_ratio": 0.2, "seed": 0}
    assert export.split_status == "recorded"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    for text in warnings:  # names the recorded settings, the asked ones and the way out
        assert "split with validation_ratio 0.1, test_ratio 0.2, seed 0" in text
        assert "not validation_ratio 0.25, test_ratio 0.25, seed 3 as asked" in text
        assert "--resplit" in text
    facts = json.loads((tmp_path / "ds2" / "croptune_dataset.json").read_text())
    assert facts["split"] == {"validation_ratio": 0.1, "test_ratio": 0.2, "seed": 0,
                              "status": "recorded"}  # fmt: skip

    # --resplit: split again with the new settings, recorded for every later stage
    from datasets import load_from_disk

    config = DatasetConfig(strategy="originals", **OTHER)
    build_dataset(store, tmp_path / "ds3", load_schema(), config, resplit=True)
    saved = load_from_disk(str(tmp_path / "ds3"))
    resplit = {item_id: name for name in saved for item_id in saved[name]["item_id"]}
    assert resplit == {i: s for i, s in run_splits(store, 0.25, 0.25, 3).items() if i in resplit}
    assert resplit != recorded and store.split_settings() == OTHER
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="toolkit.dataset.splits"):
        follows = export_labels_yolo(store, tmp_path / "yolo2", **OTHER)
    assert not caplog.records  # the asked settings are the recorded ones now
    assert {i: follows.item_splits[i] for i in resplit} == resplit
    store.close()


def test_an_old_store_without_the_table_splits_on_first_use(tmp_path):
    store = _listings_run(tmp_path, LISTINGS)
    store.close()
    # As an older croptune left it: no splits table, no split settings (schema v3).
    conn = sqlite3.connect(tmp_path / "run" / "run.sqlite")
    conn.execute("DROP TABLE splits")
    conn.execute("DELETE FROM meta WHERE key=?", (SPLIT_SETTINGS_KEY,))
    conn.commit()
    conn.close()
    with RunStore(tmp_path / "run", create=False) as old:
        assert old.recorded_splits() == {} and old.split_settings() is None
        student = _dataset_splits(old, tmp_path / "ds")
        assert old.recorded_splits() == run_splits(old, 0.1, 0.2, 0)  # computed, recorded
        assert {i: old.recorded_splits()[i] for i in student} == student
        assert old.split_settings() == {"validation_ratio": 0.1, "test_ratio": 0.2, "seed": 0}


def test_items_ingested_after_the_split_join_it_without_moving_any(tmp_path):
    store = _listings_run(tmp_path, LISTINGS)
    item_splits(store, 0.1, 0.2, 0).record(store)
    before = store.recorded_splits()
    held = next(i for i, s in sorted(before.items()) if s == "test")
    # a new listing showing a test item's photo, and new listings of their own
    new = [("N1", "a", [store.images(held)[0].uri])] + [
        (f"L{n}", "b", [str(_photo_file(tmp_path / "src", f"p{n}"))]) for n in range(30, 40)
    ]
    for position, (item_id, category, paths) in enumerate(new, start=len(LISTINGS)):
        rows = [_row(item_id, i, Path(path)) for i, path in enumerate(paths)]
        store.put_item(ItemRow(item_id, None, category, None, None, []), position, item_id, rows)
    split = item_splits(store, **OTHER)  # other settings: the recorded ones add the new items
    assert split.status == "recorded" and split.settings["seed"] == 0
    assert {i: split.splits[i] for i in before} == before  # nothing recorded moves
    assert split.splits["N1"] == "test"  # a shared photo goes where it cannot leak
    assert set(split.unrecorded) == {"N1", *(f"L{n}" for n in range(30, 40))}
    split.record(store)
    assert store.recorded_splits() == split.splits
    store.close()


def test_a_split_that_is_refused_is_not_recorded(tmp_path):
    store = _listings_run(tmp_path, [_own(n) for n in range(3)])
    with pytest.raises(CroptuneError, match="is left for train"):
        export_labels_yolo(store, tmp_path / "yolo", validation_ratio=0.9, test_ratio=0.9)
    assert store.recorded_splits() == {} and store.split_settings() is None
    export_labels_yolo(store, tmp_path / "yolo")  # the defaults still work afterwards
    assert store.split_settings() == {"validation_ratio": 0.1, "test_ratio": 0.2, "seed": 0}
    store.close()


def test_the_cli_names_the_recorded_split_and_resplits_on_request(tmp_path):
    croptune = str(Path(sys.executable).parent / "croptune")
    store = _listings_run(tmp_path, LISTINGS)
    store.set_meta("schema_json", load_schema().model_dump_json())  # as `croptune label` does
    store.close()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([croptune, "--no-progress", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=300)  # fmt: skip

    first = run("labels", "export", "--run", "run", "--format", "yolo", "--out", "y1", "seed=2")
    assert first.returncode == 0, first.stderr
    built = run("dataset", "build", "--run", "run", "--out", "ds", "strategy=originals")
    assert built.returncode == 0, built.stderr
    out = " ".join((built.stdout + built.stderr).replace("│", " ").split())
    assert "split with validation_ratio 0.1, test_ratio 0.2, seed 2" in out  # the warning
    assert "seed 2 (recorded in the run before)" in out  # the summary row
    again = run("dataset", "build", "--run", "run", "--out", "ds2", "--resplit")
    assert again.returncode == 0, again.stderr
    out = " ".join((again.stdout + again.stderr).replace("│", " ").split())
    assert "seed 0 (re-split: replaces the split recorded before)" in out
    export = run("labels", "export", "--run", "run", "--format", "yolo", "--out", "y2")
    assert export.returncode == 0, export.stderr
    assert "seed 0): train" in export.stdout
    assert "the split is the one recorded in the run" in export.stdout
