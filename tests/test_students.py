"""The tiny offline Gemma 3 student, the presets, and what TRL's collator trains on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from finetune.students import load_preset, resolve_student
from finetune.students.presets import StudentPreset, list_presets
from toolkit.errors import CroptuneError

ANSWER = (
    '{"identifiers": {"gtin": "5012345678900"}, "attributes": {"brand": "Acme", "size": "500 ml"}}'
)
PROMPT = "Read the printed text on the photos. Answer with one JSON object."


def _images(n: int) -> list[Image.Image]:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    sizes = [(64, 48), (200, 120), (112, 112), (30, 90)]
    return [Image.new("RGB", sizes[i], colours[i]) for i in range(n)]


@pytest.fixture(scope="module")
def processor(tiny_student):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_student)


def test_tiny_student_reloads_offline(tiny_student, processor):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_student)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    assert type(processor).__name__ == "Gemma3Processor"
    assert sum(p.numel() for p in model.parameters()) < 500_000
    assert model.config.mm_tokens_per_image == processor.image_seq_length == 16
    tok = processor.tokenizer
    assert len(tok) == model.config.text_config.vocab_size == 1024
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert model.config.image_token_id == tok.image_token_id
    assert model.config.boi_token_id == tok.boi_token_id
    assert tok.convert_tokens_to_ids("<end_of_turn>") in model.generation_config.eos_token_id
    # Byte fallback: any text, accents and symbols included, survives a round trip.
    text = ANSWER + " Fabriqué en Chine ✓\n"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_tiny_build_is_seeded(tiny_student, tmp_path):
    from safetensors.torch import load_file

    from finetune.students.tiny_gemma3 import build_tiny_gemma3

    again = load_file(build_tiny_gemma3(tmp_path / "again", seed=0) / "model.safetensors")
    first = load_file(tiny_student / "model.safetensors")
    assert again.keys() == first.keys()
    assert all((again[k] == first[k]).all() for k in first)
    assert (tmp_path / "again" / "tokenizer.json").read_text() == (
        tiny_student / "tokenizer.json"
    ).read_text()


def test_processor_expands_three_images(tiny_student, processor):
    from transformers import AutoModelForImageTextToText

    from toolkit.dataset import example_row

    row = example_row(_images(3), PROMPT, ANSWER)
    text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert text.count("<start_of_image>") == 3
    inputs = processor(
        text=[text], images=[row["images"]], add_special_tokens=False, return_tensors="pt"
    )
    ids = inputs["input_ids"][0].tolist()
    tok = processor.tokenizer
    assert ids.count(tok.image_token_id) == 3 * 16
    assert ids.count(tok.boi_token_id) == ids.count(tok.eoi_token_id) == 3
    assert ids.count(tok.bos_token_id) == 1
    assert tuple(inputs["pixel_values"].shape) == (3, 3, 112, 112)
    assert int(inputs["token_type_ids"].sum()) == 3 * 16
    model = AutoModelForImageTextToText.from_pretrained(tiny_student)
    logits = model(**inputs).logits
    assert tuple(logits.shape) == (1, len(ids), 1024)


def _one_row_dataset(tmp_path, row):
    from datasets import Dataset, DatasetDict

    from toolkit.dataset import dataset_features

    split = Dataset.from_list(
        [{"item_id": "A1", "category": "", **row}], features=dataset_features()
    )
    DatasetDict({"train": split}).save_to_disk(tmp_path / "ds")
    return tmp_path / "ds"


def test_example_row_survives_arrow(tmp_path):
    from datasets import load_from_disk

    from toolkit.dataset import example_row

    row = example_row(_images(2), PROMPT, "  " + ANSWER + "\n")
    stored = load_from_disk(str(_one_row_dataset(tmp_path, row)))["train"][0]
    assert stored["prompt"] == row["prompt"]
    assert stored["completion"] == row["completion"]
    assert row["completion"][0]["content"][0]["text"] == ANSWER  # stripped, as the template does
    assert [im.size for im in stored["images"]] == [im.size for im in row["images"]]


def test_trl_collator_labels_exactly_the_answer(tiny_student, processor, tmp_path):
    """The loss must cover the answer and its end of turn, never the prompt or image tokens."""
    from finetune.train import TrainConfig
    from finetune.train.trainer import build_trainer
    from toolkit.dataset import example_row

    row = example_row(_images(3), PROMPT, ANSWER)
    dataset = _one_row_dataset(tmp_path, row)
    config = TrainConfig(
        model=str(tiny_student), dataset=dataset, output_dir=tmp_path / "out", max_steps=1
    )
    trainer, _ = build_trainer(config)
    assert type(trainer.data_collator).__name__ == "DataCollatorForVisionLanguageModeling"
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    labelled = labels != -100
    tok = processor.tokenizer

    # Exactly the answer, then Gemma's end of turn and the newline its template writes after it.
    assert tok.decode(labels[labelled]) == ANSWER + "<end_of_turn>\n"
    assert (labels[labelled] == ids[labelled]).all()
    # The labelled tokens are one block at the end: nothing of the prompt is labelled.
    first = int(labelled.nonzero()[0])
    assert labelled[first:].all() and not labelled[:first].any()
    # ...and everything before it is exactly the prompt as inference renders it.
    prompt = processor.apply_chat_template(
        row["prompt"], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith(PROMPT + "<end_of_turn>\n<start_of_turn>model\n")
    expected = processor(
        text=[prompt], images=[row["images"]], add_special_tokens=False, return_tensors="pt"
    )
    assert ids[:first].tolist() == expected["input_ids"][0].tolist()
    image_ids = {tok.image_token_id, tok.boi_token_id, tok.eoi_token_id}
    assert int(sum((ids == i).sum() for i in image_ids)) == 3 * 18
    assert not any(int(i) in image_ids for i in labels[labelled])


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name):
    preset = load_preset(name)
    assert isinstance(preset, StudentPreset)
    assert preset.name == name
    assert preset.family in ("gemma3", "qwen2_5_vl")
    # Gemma 3's image-token mask wants eager; Qwen2.5-VL's long sequences want sdpa.
    assert preset.attn_implementation == ("eager" if preset.family == "gemma3" else "sdpa")


def test_presets_include_tiny_and_gemma_4b():
    assert {"tiny", "gemma-3-4b-it"} <= set(list_presets())
    big = load_preset("gemma-3-4b-it")
    assert (big.model, big.torch_dtype, big.image_tokens, big.image_size) == (
        "google/gemma-3-4b-it",
        "bfloat16",
        256,
        896,
    )


def test_tiny_preset_matches_the_built_model(tiny_student):
    preset = load_preset("tiny")
    config = json.loads((tiny_student / "config.json").read_text())
    assert preset.model == "croptune:tiny"
    assert preset.image_tokens == config["mm_tokens_per_image"]
    assert preset.image_size == config["vision_config"]["image_size"]


def test_unknown_preset_is_a_user_error():
    with pytest.raises(CroptuneError, match="unknown student preset 'nope'.*tiny"):
        load_preset("nope")


def test_resolve_student_builds_once_and_rebuilds_half_built(tmp_path):
    assert resolve_student("google/gemma-3-4b-it", tmp_path) == "google/gemma-3-4b-it"
    assert resolve_student("/models/local", tmp_path) == "/models/local"

    built = resolve_student("croptune:tiny", tmp_path)
    weights = tmp_path.joinpath(built, "model.safetensors")
    stamp = weights.stat().st_mtime_ns
    assert resolve_student("croptune:tiny", tmp_path) == built
    assert weights.stat().st_mtime_ns == stamp  # reused, not rebuilt

    # A folder without the completion marker (a crash mid-build) is rebuilt.
    marker = next(p for p in tmp_path.joinpath(built).iterdir() if p.name.startswith(".croptune"))
    marker.unlink()
    weights.write_bytes(b"truncated")
    assert resolve_student("croptune:tiny", tmp_path) == built
    assert weights.stat().st_size > 100_000
    assert marker.is_file()


# --------------------------------------------------------------------------- what vLLM needs


@pytest.mark.parametrize(
    "name",
    [
        # the LoRA test student
        "croptune:tiny",
        # the from-scratch experiment student
        "croptune:tiny-scratch",
        # the tiny Qwen2.5-VL (its checkpoint names need no change)
        "croptune:tiny-qwen",
    ],
)
def test_tiny_builds_name_their_weights_as_published_checkpoints(name):
    from safetensors import safe_open

    from finetune.students.checkpoints import checkpoint_name_problems

    folder = Path(resolve_student(name))
    assert checkpoint_name_problems(folder) == []
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        names = list(handle.keys())
    if "qwen" not in name:  # Gemma 3: the SigLIP tower under vision_model, as google/gemma-3-*
        vision = [n for n in names if n.startswith("vision_tower.")]
        assert vision and all(n.startswith("vision_tower.vision_model.") for n in vision)


@pytest.mark.parametrize("name", ["croptune:tiny", "croptune:tiny-scratch"])
def test_tiny_gemma_vocabulary_holds_newline_runs_as_single_tokens(name):
    """vLLM's Gemma 3 processor looks these up by name and refuses to start without them."""
    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(resolve_student(name)).tokenizer
    vocab = tokenizer.get_vocab()
    runs = ["\n\n", "\n\n\n", "\n\n\n\n"]
    assert all(run in vocab for run in runs)
    assert len(vocab) <= 1024 and max(vocab.values()) < 1024  # the model's embedding rows
    # Each run is one token, as in Gemma's own tokenizer (vLLM merges them so around images).
    for run in runs:
        assert tokenizer.tokenize(f"a{run}b") == ["a", run, "b"], run


def test_restore_checkpoint_names_renames_once_and_transformers_loads_the_same_weights(
    tiny_student, tmp_path
):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText

    from finetune.students.checkpoints import checkpoint_name_problems, restore_checkpoint_names

    # A folder as transformers 5 writes a config-built Gemma 3: vision weights bare.
    folder = tmp_path / "bare"
    folder.mkdir()
    for path in Path(tiny_student).iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    weights = load_file(str(folder / "model.safetensors"))
    bare = {n.replace("vision_tower.vision_model.", "vision_tower."): w for n, w in weights.items()}
    save_file(bare, str(folder / "model.safetensors"), metadata={"format": "pt"})
    problems = checkpoint_name_problems(folder)
    assert problems and all(
        n.startswith("vision_tower.embeddings") or "encoder" in n or "post_layernorm" in n
        for n in problems
    )

    assert restore_checkpoint_names(folder) == len(problems)
    assert restore_checkpoint_names(folder) == 0  # idempotent
    assert checkpoint_name_problems(folder) == []
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        assert set(handle.keys()) == set(weights)
    original = AutoModelForImageTextToText.from_pretrained(tiny_student).state_dict()
    restored = AutoModelForImageTextToText.from_pretrained(str(folder)).state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
