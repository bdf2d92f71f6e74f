"""LoRA training on the tiny student: what changes, what must not, and what is saved."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.train import TrainConfig, load_train_config
from finetune.train.config import LANGUAGE_MODEL_LORA_TARGET, VLLM_MAX_LORA_RANKS
from tests.training import Snapshots, random_rows
from toolkit.errors import CroptuneError

PROMPT = "Read the printed text on the photos. Answer with one JSON object."
STEPS = 6
CROPTUNE = str(Path(sys.executable).parent / "croptune")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    from datasets import Dataset, DatasetDict

    from toolkit.dataset import dataset_features

    rng = random.Random(0)
    splits = {"train": 6, "validation": 2, "test": 3}
    data = DatasetDict(
        {
            name: Dataset.from_list(
                random_rows(rng, n, 100 * k, lambda _: PROMPT, max_images=4),
                features=dataset_features(),
            )
            for k, (name, n) in enumerate(splits.items())
        }
    )
    folder = tmp_path_factory.mktemp("dataset")
    data.save_to_disk(folder)
    return folder


@pytest.fixture(scope="module")
def run(tiny_student, dataset_dir, tmp_path_factory):
    from finetune.train import train

    config = TrainConfig(
        model=str(tiny_student),
        dataset=dataset_dir,
        output_dir=tmp_path_factory.mktemp("run"),
        max_steps=STEPS,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        logging_steps=1,
        eval_steps=3,
        seed=0,
    )
    snapshots = Snapshots()
    result = train(config, callbacks=[snapshots])
    return config, result, snapshots


def test_training_runs_and_logs_losses(run):
    _, result, _ = run
    assert result.steps == STEPS
    assert len(result.losses) == STEPS
    assert result.first_loss == result.losses[0] and result.last_loss == result.losses[-1]
    assert result.last_loss < result.first_loss
    assert isinstance(result.eval_loss, float)
    assert result.seconds > 0


def test_lora_changes_and_base_stays_bitwise_equal(run):
    _, _, snap = run
    assert snap.before.keys() == snap.after.keys()
    lora = [k for k in snap.before if "lora_" in k]
    base = [k for k in snap.before if "lora_" not in k]
    assert lora and base
    changed = [k for k in lora if not snap.before[k].equal(snap.after[k])]
    # lora_B starts at zero and every B must have moved; A may move too.
    assert {k for k in lora if "lora_B" in k} <= set(changed)
    unchanged_base = [k for k in base if snap.before[k].equal(snap.after[k])]
    assert unchanged_base == base


def test_lora_only_on_the_language_model(run):
    from safetensors.torch import load_file

    _, result, snap = run
    lora_modules = {k.split(".lora_")[0] for k in snap.before if "lora_" in k}
    # 2 layers x (q, k, v, o, gate, up, down)
    assert len(lora_modules) == 14
    for name in lora_modules:
        assert ".model.language_model.layers." in name, name
        assert "vision_tower" not in name and "multi_modal_projector" not in name
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert saved and all(".language_model." in k for k in saved)


def test_adapter_is_servable_by_vllm(run):
    _, result, _ = run
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert 1 <= adapter["r"] <= VLLM_MAX_LORA_RANKS[-1]
    assert adapter["bias"] == "none"
    assert not adapter["modules_to_save"]
    assert adapter["use_dora"] is False
    assert adapter["init_lora_weights"] is True
    assert adapter["target_modules"] == LANGUAGE_MODEL_LORA_TARGET


def test_adapter_folder_is_self_contained(run):
    _, result, _ = run
    for name in ("adapter_model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (result.adapter_dir / name).is_file(), name
    stats = json.loads((result.adapter_dir / "train_stats.json").read_text())
    assert {k: v["examples"] for k, v in stats["dataset"].items()} == {
        "train": 6,
        "validation": 2,
        "test": 3,
    }
    train_split = stats["dataset"]["train"]
    assert 2 <= train_split["images_per_example_min"] <= train_split["images_per_example_max"] <= 4
    assert stats["bf16"] is False


def test_train_config_saved_next_to_the_adapter(run):
    config, result, _ = run
    saved = result.adapter_dir / "train_config.yaml"
    assert load_train_config(saved, []) == config


@pytest.mark.parametrize(
    ("override", "field", "expected"),
    [
        ("max_steps=7", "max_steps", 7),
        ("learning_rate=1e-4", "learning_rate", 1e-4),
        ("learning_rate=0.0003", "learning_rate", 3e-4),
        ("bf16=true", "bf16", True),
        ("eval_steps=null", "eval_steps", None),
        ("lora_r=16", "lora_r", 16),
        ("student=gemma-3-4b-it", "student", "gemma-3-4b-it"),
        ("sft_args.weight_decay=0.1", "sft_args", {"weight_decay": 0.1, "optim": "adamw_torch"}),
        ("sft_args.max_grad_norm=1e-1", "sft_args", {"max_grad_norm": 0.1, "optim": "adamw_torch"}),
    ],
)
def test_overrides(tmp_path, override, field, expected):
    path = tmp_path / "train.yaml"
    path.write_text(
        "dataset: data/ds\noutput_dir: runs/a\nmax_steps: 3\neval_steps: 5\n"
        "sft_args:\n  optim: adamw_torch\n"
    )
    config = load_train_config(path, [override])
    assert getattr(config, field) == expected
    assert config.dataset == tmp_path / "data" / "ds"  # relative to the config file's folder


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora_rank=8", "key 'lora_rank' in override 'lora_rank=8' (did you mean 'lora_r'?)"),
        ("sft_args=", "sft_args"),
        ("lora_r=1024", "largest --max-lora-rank is 512"),
        ("max_steps", "key=value"),
        ("optim.name=adamw", "unknown train config key 'optim'"),
        ("lora_alpha.x=1", "only sft_args"),
    ],
)
def test_bad_overrides_are_user_errors(override, message):
    with pytest.raises(CroptuneError, match=re.escape(message)):
        load_train_config(None, ["dataset=d", "output_dir=o", override])


def test_unknown_key_in_yaml_is_named(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("dataset: d\noutput_dir: o\nepochs: 3\n")
    with pytest.raises(CroptuneError, match="'epochs'"):
        load_train_config(path, [])


def test_missing_required_keys_are_named():
    with pytest.raises(CroptuneError, match="dataset"):
        load_train_config(None, ["output_dir=o"])


def test_generate_answers_with_and_without_adapter(run, dataset_dir):
    from datasets import load_from_disk

    from finetune.infer import generate_answers, load_student

    _, result, _ = run
    test = load_from_disk(str(dataset_dir))["test"]
    examples = [(row["images"], row["prompt"]) for row in test]
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    base = config["base_model_name_or_path"]
    for adapter in (None, result.adapter_dir):
        model, processor = load_student(base, adapter)
        answers = generate_answers(model, processor, examples, max_new_tokens=12, batch_size=2)
        assert len(answers) == len(examples)
        assert all(isinstance(a, str) for a in answers)
        assert not any("<image_soft_token>" in a or "<end_of_turn>" in a for a in answers)


def test_bad_sft_args_and_missing_dataset_are_user_errors(tiny_student, dataset_dir, tmp_path):
    from finetune.train import train

    config = TrainConfig(
        model=str(tiny_student),
        dataset=dataset_dir,
        output_dir=tmp_path,
        sft_args={"not_an_sft_arg": 1},
    )
    with pytest.raises(CroptuneError, match="sft_args"):
        train(config)
    with pytest.raises(CroptuneError, match="does not exist"):
        train(config.model_copy(update={"dataset": tmp_path / "missing", "sft_args": {}}))


# One plain line per logged loss, e.g. "train: 2/4 (50%), loss 8.5680, lr 1.50e-03,
# 5.63 steps/s, elapsed 0:00:01, ETA 0:00:01".
LOSS_LINE = re.compile(
    r"train: (\d+)/4 \(\d+%\), loss (\d+\.\d{4}), lr \d\.\d\de[-+]\d\d, "
    r"\d+\.\d\d steps/s, elapsed \d:\d\d:\d\d, ETA \d:\d\d:\d\d"
)
# --verbose prefixes each line with its level and logger.
LOG_PREFIX = re.compile(r"^(DEBUG|INFO|WARNING) [\w.]+: ")


@pytest.mark.parametrize(
    ("flags", "dicts_shown"),
    [
        # the default: a line per logged loss and per evaluation, each once, no log dicts
        ([], False),
        # --verbose: the Trainer's full log dicts come back (debug), the lines still once each
        pytest.param(["--verbose"], True, marks=pytest.mark.slow),
    ],
)
def test_cli_train_shows_each_line_once(tiny_student, dataset_dir, tmp_path, flags, dicts_shown):
    out = tmp_path / "out"
    result = subprocess.run(
        [CROPTUNE, *flags, "train", f"dataset={dataset_dir}", f"output_dir={out}",
         "student=tiny", f"model={tiny_student}", "max_steps=4", "logging_steps=1",
         "eval_steps=2", "per_device_train_batch_size=2", "gradient_accumulation_steps=1",
         "gradient_checkpointing=false", "learning_rate=1e-3"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stdout + result.stderr  # no terminal: no carriage-return bars
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    repeated = sorted({line for line in lines if lines.count(line) > 1})
    assert not repeated, repeated
    messages = [LOG_PREFIX.sub("", line) for line in lines]
    stats = json.loads((out / "adapter" / "train_stats.json").read_text())

    shown = [m for m in (LOSS_LINE.fullmatch(m) for m in messages) if m]
    assert [int(m[1]) for m in shown] == [1, 2, 3, 4]
    assert [float(m[2]) for m in shown] == [round(loss, 4) for loss in stats["losses"]]
    evals = [e for e in stats["log_history"] if "eval_loss" in e]
    assert [m for m in messages if "validation loss" in m] == [
        f"step {e['step']}/4: validation loss {e['eval_loss']:.4f}" for e in evals
    ]
    assert [e["step"] for e in evals] == [2, 4]  # the last step's evaluation is not redone
    assert stats["eval_loss"] == evals[-1]["eval_loss"]
    assert any("{'loss':" in m for m in messages) == dicts_shown
    assert "train loss first -> last" in result.stdout
