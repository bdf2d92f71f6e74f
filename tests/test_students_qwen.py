"""The tiny Qwen2.5-VL student, presets per family, and where LoRA goes (`adapt`)."""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from finetune.students import load_preset, resolve_student
from finetune.students.lora import LORA_TARGETS, lora_targets
from finetune.students.presets import QWEN_PIXELS_PER_TOKEN, StudentPreset
from finetune.train import TrainConfig, load_train_config
from tests.training import Snapshots
from toolkit.errors import CroptuneError

ANSWER = (
    '{"identifiers": {"gtin": "5012345678900"}, "attributes": {"brand": "Acmé", "size": "1 l"}}'
)
PROMPT = "Read the printed text on the photos. Answer with one JSON object."
IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_STEPS = 4


def _images(n: int) -> list[Image.Image]:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    sizes = [(64, 48), (200, 120), (112, 112), (30, 90)]
    return [Image.new("RGB", sizes[i], colours[i]) for i in range(n)]


def _save(tmp: Path, splits: dict[str, list[dict]]) -> Path:
    from datasets import Dataset, DatasetDict

    from toolkit.dataset import dataset_features

    DatasetDict(
        {
            name: Dataset.from_list(rows, features=dataset_features())
            for name, rows in splits.items()
        }
    ).save_to_disk(tmp)
    return tmp


def _row(images: list[Image.Image], answer: str, item_id: str) -> dict:
    from toolkit.dataset import example_row

    return {"item_id": item_id, "category": "", **example_row(images, PROMPT, answer)}


@pytest.fixture(scope="module")
def qwen_path() -> Path:
    # Built once into the sandboxed $CROPTUNE_CACHE, like `student: tiny-qwen` does.
    return Path(resolve_student("croptune:tiny-qwen"))


@pytest.fixture(scope="module")
def qwen_processor(qwen_path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(qwen_path)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    rng = random.Random(0)

    def rows(n: int, offset: int) -> list[dict]:
        return [
            _row(
                [
                    Image.effect_noise((rng.randint(32, 160), rng.randint(32, 160)), 60).convert(
                        "RGB"
                    )
                    for _ in range(rng.randint(2, 4))
                ],
                json.dumps({"attributes": {"brand": f"Acme {offset + i}", "color": "red"}}),
                f"A{offset + i}",
            )
            for i in range(n)
        ]

    return _save(tmp_path_factory.mktemp("dataset"), {"train": rows(4, 0), "test": rows(2, 100)})


# --------------------------------------------------------------------------- the tiny student


def test_tiny_qwen_is_an_instruct_style_student(qwen_path, qwen_processor):
    from transformers import AutoModelForImageTextToText
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    model = AutoModelForImageTextToText.from_pretrained(qwen_path)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(qwen_processor).__name__ == "Qwen2_5_VLProcessor"
    assert sum(p.numel() for p in model.parameters()) < 500_000
    tok = qwen_processor.tokenizer
    # The Instruct checkpoints' template, verbatim, on the tokenizer and the processor.
    assert tok.chat_template == qwen_processor.chat_template == qwen2_5_vl_chat_template
    assert len(tok) == model.config.text_config.vocab_size == 1024
    # Generation stops at the end of the assistant turn, as Qwen2.5-VL-Instruct's does.
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    # Special tokens are single ids, never split by BPE.
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>"):
        assert tok(token, add_special_tokens=False).input_ids == [tok.convert_tokens_to_ids(token)]
    # Byte-level BPE: any text, accents and symbols included, survives a round trip.
    text = ANSWER + " Fabriqué en Chine ✓\n"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_resolve_builds_each_tiny_student_once_in_its_own_folder(qwen_path):
    assert Path(resolve_student("croptune:tiny-qwen")) == qwen_path  # cached, not rebuilt
    assert qwen_path.name.startswith("tiny-qwen25vl-")
    assert Path(resolve_student("croptune:tiny")).name.startswith("tiny-gemma3-")
    assert any(p.name.startswith(".croptune") for p in qwen_path.iterdir())  # complete marker


def test_unknown_built_in_student_is_a_user_error():
    with pytest.raises(CroptuneError, match="croptune:tiny-qwen"):
        resolve_student("croptune:tiny-llama")


def test_template_renders_multi_image_prompt_and_completion(qwen_processor):
    from toolkit.dataset import example_row

    row = example_row(_images(3), PROMPT, ANSWER)
    prompt = qwen_processor.apply_chat_template(
        row["prompt"], tokenize=False, add_generation_prompt=True
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{IMAGE_SLOT * 3}{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    )
    full = qwen_processor.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    assert full == prompt + ANSWER + "<|im_end|>\n"


@pytest.mark.parametrize(
    ("size", "tokens"),
    [
        ((112, 112), 16),  # exactly max_pixels: the preset's image_tokens
        ((56, 56), 4),  # exactly min_pixels
        ((112, 56), 8),  # under the cap: tokens follow the area
        ((200, 120), 15),  # over the cap: scaled down to fit, never above image_tokens
        ((30, 90), 8),  # under min_pixels: scaled up
        ((10, 10), 4),  # tiny: scaled up to min_pixels
        ((600, 40), 15),  # a thin strip: aspect kept, area capped
    ],
)
def test_image_tokens_follow_the_area(qwen_processor, size, tokens):
    preset = load_preset("tiny-qwen")
    text = qwen_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = qwen_processor(
        text=[text],
        images=[[Image.new("RGB", size)]],
        add_special_tokens=False,
        return_tensors="pt",
    )
    pad = qwen_processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == pad).sum()) == tokens <= preset.image_tokens
    _, grid_h, grid_w = inputs["image_grid_thw"][0].tolist()
    assert grid_h * grid_w // 4 == tokens


def test_trl_collator_labels_exactly_the_answer(qwen_processor, tmp_path):
    """The loss covers the answer and its end of turn, never the prompt or image tokens."""
    from finetune.train.trainer import build_trainer

    row = _row(_images(3), ANSWER, "A1")
    dataset = _save(tmp_path / "ds", {"train": [row]})
    config = TrainConfig(student="tiny-qwen", dataset=dataset, output_dir=tmp_path / "out")
    trainer, _ = build_trainer(config)
    assert type(trainer.data_collator).__name__ == "DataCollatorForVisionLanguageModeling"
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    labelled = labels != -100
    tok = qwen_processor.tokenizer

    # Exactly the answer, then Qwen's end of turn and the newline its template writes after it.
    assert tok.decode(labels[labelled]) == ANSWER + "<|im_end|>\n"
    assert (labels[labelled] == ids[labelled]).all()
    # The labelled tokens are one block at the end: nothing of the prompt is labelled.
    first = int(labelled.nonzero()[0])
    assert labelled[first:].all() and not labelled[:first].any()
    # ...and everything before it is exactly the prompt as inference renders it.
    prompt = qwen_processor.apply_chat_template(
        row["prompt"], tokenize=False, add_generation_prompt=True
    )
    expected = qwen_processor(
        text=[prompt], images=[row["images"]], add_special_tokens=False, return_tensors="pt"
    )
    assert ids[:first].tolist() == expected["input_ids"][0].tolist()
    # 64x48 -> 56x56 (4), 200x120 -> 140x84 (15), 112x112 (16) image tokens.
    image_ids = {tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")}
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert int((ids == pad).sum()) == 4 + 15 + 16
    assert int(sum((ids == i).sum() for i in image_ids)) == 2 * 3
    assert not any(int(i) in image_ids | {pad} for i in labels[labelled])
    assert batch["image_grid_thw"].shape == (3, 3)


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct"),
        ("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct"),
        ("tiny-qwen", "croptune:tiny-qwen"),
    ],
)
def test_qwen_presets(name, model):
    preset = load_preset(name)
    assert (preset.model, preset.family) == (model, "qwen2_5_vl")
    assert preset.image_tokens == preset.max_pixels // QWEN_PIXELS_PER_TOKEN
    assert preset.min_pixels <= preset.max_pixels
    # sdpa: eager would hold seq_len^2 scores per head for ~10k-token examples.
    assert preset.attn_implementation == "sdpa"


def test_tiny_qwen_preset_matches_the_built_model(qwen_processor):
    preset = load_preset("tiny-qwen")
    size = qwen_processor.image_processor.size
    assert (size["shortest_edge"], size["longest_edge"]) == (preset.min_pixels, preset.max_pixels)
    assert preset.image_size**2 == preset.max_pixels
    assert preset.torch_dtype == "float32"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # Gemma 3 resizes to a fixed square: a pixel budget would be silently ignored.
        ({"family": "gemma3", "max_pixels": 12544}, "qwen2_5_vl only"),
        # A Qwen preset without a budget would inherit the checkpoint's 16k tokens per image.
        ({"min_pixels": None, "max_pixels": None}, "needs min_pixels and max_pixels"),
        # image_tokens must be the real maximum, or sequence-length estimates lie.
        ({"image_tokens": 256}, "max_pixels / 784 = 16"),
        ({"min_pixels": 50176}, "min_pixels 50176 > max_pixels"),
        # A family croptune has no LoRA table for.
        ({"family": "llava"}, "family"),
    ],
)
def test_bad_presets_are_refused(changes, message):
    good = {"name": "x", "model": "m", "family": "qwen2_5_vl", "image_tokens": 16,
            "image_size": 112, "min_pixels": 3136, "max_pixels": 12544}  # fmt: skip
    StudentPreset.model_validate(good)
    with pytest.raises(ValidationError, match=message):
        StudentPreset.model_validate({**good, **changes})


# --------------------------------------------------------------------------- LoRA targets


@pytest.fixture(scope="module")
def tiny_models() -> dict:
    from transformers import AutoModelForImageTextToText

    return {
        "gemma3": AutoModelForImageTextToText.from_pretrained(resolve_student("croptune:tiny")),
        "qwen2_5_vl": AutoModelForImageTextToText.from_pretrained(
            resolve_student("croptune:tiny-qwen")
        ),
    }


def _layer_names(*kinds: str) -> set[str]:
    return {f"layers.{i}.{kind}" for i in range(2) for kind in kinds}


LANGUAGE = {
    f"model.language_model.{n}"
    for n in _layer_names(*(f"self_attn.{p}_proj" for p in "qkvo"))
    | _layer_names(*(f"mlp.{p}_proj" for p in ("gate", "up", "down")))
}


@pytest.mark.parametrize(
    ("family", "part", "expected"),
    [
        # Decoder attention + MLP of both layers: not lm_head, not the vision side.
        ("gemma3", "language", LANGUAGE),
        ("qwen2_5_vl", "language", LANGUAGE),
        # SigLIP's one encoder layer (transformers 5 drops the checkpoint's vision_model.).
        (
            "gemma3",
            "vision",
            {
                f"model.vision_tower.encoder.layers.0.{n}"
                for n in (
                    "self_attn.q_proj",
                    "self_attn.k_proj",
                    "self_attn.v_proj",
                    "self_attn.out_proj",
                    "mlp.fc1",
                    "mlp.fc2",
                )
            },  # fmt: skip
        ),
        # Qwen's ViT blocks: fused qkv, proj, gated MLP; the Conv3d patch embedding excluded.
        (
            "qwen2_5_vl",
            "vision",
            {
                f"model.visual.blocks.{i}.{n}"
                for i in range(2)
                for n in ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
            },
        ),
        # Qwen's merger MLP; Gemma's projector is a bare parameter (no module matches).
        ("qwen2_5_vl", "projector", {"model.visual.merger.mlp.0", "model.visual.merger.mlp.2"}),
        ("gemma3", "projector", set()),
    ],
)
def test_lora_regexes_match_exactly_the_intended_layers(tiny_models, family, part, expected):
    import torch

    model = tiny_models[family]
    target = LORA_TARGETS[family][part]
    names = {
        n for n, _ in model.named_modules() if target.modules and re.fullmatch(target.modules, n)
    }
    assert names == expected
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], torch.nn.Linear) for n in names)
    parameters = dict(model.named_parameters())
    for name in target.parameters:  # Gemma's projector weight: a real 2-D parameter
        assert parameters[name].ndim == 2


@pytest.mark.parametrize("family", ["gemma3", "qwen2_5_vl"])
def test_lora_parts_cover_every_linear_but_lm_head(tiny_models, family):
    import torch

    model = tiny_models[family]
    linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    covered = [
        {n for n in linear if t.modules and re.fullmatch(t.modules, n)}
        for t in LORA_TARGETS[family].values()
    ]
    assert sum(len(c) for c in covered) == len(set().union(*covered))  # parts are disjoint
    assert linear - set().union(*covered) == {"lm_head"}


def test_composed_regex_is_the_union_of_its_parts(tiny_models):
    modules, parameters = lora_targets("qwen2_5_vl", ["language", "vision", "projector"])
    names = {n for n, _ in tiny_models["qwen2_5_vl"].named_modules() if re.fullmatch(modules, n)}
    assert len(names) == 14 + 10 + 2 and not parameters
    assert lora_targets("gemma3", ["language", "projector"]) == (
        LORA_TARGETS["gemma3"]["language"].modules,
        ["model.multi_modal_projector.mm_input_projection_weight"],
    )


def _part(name: str) -> str:
    if ".language_model." in name:
        return "language"
    if "multi_modal_projector" in name or ".merger." in name:
        return "projector"
    assert ".vision_tower." in name or ".visual." in name, name
    return "vision"


def _lora_parts(model) -> dict[str, int]:
    """Modules carrying LoRA, counted per part of the model."""
    counts: dict[str, int] = {}
    for name in {n.split(".lora_")[0] for n, _ in model.named_parameters() if ".lora_" in n}:
        counts[_part(name)] = counts.get(_part(name), 0) + 1
    return counts


@pytest.mark.parametrize(
    ("student", "adapt", "dropout", "expected"),
    [
        # The default: 2 layers x 7 decoder projections, nothing on the vision side.
        ("tiny-qwen", "language", 0.05, {"language": 14}),
        ("tiny", "language", 0.05, {"language": 14}),
        # + the ViT: 2 blocks x 5 (Qwen), 1 SigLIP layer x 6 (Gemma).
        ("tiny-qwen", "language+vision", 0.05, {"language": 14, "vision": 10}),
        ("tiny", "language+vision", 0.05, {"language": 14, "vision": 6}),
        # + projector: Qwen's 2 merger Linears; Gemma's bare weight via target_parameters.
        ("tiny-qwen", "language+projector", 0.05, {"language": 14, "projector": 2}),
        ("tiny", "language+vision+projector", 0.0, {"language": 14, "vision": 6, "projector": 1}),
    ],
)
def test_adapt_puts_lora_where_asked(
    student, adapt, dropout, expected, dataset_dir, tmp_path, caplog
):
    from finetune.train.trainer import build_trainer

    config = TrainConfig(
        student=student, dataset=dataset_dir, output_dir=tmp_path, adapt=adapt, lora_dropout=dropout
    )
    with caplog.at_level(logging.WARNING, logger="finetune.train"):
        trainer, _ = build_trainer(config)
    assert _lora_parts(trainer.model) == expected
    warned = "--enable-tower-connector-lora" in caplog.text
    assert warned == (adapt != "language")


def test_gemma_projector_lora_needs_no_dropout(dataset_dir, tmp_path):
    from finetune.train.trainer import build_trainer

    config = TrainConfig(
        student="tiny", dataset=dataset_dir, output_dir=tmp_path, adapt="language+projector"
    )
    with pytest.raises(CroptuneError, match="lora_dropout=0"):
        build_trainer(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # Two ways to say where LoRA goes would silently disagree.
        (["adapt=language+vision", "lora_target=q_proj"], "either adapt or lora_target"),
        # Only the four combinations, always with the language model.
        (["adapt=vision"], "adapt"),
    ],
)
def test_bad_adapt_is_a_user_error(overrides, message):
    with pytest.raises(CroptuneError, match=message):
        load_train_config(None, ["dataset=d", "output_dir=o", *overrides])


def test_explicit_lora_target_overrides_adapt():
    from finetune.train.config import lora_target_of

    config = load_train_config(None, ["dataset=d", "output_dir=o", "lora_target=[q_proj]"])
    assert lora_target_of(config, "qwen2_5_vl") == (["q_proj"], [])


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def qwen_run(dataset_dir, tmp_path_factory):
    from finetune.train import train

    config = TrainConfig(
        student="tiny-qwen",
        dataset=dataset_dir,
        output_dir=tmp_path_factory.mktemp("qwen-run"),
        max_steps=QWEN_STEPS,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        logging_steps=1,
        seed=0,
    )
    snapshots = Snapshots()
    result = train(config, callbacks=[snapshots])
    return result, snapshots


@pytest.mark.slow
def test_qwen_lora_trains_on_the_language_model_only(qwen_run):
    from safetensors.torch import load_file

    result, snap = qwen_run
    assert result.steps == QWEN_STEPS and len(result.losses) == QWEN_STEPS
    assert snap.before.keys() == snap.after.keys()
    lora = [k for k in snap.before if "lora_" in k]
    base = [k for k in snap.before if "lora_" not in k]
    changed = {k for k in lora if not snap.before[k].equal(snap.after[k])}
    assert {k for k in lora if "lora_B" in k} <= changed  # every B left zero
    assert all(snap.before[k].equal(snap.after[k]) for k in base)  # base bitwise equal
    lora_modules = {k.split(".lora_")[0] for k in lora}
    assert len(lora_modules) == 14
    assert all(".model.language_model.layers." in n for n in lora_modules)
    saved = load_file(result.adapter_dir / "adapter_model.safetensors")
    assert saved and all(".language_model." in k for k in saved)
    adapter = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert adapter["target_modules"] == LORA_TARGETS["qwen2_5_vl"]["language"].modules
    assert not adapter.get("target_parameters")


@pytest.mark.slow
def test_qwen_adapter_reloads_and_generates(qwen_run, dataset_dir):
    import torch
    from datasets import load_from_disk
    from peft import PeftModel

    from finetune.infer import generate_answers, load_student

    result, _ = qwen_run
    test = load_from_disk(str(dataset_dir))["test"]
    examples = [(row["images"], row["prompt"]) for row in test]
    model, processor = load_student("croptune:tiny-qwen", result.adapter_dir)
    assert isinstance(model, PeftModel)
    answers = generate_answers(model, processor, examples, max_new_tokens=8, batch_size=2)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert not any(t in a for a in answers for t in ("<|im_end|>", "<|image_pad|>"))
    # The adapter is applied: same inputs, different logits than the base.
    base, _ = load_student("croptune:tiny-qwen")
    text = processor.apply_chat_template(examples[0][1], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[examples[0][0]], return_tensors="pt")
    with torch.inference_mode():
        assert not torch.equal(model(**inputs).logits, base(**inputs).logits)
