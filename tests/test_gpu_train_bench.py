"""bench/gpu_train.py: its CPU smoke path end to end, and the Gemma-3-4B it builds for a GPU.

The smoke path is the script's own main() at --tiny: three synthetic datasets trained through
finetune.train.train, measured by the script's callback. The GPU path cannot run here; what it
builds (the 4B architecture, the 896x896 processor) is checked without training it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
TINY_IMAGE_TOKENS = 16  # finetune/presets/tiny.yaml
STEPS, WARMUP_STEPS = 2, 1


@pytest.fixture(scope="module")
def gpu_train():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        import gpu_train

        yield gpu_train
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def smoke(gpu_train, tmp_path_factory):
    """One --tiny run of all three datasets, its return value and what it printed."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = gpu_train.main(
            [
                "--tiny",
                "--steps",
                str(STEPS),
                "--warmup-steps",
                str(WARMUP_STEPS),
                "--examples",
                "3",
                "--workdir",
                str(tmp_path_factory.mktemp("gpu-train")),
            ]
        )
    return result, printed.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "images"),
    [
        ("originals", 4),  # the estimate's 4.10 images per example, rounded
        ("crops", 3),  # 3.05
        ("originals+crops", 7),  # 6.90
    ],
)
def test_smoke_run_trains_each_dataset_and_prints_its_row(smoke, dataset, images):
    result, printed = smoke
    row = {r.dataset: r for r in result.rows}[dataset]
    assert result.tiny and not result.bf16  # the tiny preset trains in fp32 on a CPU
    assert row.timed_steps == STEPS
    assert row.images_per_example == images
    # The trainer's own collator saw every image as the tiny student's soft tokens.
    assert row.image_tokens_per_example == images * TINY_IMAGE_TOKENS
    assert row.tokens_per_example > row.image_tokens_per_example  # plus prompt and answer
    assert row.examples_per_s > 0 and row.tokens_per_s > 0
    assert row.tokens_per_s == pytest.approx(row.examples_per_s * row.tokens_per_example)
    assert row.peak_memory_bytes is None  # no GPU to measure
    assert row.estimate_examples_per_s is None and row.measured_over_estimate is None
    # LoRA trained, the base did not.
    assert row.lora_tensors > 0 and row.lora_tensors_changed == row.lora_tensors
    assert row.base_tensors > 0 and row.base_tensors_changed == 0
    assert row.trainable_not_lora == []
    # Its table line: the dataset, then its images and examples/s as returned.
    line = re.search(rf"^{re.escape(dataset)} +\|(.*)$", printed, re.MULTILINE)
    assert line, printed
    cells = [cell.strip() for cell in line.group(1).split("|")]
    assert cells[0] == str(images)
    assert float(cells[2]) == pytest.approx(row.examples_per_s, abs=0.006)
    assert "n/a (CPU)" in cells[4]


@pytest.mark.slow
def test_smoke_run_prints_three_rows_and_says_what_it_measured(smoke):
    result, printed = smoke
    assert [row.dataset for row in result.rows] == ["originals", "crops", "originals+crops"]
    assert "RANDOM weights" in printed and "finetune.train.train" in printed
    assert "Smoke test only" in printed


@pytest.mark.slow
def test_gpu_path_builds_gemma_3_4b_with_256_tokens_per_896_image(gpu_train):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    processor, config = gpu_train.student_processor(tiny=False)
    with torch.device("meta"):  # the architecture without allocating its weights
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    # google/gemma-3-4b-it's published parameter count.
    assert sum(p.numel() for p in model.parameters()) == 4_300_079_472
    assert config.text_config.layer_types.count("full_attention") == 5  # 1 in 6 of 34
    # Gemma 3 squeezes any image to 896x896 and 256 soft tokens, whatever its size.
    image = Image.new("RGB", (1600, 1200), (200, 30, 30))
    batch = processor(text=[f"{processor.boi_token} read"], images=[[image]], return_tensors="pt")
    assert tuple(batch["pixel_values"].shape[-2:]) == (896, 896)
    assert int((batch["input_ids"] == config.image_token_id).sum()) == 256
