"""The tiny-scratch experiment student and full fine-tuning (tuning: full)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from croptune.synthetic.marks import _MARK_STYLE, MARK_CLASSES, make_marks_catalog
from finetune.students import load_preset, resolve_student
from finetune.students.tiny import TINY_SCRATCH_MODEL
from finetune.students.vocab import SCRATCH_WHOLE_WORDS
from finetune.train import TrainConfig, load_train_config, train
from toolkit.errors import CroptuneError

PROMPT = "Which mark is on the label? Answer with one JSON object."


@pytest.fixture(scope="module")
def scratch() -> Path:
    """The tiny-scratch student, built offline into the test session's cache."""
    return Path(resolve_student(TINY_SCRATCH_MODEL))


@pytest.fixture(scope="module")
def marks_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from datasets import Dataset, DatasetDict

    from toolkit.dataset import dataset_features, example_row

    rng = random.Random(0)

    def row(index: int) -> dict:
        mark = rng.choice(MARK_CLASSES)
        photo = Image.new("RGB", (64, 64), tuple(rng.randint(0, 255) for _ in range(3)))
        answer = json.dumps({"regulatory_safety": {"certification_marks": [mark]}})
        return {"item_id": f"T{index}", "category": "", **example_row([photo], PROMPT, answer)}

    folder = tmp_path_factory.mktemp("marks-toy")
    DatasetDict(
        {
            "train": Dataset.from_list([row(i) for i in range(8)], features=dataset_features()),
            "test": Dataset.from_list([row(i) for i in range(8, 12)], features=dataset_features()),
        }
    ).save_to_disk(folder)
    return folder


@pytest.fixture(scope="module")
def full_run(scratch, marks_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("full-run")
    config = TrainConfig(
        student="tiny-scratch",  # tuning left unset: the preset's (full)
        dataset=marks_dataset,
        output_dir=out,
        max_steps=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        logging_steps=1,
        gradient_checkpointing=False,
        seed=0,
    )
    return train(config), out


def test_preset_is_an_experiment_with_full_tuning():
    preset = load_preset("tiny-scratch")
    assert preset.model == TINY_SCRATCH_MODEL
    assert preset.tuning == "full"
    assert preset.torch_dtype == "float32"
    # Every other shipped preset keeps LoRA (vLLM serves adapters).
    assert load_preset("tiny").tuning == "lora"
    assert load_preset("gemma-3-4b-it").tuning == "lora"
    text = (Path(__file__).parent.parent / "finetune" / "presets" / "tiny-scratch.yaml").read_text()
    assert "EXPERIMENT preset, not a production one" in text


def test_scratch_student_has_the_documented_sizes(scratch):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    preset = load_preset("tiny-scratch")
    config = json.loads((scratch / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    assert (text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]) == (
        128,
        256,
        2,
    )
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]) == (
        4,
        1,
        32,
    )
    assert text["layer_types"] == ["sliding_attention", "full_attention"]
    assert (vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]) == (
        128,
        256,
        4,
    )
    assert vision["image_size"] == preset.image_size == 112 and vision["patch_size"] == 14
    assert config["mm_tokens_per_image"] == preset.image_tokens
    model = AutoModelForImageTextToText.from_pretrained(scratch)
    assert 1.0e6 < sum(p.numel() for p in model.parameters()) < 1.1e6
    tokenizer = AutoProcessor.from_pretrained(scratch).tokenizer
    assert len(tokenizer) <= text["vocab_size"] == 1024
    for mark in MARK_CLASSES:
        answer = json.dumps({"regulatory_safety": {"certification_marks": [mark]}})
        ids = tokenizer(answer, add_special_tokens=False).input_ids
        assert mark in tokenizer.convert_ids_to_tokens(ids), mark  # one token, whole
        assert tokenizer.decode(ids) == answer


def test_the_marks_drawn_are_exactly_the_scratch_whole_words(scratch, tmp_path):
    # The student owns its vocabulary; the marks generator draws from it, never the reverse.
    assert MARK_CLASSES == SCRATCH_WHOLE_WORDS
    assert set(_MARK_STYLE) == set(SCRATCH_WHOLE_WORDS)  # every whole word has a drawing
    catalog = make_marks_catalog(tmp_path / "marks", n_items=24, seed=0)
    drawn = {
        mark
        for line in catalog.read_text(encoding="utf-8").splitlines()
        for mark in json.loads(line)["attributes"]["regulatory_safety"]["certification_marks"]
    }
    assert drawn == set(SCRATCH_WHOLE_WORDS)
    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(scratch).tokenizer
    for word in SCRATCH_WHOLE_WORDS:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert tokenizer.convert_ids_to_tokens(ids) == [word], word  # a single token


def test_scratch_build_is_cached_apart_from_tiny(scratch):
    assert resolve_student(TINY_SCRATCH_MODEL) == str(scratch)
    assert "tiny-scratch" in scratch.name
    assert resolve_student("croptune:tiny") != str(scratch)


def test_full_tuning_changes_every_weight_and_saves_a_model(scratch, full_run):
    from safetensors.torch import load_file

    result, out = full_run
    assert result.tuning == "full" and result.steps == 2
    assert result.adapter_dir == out / "model"
    assert not (out / "adapter").exists()
    assert not (result.adapter_dir / "adapter_config.json").exists()
    assert (result.adapter_dir / "train_config.yaml").is_file()
    before = load_file(str(scratch / "model.safetensors"))
    after = load_file(str(result.adapter_dir / "model.safetensors"))
    assert before.keys() == after.keys() and len(before) > 50
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    # Saved with the weight names vLLM loads, like the base it started from.
    from finetune.students.checkpoints import checkpoint_name_problems

    assert checkpoint_name_problems(result.adapter_dir) == []
    assert any(name.startswith("vision_tower.vision_model.") for name in after)


def test_full_model_loads_and_answers_like_evaluate_does(full_run, marks_dataset, tmp_path):
    from croptune.pipeline import run_evaluate

    result, _ = full_run
    [scored] = run_evaluate(
        [str(result.adapter_dir)], marks_dataset, tmp_path / "eval", max_new_tokens=16
    )
    assert scored.scores.examples == 4
    assert all(isinstance(a["answer"], str) for a in scored.answers)
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_export_refuses_a_full_model_clearly(full_run):
    from finetune.export.lint import lint_adapter
    from finetune.export.writer import export_bundle

    result, out = full_run
    with pytest.raises(CroptuneError, match="whole model.*not a LoRA adapter.*croptune evaluate"):
        lint_adapter(result.adapter_dir)
    with pytest.raises(CroptuneError, match="whole model"):
        export_bundle(result.adapter_dir, out / "bundle")


def test_cli_export_of_a_full_model_is_one_message(full_run, tmp_path):
    import subprocess
    import sys

    result, _ = full_run
    done = subprocess.run(
        [sys.executable, "-m", "croptune.cli", "export", "--adapter", str(result.adapter_dir),
         "--out", str(tmp_path / "bundle")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert "whole model" in done.stderr and "Traceback" not in done.stderr


def test_tuning_is_a_config_key_and_lora_stays_the_default(tmp_path):
    base = ["dataset=d", "output_dir=o"]
    assert load_train_config(None, base).tuning is None  # the preset decides
    assert load_train_config(None, [*base, "tuning=full"]).tuning == "full"
    with pytest.raises(CroptuneError, match="tuning"):
        load_train_config(None, [*base, "tuning=partial"])


def test_qlora_with_full_tuning_is_refused(marks_dataset, tmp_path):
    config = TrainConfig(
        student="tiny-scratch",
        dataset=marks_dataset,
        output_dir=tmp_path,
        tuning="full",
        qlora=True,
        max_steps=1,
    )
    with pytest.raises(CroptuneError, match="qlora.*tuning=full"):
        train(config)
