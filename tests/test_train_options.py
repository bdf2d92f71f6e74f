"""Training options beyond the defaults: resume, trackers, QLoRA, pan & scan, a learnable toy."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

from finetune.train import TrainConfig, train
from finetune.train.arguments import check_trackers, resolve_checkpoint
from toolkit.errors import CroptuneError

PROMPT = "Which colour is the large patch? Answer with one JSON object."
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (240, 220, 20),
}


def _save(splits: dict[str, list[dict]], folder: Path) -> Path:
    from datasets import Dataset, DatasetDict

    from toolkit.dataset import dataset_features

    DatasetDict(
        {
            name: Dataset.from_list(rows, features=dataset_features())
            for name, rows in splits.items()
        }
    ).save_to_disk(folder)
    return folder


def _patch_example(rng: random.Random, index: int, size: tuple[int, int] = (160, 120)) -> dict:
    """A photo with one large coloured patch on noise, plus a crop of the patch."""
    from toolkit.dataset import example_row

    name = rng.choice(sorted(COLOURS))
    photo = Image.effect_noise(size, 60).convert("RGB")
    w, h = size
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    photo.paste(COLOURS[name], box)
    crop = photo.crop(box)
    answer = json.dumps({"attributes": {"color": name}})
    return {"item_id": f"P{index}", "category": "", **example_row([photo, crop], PROMPT, answer)}


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory) -> Path:
    rng = random.Random(7)
    splits = {
        "train": [_patch_example(rng, i) for i in range(24)],
        "validation": [_patch_example(rng, 100 + i) for i in range(8)],
    }
    return _save(splits, tmp_path_factory.mktemp("toy"))


def _config(student: Path, dataset: Path, out: Path, **changes) -> TrainConfig:
    values = {
        "model": str(student),
        "dataset": dataset,
        "output_dir": out,
        "max_steps": 6,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "gradient_checkpointing": False,
        "seed": 0,
        **changes,
    }
    return TrainConfig(**values)


def _lora_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


class Interrupt(TrainerCallback):
    """Stops the run like a kill would: an exception before step `at` + 1 starts."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt


class FirstStep(TrainerCallback):
    """Records the step and the optimizer state the (resumed) loop starts from."""

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if not hasattr(self, "step"):
            self.step = state.global_step
            self.optimizer = {
                k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)}
                for k, v in optimizer.state_dict()["state"].items()
            }


@pytest.mark.slow
def test_resume_continues_from_the_saved_step_with_the_same_optimizer_state(
    tiny_student, toy_dataset, tmp_path
):
    # Dropout on, mid-epoch interruption: resuming must restore RNG, data position and AdamW.
    settings = {"max_steps": 6, "save_steps": 2, "lora_dropout": 0.1, "save_total_limit": None}
    whole = train(_config(tiny_student, toy_dataset, tmp_path / "whole", **settings))

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_student, toy_dataset, cut, **settings), callbacks=[Interrupt(at=3)])
    assert sorted(p.name for p in cut.glob("checkpoint-*")) == ["checkpoint-2"]

    first = FirstStep()
    resumed = train(
        _config(tiny_student, toy_dataset, cut, resume_from_checkpoint=True, **settings),
        callbacks=[first],
    )
    assert first.step == 2
    saved = torch.load(cut / "checkpoint-2" / "optimizer.pt", weights_only=True)["state"]
    assert saved.keys() == first.optimizer.keys() and saved
    for key, tensors in first.optimizer.items():
        for name, tensor in tensors.items():
            assert torch.equal(tensor, saved[key][name]), (key, name)
    assert resumed.steps == whole.steps == 6
    # Same data order, dropout masks and optimizer: the same adapter as the uninterrupted run.
    expected, got = _lora_weights(whole.adapter_dir), _lora_weights(resumed.adapter_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_resume_without_a_checkpoint_is_a_user_error(tiny_student, toy_dataset, tmp_path):
    config = _config(tiny_student, toy_dataset, tmp_path / "empty", resume_from_checkpoint=True)
    with pytest.raises(CroptuneError, match="nothing to resume"):
        resolve_checkpoint(config)
    not_a_checkpoint = tmp_path / "somewhere"
    not_a_checkpoint.mkdir()
    config = _config(tiny_student, toy_dataset, tmp_path, resume_from_checkpoint=not_a_checkpoint)
    with pytest.raises(CroptuneError, match="not a training checkpoint"):
        resolve_checkpoint(config)


@pytest.mark.parametrize(
    ("report_to", "expected", "error"),
    [
        ("none", ["none"], None),
        # tensorboard ships with the dev extra
        ("tensorboard", ["tensorboard"], None),
        (["none", "tensorboard"], ["tensorboard"], None),
        # a typo is named, not passed to the Trainer to fail later
        ("tensorbord", None, "not a known tracker"),
    ],
)
def test_trackers_are_checked(report_to, expected, error):
    if error:
        with pytest.raises(CroptuneError, match=error):
            check_trackers(report_to)
    else:
        assert check_trackers(report_to) == expected


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_missing_tracker_package_says_what_to_install():
    with pytest.raises(CroptuneError, match="pip install wandb"):
        check_trackers("wandb")


def test_tensorboard_receives_the_losses(tiny_student, toy_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    train(_config(tiny_student, toy_dataset, out, max_steps=3, report_to="tensorboard"))
    events = list((out / "runs").rglob("events.out.tfevents*"))
    assert events, "no tensorboard event file"
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert len(accumulator.Scalars("train/loss")) == 3


def test_the_tiny_student_learns_a_learnable_toy(tiny_student, toy_dataset, tmp_path):
    # The answer depends on the image (the patch colour) and on a fixed JSON frame: a working
    # pipeline (masks, image order, LoRA) drives the validation loss far below its start.
    config = _config(
        tiny_student,
        toy_dataset,
        tmp_path / "toy",
        max_steps=48,
        learning_rate=1e-2,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        eval_steps=24,
        eval_on_start=True,
        per_device_train_batch_size=4,
    )
    result = train(config)
    stats = json.loads((result.adapter_dir / "train_stats.json").read_text())
    evals = [entry["eval_loss"] for entry in stats["log_history"] if "eval_loss" in entry]
    assert len(evals) >= 3, evals
    start, end = evals[0], evals[-1]
    assert end < 0.3 * start, evals


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes (extra 'qlora') missing"
)
def test_qlora_trains_lora_on_a_4bit_base(tiny_student, toy_dataset, tmp_path):
    import bitsandbytes as bnb

    from finetune.train.trainer import build_trainer

    config = _config(tiny_student, toy_dataset, tmp_path / "qlora", max_steps=3, qlora=True)
    trainer, facts = build_trainer(config)
    quantized = [
        name
        for name, module in trainer.model.named_modules()
        if isinstance(module, bnb.nn.Linear4bit)
    ]
    assert facts["qlora"] is True
    assert any("language_model" in name for name in quantized)
    assert not any("vision_tower" in name for name in quantized)  # kept in full precision
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)

    # The adapter then serves on the unquantised base, as vLLM would load it.
    from finetune.infer import load_student

    trainer.save_model(str(tmp_path / "adapter"))
    model, _ = load_student(str(tiny_student), tmp_path / "adapter")
    assert any("lora_A" in name for name, _ in model.named_parameters())


def _wide_example(index: int) -> dict:
    from toolkit.dataset import example_row

    wide = Image.new("RGB", (1200, 400), (200, 50, 50))  # 3:1, so pan & scan makes 3 crops
    square = Image.new("RGB", (300, 300), (50, 50, 200))
    answer = json.dumps({"attributes": {"color": "red"}})
    return {"item_id": f"W{index}", "category": "", **example_row([wide, square], PROMPT, answer)}


@pytest.mark.slow
def test_pan_and_scan_adds_image_crops_and_keeps_the_answer_mask(tiny_student, tmp_path):
    from finetune.train.trainer import build_trainer

    dataset = _save({"train": [_wide_example(i) for i in range(4)]}, tmp_path / "wide")
    plain, _ = build_trainer(_config(tiny_student, dataset, tmp_path / "a"))
    scanned, _ = build_trainer(_config(tiny_student, dataset, tmp_path / "b", pan_and_scan=True))

    def first_batch(trainer):
        return next(iter(trainer.get_train_dataloader()))

    image_token = plain.processing_class.tokenizer.convert_tokens_to_ids("<image_soft_token>")
    tokens = {
        name: int((first_batch(trainer)["input_ids"][0] == image_token).sum())
        for name, trainer in (("plain", plain), ("scanned", scanned))
    }
    # 2 images -> 2 x 16 soft tokens; with 3 pan & scan crops of the wide photo -> 5 x 16.
    assert tokens == {"plain": 32, "scanned": 80}
    batch = first_batch(scanned)
    tokenizer = scanned.processing_class.tokenizer
    labels = batch["labels"][0]
    answer = tokenizer.decode(labels[labels != -100])
    assert answer == json.dumps({"attributes": {"color": "red"}}) + "<end_of_turn>\n"
    assert scanned.processing_class.image_processor.do_pan_and_scan is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # pixel budgets belong to Qwen2-VL-style processors
        ({"image_max_pixels": 200_000}, "Qwen2.5-VL options"),
    ],
)
def test_image_options_for_the_wrong_family_are_refused(
    tiny_student, toy_dataset, tmp_path, changes, message
):
    from finetune.train.trainer import build_trainer

    with pytest.raises(CroptuneError, match=message):
        build_trainer(_config(tiny_student, toy_dataset, tmp_path, **changes))


def test_cli_resume_flag_without_checkpoint_is_one_clear_message(
    tiny_student, toy_dataset, tmp_path
):
    import subprocess
    import sys

    croptune = str(Path(sys.executable).parent / "croptune")
    result = subprocess.run(
        [
            croptune,
            "train",
            "--resume",
            f"model={tiny_student}",
            f"dataset={toy_dataset}",
            f"output_dir={tmp_path / 'fresh'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "nothing to resume" in result.stderr
    assert "Traceback" not in result.stderr
