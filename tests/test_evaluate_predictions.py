"""croptune evaluate --predictions: predict's output scored against a catalog or a run.

The catalog has three items with reference attributes (two units each: six in all) and one
without. Prediction records are written by hand in predict's exact format
(finetune/predict/run.py, docs/predict.md); the expected figures are counted by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from croptune.pipeline import run_label, run_score_predictions
from finetune.evaluate.predictions import NO_PREDICTION
from finetune.evaluate.result import PREDICTIONS
from teacher_labeling.teachers import LabelConfig, TeacherConfig
from toolkit.errors import CroptuneError
from toolkit.store import RunStore

CROPTUNE = str(Path(sys.executable).parent / "croptune")
REFERENCE_TEACHER = TeacherConfig(name="reference", role="both", kind="reference", coords="pixels")

REFERENCES: dict[str, dict[str, Any] | None] = {
    "A": {"attributes": {"brand": "Acme", "color": "red"}},
    "B": {"attributes": {"brand": "Bolt"}, "identifiers": {"model_number": "KT-1"}},
    "C": {"attributes": {"brand": "Cora", "material": "steel"}},
    "D": None,  # no reference attributes: never scored
}


def predicted(item_id: str, attributes: dict[str, Any] | None = None, **extra: Any) -> str:
    """A prediction record as predict writes it (attributes default: the item's reference)."""
    record = {
        "item_id": item_id,
        "attributes": attributes if attributes is not None else REFERENCES[item_id],
        "boxes": [{"image": 0, "xyxy": [1.0, 2.0, 10.0, 12.0], "label": "region",
                   "source": "detector", "score": 0.61}],
        "box_source": "detector",
        "images": 2,
        "image_tokens": None,
        "json_valid": True,
        "seconds": {"decode": 0.01, "boxes": 0.02, "crop": 0.03, "generate": 0.04},
        **extra,
    }  # fmt: skip
    return json.dumps(record)


def failed(item_id: str | None, stage: str, error: str = "something broke", **extra: Any) -> str:
    """An error record as predict writes it."""
    return json.dumps({"item_id": item_id, "error": error, "stage": stage, **extra})


EXACT = [predicted("A"), predicted("B"), predicted("C")]
WRONG_A = {"attributes": {"brand": "Wrong", "color": "red"}}  # 1 of A's 2 units right

# Counts every case is checked on (only the ones a case names differ from these).
NOTHING_AMISS = {
    "reference_items": 3, "predicted": 3, "failed": 0, "failed_by_stage": {}, "missing": 0,
    "missing_items": [], "extra": 0, "extra_items": [], "not_scored": {}, "duplicates": 0,
    "duplicate_items": {}, "bad_lines": [], "catalog_rows": 0, "stopped": 0,
}  # fmt: skip

CASES = [
    pytest.param(
        # every item predicted exactly: 6 of 6 units
        EXACT, (1.0, 1.0, 1.0), 1.0, {},
        id="all-exact",
    ),
    pytest.param(
        # C has no record: its 2 units are missed. P 4/4, R 4/6, F1 0.8
        EXACT[:2], (1.0, 0.6667, 0.8), 0.6667,
        {"predicted": 2, "missing": 1, "missing_items": ["C"]},
        id="one-missing",
    ),
    pytest.param(
        # C failed at parse: predicts nothing, as a missing item (F1 0.8), counted as failed
        [*EXACT[:2], failed("C", "parse", answer="{oops")], (1.0, 0.6667, 0.8), 0.6667,
        {"predicted": 2, "failed": 1, "failed_by_stage": {"parse": 1}},
        id="one-error-record",
    ),
    pytest.param(
        # X is in no reference: not scored (F1 stays 1.0), counted and named
        [*EXACT, predicted("X", {"attributes": {"brand": "Xeno"}})], (1.0, 1.0, 1.0), 1.0,
        {"extra": 1, "extra_items": ["X"]},
        id="extra-item",
    ),
    pytest.param(
        # A twice, the wrong answer last: the last wins. P 5/6, R 5/6 (the first: 1.0)
        [*EXACT, predicted("A", WRONG_A)], (0.8333, 0.8333, 0.8333), 1.0,
        {"duplicates": 1, "duplicate_items": {"A": [1, 4]}},
        id="duplicate-id-last-wins",
    ),
    pytest.param(
        # B's line is cut off: named by its line number; B is then missing (F1 0.8)
        [EXACT[0], EXACT[1][:40], EXACT[2]], (1.0, 0.6667, 0.8), 0.6667,
        {"predicted": 2, "missing": 1, "missing_items": ["B"],
         "bad_lines": [{"line": 2, "error": "not valid JSON"}]},
        id="broken-json-line",
    ),
    pytest.param(
        # D is in the catalog without attributes: not scored, and not called extra
        [*EXACT, predicted("D", {"attributes": {"brand": "Dot"}})], (1.0, 1.0, 1.0), 1.0,
        {"not_scored": {"no reference attributes": ["D"]}},
        id="item-without-reference",
    ),
    pytest.param(
        # catalog rows that did not load (a duplicate of A, a line without an id) are no
        # item's outcome: A keeps its prediction (a duplicate row replacing it: F1 0.8)
        [*EXACT, failed("A", "catalog", "duplicate item_id (line 5); this copy is skipped"),
         failed(None, "catalog", "not valid JSON", where="line 9")],
        (1.0, 1.0, 1.0), 1.0, {"catalog_rows": 2},
        id="catalog-rows",
    ),
    pytest.param(
        # a repaired answer (json_valid false) is scored but lowers the JSON valid rate;
        # a stopped generation is counted
        [predicted("A", json_valid=False, stopped="repetition"), *EXACT[1:]], (1.0, 1.0, 1.0),
        0.6667, {"stopped": 1},
        id="repaired-and-stopped",
    ),
    pytest.param(
        # C failed at generate, B at decode (a failed photo): both predict nothing.
        # P 2/2, R 2/6 = 0.3333, F1 0.5
        [EXACT[0], failed("B", "decode"), failed("C", "generate")], (1.0, 0.3333, 0.5), 0.3333,
        {"predicted": 1, "failed": 2, "failed_by_stage": {"decode": 1, "generate": 1}},
        id="two-stages-failed",
    ),
]  # fmt: skip


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    """A four-item catalog, one small photo each."""
    folder = tmp_path / "catalog"
    folder.mkdir()
    lines = []
    for index, (item_id, attributes) in enumerate(REFERENCES.items()):
        Image.new("RGB", (32, 24), (40 * index, 90, 200 - 40 * index)).save(
            folder / f"{item_id}.png"
        )
        row: dict[str, Any] = {"item_id": item_id, "images": [f"{item_id}.png"]}
        if attributes is not None:
            row["attributes"] = attributes
        lines.append(json.dumps(row))
    path = folder / "catalog.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def run_dir(catalog: Path, tmp_path: Path) -> Path:
    """The catalog labeled by its own references: each item's final labels are its attributes."""
    run = tmp_path / "run"
    run_label(catalog, LabelConfig(teachers=[REFERENCE_TEACHER]), run)
    return run


def write_preds(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def micro(result: Any) -> tuple[float, float, float]:
    scores = result.as_dict()["micro"]
    return (round(scores["precision"], 4), round(scores["recall"], 4), round(scores["f1"], 4))


@pytest.mark.parametrize(("lines", "expected_micro", "json_valid_rate", "counts"), CASES)
def test_predictions_are_scored_with_every_mismatch_counted(
    catalog, tmp_path, lines, expected_micro, json_valid_rate, counts
):
    preds = write_preds(tmp_path / "preds.jsonl", lines)
    [result] = run_score_predictions([preds], catalog, tmp_path / "eval")
    assert result.model == "preds" and result.kind == PREDICTIONS and result.split == "all"
    assert micro(result) == expected_micro
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())[0]
    assert metrics["examples"] == 3
    assert round(metrics["json_valid_rate"], 4) == json_valid_rate
    coverage = metrics["coverage"]
    expected = {**NOTHING_AMISS, **counts}
    for key, value in expected.items():
        if key == "bad_lines":  # the line number, and the start of why
            assert [(b["line"], b["error"][: len(v["error"])]) for b, v in
                    zip(coverage[key], value, strict=True)] == [
                (v["line"], v["error"]) for v in value]  # fmt: skip
        else:
            assert coverage[key] == value, key
    # Missing and failed items are in errors.jsonl with why, failed ones with their stage.
    errors = [json.loads(line) for line in (tmp_path / "eval" / "errors.jsonl").open()]
    without = {e["item_id"]: e for e in errors if e["error"]}
    assert {i for i, e in without.items() if e["error"] == NO_PREDICTION} == set(
        expected["missing_items"]
    )
    stages = {i: e["stage"] for i, e in without.items() if "stage" in e}
    assert sorted(stages.values()) == sorted(
        s for s, n in expected["failed_by_stage"].items() for _ in range(n)
    )
    # The markdown notes say it in words.
    assert "`preds`: " in (tmp_path / "eval" / "metrics.md").read_text()


def test_a_run_reference_gives_the_same_figures_as_the_catalog(catalog, run_dir, tmp_path):
    # one missing (C), one wrong answer (A), one extra (X): P 3/4, R 3/6
    lines = [
        predicted("A", WRONG_A),
        predicted("B"),
        predicted("X", {"attributes": {"brand": "X"}}),
    ]
    preds = write_preds(tmp_path / "preds.jsonl", lines)
    [by_catalog] = run_score_predictions([preds], catalog, tmp_path / "eval-catalog")
    [by_run] = run_score_predictions([preds], run_dir, tmp_path / "eval-run")
    assert micro(by_catalog) == micro(by_run) == (0.75, 0.5, 0.6)
    for key in ("micro", "groups", "fields", "json_valid_rate", "examples"):
        assert by_run.as_dict()[key] == by_catalog.as_dict()[key], key
    for coverage in (by_catalog.coverage, by_run.coverage):
        assert coverage is not None
        assert (coverage["missing_items"], coverage["extra_items"]) == (["C"], ["X"])
        assert coverage["not_scored"] == {}  # D has no labels either way


def test_a_run_reference_scores_one_recorded_split(run_dir, tmp_path):
    with RunStore(run_dir, create=False) as store:
        store.record_splits({"A": "test", "B": "test", "C": "train", "D": "train"}, {"seed": 0})
    # C's wrong answer is in train: not scored, so the test split is exact
    lines = [predicted("A"), predicted("B"), predicted("C", {"attributes": {"brand": "No"}})]
    preds = write_preds(tmp_path / "preds.jsonl", lines)
    [result] = run_score_predictions([preds], run_dir, tmp_path / "eval", split="test")
    assert result.split == "test" and micro(result) == (1.0, 1.0, 1.0)
    assert result.coverage is not None
    assert result.coverage["reference_items"] == 2
    assert result.coverage["not_scored"] == {"in split train": ["C"]}
    with pytest.raises(
        CroptuneError, match="has no split 'validation'; its recorded split has test, train"
    ):
        run_score_predictions([preds], run_dir, tmp_path / "eval", split="validation")


def test_split_needs_a_run_and_a_recorded_split(catalog, run_dir, tmp_path):
    preds = write_preds(tmp_path / "preds.jsonl", EXACT)
    with pytest.raises(CroptuneError, match="--split needs a run folder"):
        run_score_predictions([preds], catalog, tmp_path / "eval", split="test")
    with pytest.raises(CroptuneError, match="has no recorded split"):
        run_score_predictions([preds], run_dir, tmp_path / "eval", split="test")


def test_the_cli_scores_two_files_in_one_table(catalog, tmp_path):
    from typer.testing import CliRunner

    from croptune.cli import app

    shipped = write_preds(tmp_path / "shipped.jsonl", [*EXACT[:2], failed("C", "boxes")])
    exact = write_preds(tmp_path / "exact.jsonl", EXACT)
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        ["--no-progress", "evaluate", "--predictions", str(shipped), "--predictions", str(exact),
         "--name", "served", "--name", "exact", "--reference", str(catalog), "--out", str(out)],
        env={"COLUMNS": "250"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    metrics = {m["model"]: m for m in json.loads((out / "metrics.json").read_text())}
    assert list(metrics) == ["served", "exact"]
    assert metrics["served"]["micro"]["f1"] == pytest.approx(0.8)
    assert metrics["exact"]["micro"]["f1"] == 1.0
    assert metrics["served"]["coverage"]["failed_by_stage"] == {"boxes": 1}
    # s/example: the record's seconds summed (0.01 + 0.02 + 0.03 + 0.04), failed ones untimed
    assert metrics["exact"]["seconds_per_example"] == pytest.approx(0.1)
    table = (out / "metrics.md").read_text()
    assert "| served | 3 | 0.67 | 1.000 | 0.667 | 0.800 |" in table
    assert "| exact | 3 | 1.00 | 1.000 | 1.000 | 1.000 |" in table
    assert "served: 2 of 3 reference item(s) predicted; 1 failed (boxes: 1; C)" in result.stdout
    assert "exact: 3 of 3 reference item(s) predicted" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # --model and --predictions do not mix: the flags are named
        (["--predictions", "{preds}", "--reference", "{catalog}", "--model", "croptune:tiny"],
         "does not combine with --model"),
        # --predictions without --reference
        (["--predictions", "{preds}"], "go together: pass both"),
        # neither mode
        ([], "pass --dataset DIR (with --model) or --predictions FILE"),
        # one --name per file
        (["--predictions", "{preds}", "--predictions", "{preds}", "--name", "a",
          "--reference", "{catalog}"], "1 --name for 2 --predictions"),
    ],
)  # fmt: skip
def test_flag_mistakes_are_user_errors(catalog, tmp_path, args, message):
    from typer.testing import CliRunner

    from croptune.cli import app

    preds = write_preds(tmp_path / "preds.jsonl", EXACT)
    args = [a.format(preds=preds, catalog=catalog) for a in args]
    result = CliRunner().invoke(app, ["--no-progress", "evaluate", *args])
    assert isinstance(result.exception, CroptuneError)
    assert message in str(result.exception)


def test_no_overlap_exits_1_naming_both_files(catalog, tmp_path):
    # predictions of another catalog: no item in common
    preds = write_preds(tmp_path / "other.jsonl", [predicted("X", {"attributes": {"brand": "X"}})])
    result = subprocess.run(
        [CROPTUNE, "--no-progress", "evaluate", "--predictions", str(preds),
         "--reference", str(catalog), "--out", str(tmp_path / "eval")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert str(preds) in result.stderr and str(catalog) in result.stderr
    assert "nothing to score" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "eval" / "metrics.json").exists()
