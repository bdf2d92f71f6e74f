"""The crop ablation end to end, small: crops must let the student read what photos hide.

bench/crop_ablation.py's own pipeline (reference teacher -> crop -> dataset build ->
full fine-tuning of tiny-scratch -> evaluate) on a few dozen items with one seed. A
regression anywhere in label -> crop -> dataset -> train -> evaluate (a box in the wrong
pixels, a crop from the wrong photo, an image order mix-up, a mis-masked answer) takes the
crops student down to chance, and this test fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"

# Picked by measuring (docs/benchmarks.md, "Crop ablation", fast version): 100 items
# (30 test), 200 steps, the two trainings side by side. Training is deterministic on one
# machine; over training seeds 0-3 crops scored 0.73 / 0.67 / 0.73 / 0.50 and originals
# 0.30 / 0.10 / 0.23 / 0.27 (majority mark 0.43). Seed 2 is used; the thresholds below
# hold for all four seeds, a buffer for other CPUs' float rounding.
ITEMS = 100
STEPS = 200
SEED = 2


@pytest.mark.slow
def test_crops_let_the_student_read_the_mark_photos_do_not(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # the worker processes import it by name
    import crop_ablation

    settings = crop_ablation.Settings(
        workdir=tmp_path,
        items=ITEMS,
        steps=STEPS,
        seeds=(SEED,),
        strategies=("originals", "crops"),
        test_ratio=0.3,
        eval_every=STEPS,  # the curve's end points only: this test draws no plot
        validation_limit=16,
        jobs=2,
    )
    summary = crop_ablation.run_ablation(settings)
    accuracy = {row["strategy"]: row["accuracy"] for row in summary["rows"]}
    majority = summary["majority_rate"]
    assert summary["data"]["stats"]["crops"]["images_per_example"] == 1.0
    # Every test item answered in valid JSON by both students: the pipeline delivered.
    for run in summary["runs"]:
        assert run["json_valid"] == 1.0, run
    assert accuracy["crops"] >= 0.5, accuracy
    assert accuracy["crops"] - accuracy["originals"] >= 0.2, (accuracy, majority)
    # Originals cannot read the ~3.5 px mark: no better than always naming the commonest.
    assert accuracy["originals"] <= majority + 0.1, (accuracy, majority)
