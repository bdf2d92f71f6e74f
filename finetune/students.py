"""Student presets and the tiny offline Gemma 3 student used by tests and demos."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from toolkit.errors import CroptuneError

logger = logging.getLogger(__name__)

TINY_MODEL = "croptune:tiny"
# Bump when the tiny builder changes what it writes: cached builds are keyed by it.
TINY_BUILDER_VERSION = 1
_COMPLETE_MARKER = ".croptune-complete"

# The Gemma 3 special tokens the processor and chat template rely on, in vocabulary order.
# pad/eos/bos ids 0/1/2 match real Gemma so configs and generation defaults look familiar.
_SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
_BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]
_TINY_VOCAB_SIZE = 1024
_TINY_IMAGE_SIZE = 112
_TINY_IMAGE_TOKENS = 16


class StudentPreset(BaseModel):
    """A student model and the settings that go with it (one YAML file in finetune/presets)."""

    name: str = Field(description="Preset name: the YAML file name without its extension")
    model: str = Field(
        description="Hub id or local path of the base model; 'croptune:tiny' = the offline tiny one"
    )
    family: Literal["gemma3"] = Field(
        "gemma3", description="Model family: decides the chat template and the LoRA target layout"
    )
    image_tokens: int = Field(
        description="Soft tokens per image in the prompt (Gemma 3: 256 whatever the image size)",
        gt=0,
    )
    image_size: int = Field(description="Side in pixels of the square the vision tower sees", gt=0)
    torch_dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16", description="Weight dtype for training and inference"
    )
    attn_implementation: str = Field(
        "eager",
        description="Attention kernel: 'eager' as Gemma 3 guides train it; 'sdpa' is faster on GPUs",
    )
    notes: str = Field("", description="Free text: memory needs, caveats")


def _presets_dir() -> resources.abc.Traversable:
    return resources.files("finetune") / "presets"


def list_presets() -> list[str]:
    """Names of the bundled student presets (the YAML files in finetune/presets)."""
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in _presets_dir().iterdir()
        if entry.name.endswith(".yaml")
    )


def load_preset(name: str) -> StudentPreset:
    """Load a bundled student preset by name."""
    entry = _presets_dir() / f"{name}.yaml"
    if not entry.is_file():
        raise CroptuneError(
            f"unknown student preset {name!r}; choose one of: {', '.join(list_presets())}"
        )
    try:
        data = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
        return StudentPreset.model_validate({"name": name, **data})
    except (yaml.YAMLError, ValidationError) as exc:
        raise CroptuneError(f"student preset {name!r} is not valid: {exc}") from exc


def default_cache_dir() -> Path:
    """The croptune cache folder: $CROPTUNE_CACHE or ~/.cache/croptune."""
    return Path(os.environ.get("CROPTUNE_CACHE") or Path.home() / ".cache" / "croptune")


def resolve_student(model: str, cache_dir: Path | None = None) -> str:
    """A loadable model path or hub id; builds the tiny student once for 'croptune:tiny'."""
    if model != TINY_MODEL:
        return model
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / "students" / f"tiny-gemma3-v{TINY_BUILDER_VERSION}-{_corpus_digest()}"
    if (target / _COMPLETE_MARKER).is_file():
        return str(target)
    # Build beside the target and rename, so a crash never leaves a folder that looks usable.
    staging = target.with_name(f"{target.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    build_tiny_gemma3(staging, seed=0)
    (staging / _COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        # Another process finished first; use its build if complete.
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / _COMPLETE_MARKER).is_file():
            raise
    return str(target)


def _corpus_lines() -> list[str]:
    """Short training lines for the tiny tokenizer: JSON-ish answers, schema words, prompts."""
    from toolkit.schema import load_schema

    schema = load_schema("compliance")
    words: list[str] = []
    for group, fields in schema.groups.items():
        words.append(group)
        for name, spec in fields.items():
            words += [name, spec.description]
    rng = random.Random(0)
    lines = [
        "You are given photos of one product listing.",
        "Read the printed text and answer with ONE JSON object that follows this schema.",
        "Only report what is visible. Do not invent fields.",
        "Made in China",
        "Made in Germany",
        "CE UKCA FCC RoHS",
        "Warning: keep away from children",
        '{"identifiers": {"gtin": "5012345678900"}}',
        '{"attributes": {"brand": "Acme", "size": "500 ml", "color": "black"}}',
        "<start_of_turn>user\n",
        "<start_of_turn>model\n",
        "<end_of_turn>\n",
    ]
    lines += words
    lines += [json.dumps({g: {f: "string" for f in fields}}) for g, fields in schema.groups.items()]
    for _ in range(200):
        group = rng.choice(list(schema.groups))
        field = rng.choice(list(schema.groups[group]))
        value = "".join(
            rng.choice("0123456789ABCDEFGHKLMNPRSTX-") for _ in range(rng.randint(3, 13))
        )
        lines.append(json.dumps({group: {field: value}}))
    return lines


def _corpus_digest() -> str:
    return hashlib.sha256("\n".join(_corpus_lines()).encode()).hexdigest()[:10]


def _train_tiny_bpe(lines: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of a ~1k BPE trained like Gemma's (spaces as '▁', byte fallback)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    # Split only to train: merges then never cross a word start, as with SentencePiece.
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback()])
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        special_tokens=_SPECIAL_TOKENS + _BYTE_TOKENS,
        initial_alphabet=["▁", "\n"],
        show_progress=False,
    )
    bpe.train_from_iterator(lines, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    return state["vocab"], [tuple(m) for m in state["merges"]]


def _build_tiny_processor() -> object:
    from transformers import Gemma3ImageProcessor, Gemma3Processor, GemmaTokenizer
    from trl.chat_template_utils import gemma3_chat_template

    vocab, merges = _train_tiny_bpe(_corpus_lines())
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        # transformers 5 reads model-specific special tokens from this dict; Gemma3Processor
        # looks up tokenizer.boi_token / eoi_token / image_token.
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
            "sot_token": "<start_of_turn>",
            "eot_token": "<end_of_turn>",
        },
        add_bos_token=True,  # like the real Gemma tokenizers; TRL passes add_special_tokens=False
        padding_side="left",
    )
    image_processor = Gemma3ImageProcessor(
        size={"height": _TINY_IMAGE_SIZE, "width": _TINY_IMAGE_SIZE}, do_pan_and_scan=False
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=gemma3_chat_template,
        image_seq_length=_TINY_IMAGE_TOKENS,
    )


def _build_tiny_model(tokenizer: object, seed: int) -> object:
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    ids = tokenizer.convert_tokens_to_ids
    text_config = Gemma3TextConfig(
        vocab_size=_TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        query_pre_attn_scalar=32,
        max_position_embeddings=8192,
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
        pad_token_id=ids("<pad>"),
        eos_token_id=ids("<eos>"),
        bos_token_id=ids("<bos>"),
    )
    vision_config = SiglipVisionConfig(
        image_size=_TINY_IMAGE_SIZE,
        patch_size=14,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vision_use_head=False,
    )
    config = Gemma3Config(
        text_config=text_config,
        vision_config=vision_config,
        # Must be a perfect square whose root divides image_size / patch_size (8 / 4 here).
        mm_tokens_per_image=_TINY_IMAGE_TOKENS,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    # Stop at <end_of_turn> like the real Gemma 3 instruct models.
    model.generation_config.eos_token_id = [ids("<eos>"), ids("<end_of_turn>")]
    model.generation_config.pad_token_id = ids("<pad>")
    model.generation_config.bos_token_id = ids("<bos>")
    return model


def build_tiny_gemma3(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny real-architecture Gemma 3 student offline and save model + processor."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = _build_tiny_processor()
    model = _build_tiny_model(processor.tokenizer, seed)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    logger.info("built tiny Gemma 3 student in %s", out_dir)
    return out_dir


def silence_known_warnings() -> None:
    """Hide third-party warnings users cannot act on (peft calling a renamed transformers API)."""
    import warnings

    warnings.filterwarnings(
        "ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning
    )
