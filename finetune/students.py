"""Student presets, the per-family LoRA target table, and the tiny offline students."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from importlib.abc import Traversable

    from transformers import (
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        PreTrainedTokenizerBase,
        Qwen2Tokenizer,
    )

logger = logging.getLogger(__name__)

TINY_MODEL = "croptune:tiny"
TINY_QWEN_MODEL = "croptune:tiny-qwen"
TINY_SCRATCH_MODEL = "croptune:tiny-scratch"
# Bump when a tiny builder changes what it writes: cached builds are keyed by it.
# v4: newline-run tokens and the published vision weight names, so vLLM loads the tiny Gemma 3.
TINY_BUILDER_VERSION = 4
# Bump when build_tiny_scratch_gemma3 changes what it writes (only its cache is rebuilt).
TINY_SCRATCH_VERSION = 2
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
# Real Gemma vocabularies hold runs of newlines as single tokens, and vLLM's Gemma 3 processor
# looks them up by name (it re-merges the "\n\n" around image tokens): without them it cannot start.
# Each run with the merge that builds it.
_NEWLINE_RUNS = {"\n\n": ("\n", "\n"), "\n\n\n": ("\n\n", "\n"), "\n\n\n\n": ("\n\n", "\n\n")}
_TINY_VOCAB_SIZE = 1024
_TINY_IMAGE_SIZE = 112
_TINY_IMAGE_TOKENS = 16


Family = Literal["gemma3", "qwen2_5_vl"]
Tuning = Literal["lora", "full"]
# Qwen2.5-VL: 14 px patches merged 2x2, so one image token per 28x28 pixels.
QWEN_PIXELS_PER_TOKEN = 28 * 28


@dataclass(frozen=True)
class LoraTarget:
    """Where LoRA goes for one part of a model: a module-name regex and/or bare parameters."""

    modules: str | None = None  # peft target_modules regex (re.fullmatch on module names)
    parameters: tuple[str, ...] = ()  # peft target_parameters: weights that are not in a Linear


_LANGUAGE_LAYERS = (
    r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
)
# The single source of truth for LoRA placement, per family and part of the model. Each regex was
# checked against named_modules() of the tiny builds of the real config classes
# (tests/test_students_qwen.py re-checks them). Plain names like "q_proj" or "all-linear" also
# hit the vision tower, whose LoRA weights vLLM ignores unless the server runs with
# --enable-tower-connector-lora: the default ("language") stays on the language model.
LORA_TARGETS: dict[str, dict[str, LoraTarget]] = {
    "gemma3": {
        # Attention and MLP projections of the decoder; not lm_head, not the embeddings.
        "language": LoraTarget(modules=_LANGUAGE_LAYERS),
        # SigLIP encoder layers; the patch embedding is a Conv2d and stays frozen. transformers 5
        # loads the checkpoints' vision_tower.vision_model.* as model.vision_tower.*; the
        # optional group keeps the regex valid for the older nesting.
        "vision": LoraTarget(
            modules=r"model\.vision_tower\.(vision_model\.)?encoder\.layers\.\d+\."
            r"(self_attn\.(q|k|v|out)_proj|mlp\.fc(1|2))"
        ),
        # Gemma 3's projector is a bare nn.Parameter (x @ W after pooling), not a Linear.
        "projector": LoraTarget(
            parameters=("model.multi_modal_projector.mm_input_projection_weight",)
        ),
    },
    "qwen2_5_vl": {
        "language": LoraTarget(modules=_LANGUAGE_LAYERS),
        # ViT blocks (fused qkv); the patch embedding is a Conv3d and stays frozen.
        "vision": LoraTarget(
            modules=r"model\.visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(gate|up|down)_proj)"
        ),
        # The patch merger's 2-layer MLP (Linear, GELU, Linear) into the language model.
        "projector": LoraTarget(modules=r"model\.visual\.merger\.mlp\.(0|2)"),
    },
}


class StudentPreset(BaseModel):
    """A student model and the settings that go with it (one YAML file in finetune/presets)."""

    name: str = Field(description="Preset name: the YAML file name without its extension")
    model: str = Field(
        description="Hub id or local path of the base model; 'croptune:tiny', "
        "'croptune:tiny-qwen' and 'croptune:tiny-scratch' = the offline tiny ones"
    )
    family: Family = Field(
        "gemma3",
        description="Model family: decides the chat template, the image budget and where LoRA goes",
    )
    image_tokens: int = Field(
        description="Image tokens per image in the prompt. Gemma 3: exactly 256 whatever the "
        "image size. Qwen2.5-VL: one per 28x28 pixels after resizing, so this is the MOST per "
        "image, reached at max_pixels (= max_pixels / 784); smaller crops cost fewer",
        gt=0,
    )
    image_size: int = Field(
        description="Gemma 3: side in pixels of the square the vision tower sees. Qwen2.5-VL: "
        "side of a square photo at max_pixels (bigger photos are scaled down to that area)",
        gt=0,
    )
    min_pixels: int | None = Field(
        None,
        description="Qwen2.5-VL only: smaller images are scaled up to this many pixels",
        ge=QWEN_PIXELS_PER_TOKEN,
    )
    max_pixels: int | None = Field(
        None,
        description="Qwen2.5-VL only: bigger images are scaled down to this many pixels; with "
        "the image count it sets the sequence length and so the training memory",
        ge=QWEN_PIXELS_PER_TOKEN,
    )
    torch_dtype: Literal["float32", "bfloat16"] = Field(
        "bfloat16", description="Weight dtype for training and inference"
    )
    attn_implementation: str = Field(
        "eager",
        description="Attention kernel: 'eager' as Gemma 3 guides train it; 'sdpa' is faster on GPUs",
    )
    tuning: Tuning = Field(
        "lora",
        description="What training changes by default: lora (an adapter; the base stays "
        "frozen and vLLM serves it) or full (every weight; for randomly initialised "
        "experiment students, which LoRA cannot teach)",
    )
    notes: str = Field("", description="Free text: memory needs, caveats")

    @model_validator(mode="after")
    def _pixel_budget_fits_the_family(self) -> StudentPreset:
        min_pixels, max_pixels = self.min_pixels, self.max_pixels
        if self.family == "gemma3":
            if (min_pixels, max_pixels) != (None, None):
                raise ValueError("min_pixels/max_pixels apply to qwen2_5_vl only (Gemma 3 resizes)")
            return self
        if min_pixels is None or max_pixels is None:
            raise ValueError("a qwen2_5_vl preset needs min_pixels and max_pixels")
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
        most = max_pixels // QWEN_PIXELS_PER_TOKEN
        if self.image_tokens != most:
            raise ValueError(
                f"image_tokens must be max_pixels / 784 = {most} for qwen2_5_vl, "
                f"not {self.image_tokens}"
            )
        return self


def lora_targets(family: str, parts: list[str] | tuple[str, ...]) -> tuple[str, list[str]]:
    """The peft target_modules regex and target_parameters for these parts of a family."""
    table = LORA_TARGETS[family]
    unknown = [part for part in parts if part not in table]
    if unknown:
        raise CroptuneError(f"unknown LoRA part(s) {unknown} for {family}; known: {list(table)}")
    targets = [table[part] for part in parts]
    regexes = [t.modules for t in targets if t.modules]
    # One alternation of the parts' regexes; fullmatch needs a whole name to match one of them.
    modules = regexes[0] if len(regexes) == 1 else "|".join(f"(?:{r})" for r in regexes)
    return modules, [name for t in targets for name in t.parameters]


def _presets_dir() -> Traversable:
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


@dataclass(frozen=True)
class _TinyStudent:
    folder: str  # cache folder name prefix
    build: Callable[[Path, int], Path]
    corpus: Callable[[], list[str]]  # the tokenizer's training lines: part of the cache key


def _tiny_students() -> dict[str, _TinyStudent]:
    return {
        TINY_MODEL: _TinyStudent("tiny-gemma3", build_tiny_gemma3, _corpus_lines),
        TINY_QWEN_MODEL: _TinyStudent("tiny-qwen25vl", build_tiny_qwen25vl, _qwen_corpus_lines),
        # The folder name carries the scratch builder's own version: bump it alone.
        TINY_SCRATCH_MODEL: _TinyStudent(
            f"tiny-scratch-gemma3-s{TINY_SCRATCH_VERSION}",
            build_tiny_scratch_gemma3,
            _scratch_corpus_lines,
        ),
    }


def resolve_student(model: str, cache_dir: Path | None = None) -> str:
    """A loadable model path or hub id; builds a tiny student once for 'croptune:tiny...'."""
    tiny = _tiny_students().get(model)
    if tiny is None:
        if model.startswith("croptune:"):
            raise CroptuneError(
                f"unknown built-in student {model!r}; choose one of: {', '.join(_tiny_students())}"
            )
        return model
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256("\n".join(tiny.corpus()).encode()).hexdigest()[:10]
    target = cache_dir / "students" / f"{tiny.folder}-v{TINY_BUILDER_VERSION}-{digest}"
    return str(_build_once(target, tiny.build))


def _build_once(target: Path, build: Callable[[Path, int], Path]) -> Path:
    """target, built by build(folder, seed=0) unless a complete build is already there."""
    if (target / _COMPLETE_MARKER).is_file():
        return target
    # Build beside the target and rename, so a crash never leaves a folder that looks usable.
    staging = target.with_name(f"{target.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    build(staging, 0)
    (staging / _COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        # Another process finished first; use its build if complete.
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / _COMPLETE_MARKER).is_file():
            raise
        return target
    logger.info("built %s (once: later runs reuse it)", target)
    return target


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


def _train_tiny_bpe(
    lines: list[str], vocab_size: int = _TINY_VOCAB_SIZE
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of a ~1k BPE trained like Gemma's (spaces as '▁', byte fallback)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    bpe.normalizer = normalizers.Replace(" ", "▁")
    # Split only to train: merges then never cross a word start, as with SentencePiece.
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    bpe.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback()])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS + _BYTE_TOKENS,
        initial_alphabet=["▁", "\n"],
        show_progress=False,
    )
    bpe.train_from_iterator(lines, trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    return _with_newline_runs(state["vocab"], [tuple(m) for m in state["merges"]], vocab_size)


def _with_newline_runs(
    vocab: dict[str, int], merges: list[tuple[str, str]], vocab_size: int
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab/merges with "\n\n", "\n\n\n", "\n\n\n\n" as tokens that BPE builds first.

    The newline merges go ahead of all others, so "\n\n" always becomes one token, as in
    Gemma's tokenizer (vLLM assumes it when it places image tokens). The last learnt merges
    make room for any that are new, keeping the vocabulary within vocab_size.
    """
    runs = _NEWLINE_RUNS
    vocab, merges = dict(vocab), [m for m in merges if "".join(m) not in runs]
    for token in runs:
        vocab.pop(token, None)
    while len(vocab) + len(runs) > vocab_size:  # drop the newest merges' tokens
        token = "".join(merges.pop())
        vocab.pop(token, None)
    # Re-number densely (ids are the vocabulary order) with the runs at the end.
    ordered = [token for token, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    ordered += list(runs)
    return {token: i for i, token in enumerate(ordered)}, list(runs.values()) + merges


def _tiny_gemma3_processor(
    lines: list[str] | None = None, words: tuple[str, ...] = ()
) -> Gemma3Processor:
    """The tiny Gemma 3 processor; words: whole words the vocabulary must hold as one token."""
    from transformers import Gemma3ImageProcessor, Gemma3Processor, GemmaTokenizer
    from trl.chat_template_utils import gemma3_chat_template

    # Room for the whole words, so the vocabulary stays within _TINY_VOCAB_SIZE.
    vocab, merges = _train_tiny_bpe(lines or _corpus_lines(), _TINY_VOCAB_SIZE - len(words))
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        # transformers annotates merges as "a b" strings; the tokenizers BPE takes pairs too.
        merges=merges,  # type: ignore[arg-type]
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
    if words:
        tokenizer.add_tokens(list(words))  # matched whole before BPE: one id each
    image_processor = Gemma3ImageProcessor(
        size={"height": _TINY_IMAGE_SIZE, "width": _TINY_IMAGE_SIZE}, do_pan_and_scan=False
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=gemma3_chat_template,
        image_seq_length=_TINY_IMAGE_TOKENS,
    )


def _id_of(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], int]:
    """token -> its id."""
    # convert_tokens_to_ids gives one int for one token (a list only for a list of tokens).
    return cast("Callable[[str], int]", tokenizer.convert_tokens_to_ids)


@dataclass(frozen=True)
class _Gemma3Sizes:
    """Sizes of a tiny Gemma 3 and how its random weights start."""

    hidden: int
    mlp: int
    heads: int
    vision_hidden: int
    vision_mlp: int
    vision_layers: int
    vision_heads: int
    # At the default std 0.02 the tied embeddings cap every logit near +-1.3, so no LoRA on
    # the decoder can lower the loss much below ln(vocab); trained Gemma embeddings are far
    # larger. x10 lets the tiny student's LoRA learn (tests/test_train_options.py's toy).
    # 1 for students whose every weight trains.
    embedding_scale: float = 1.0


# The LoRA test student (~171k parameters) and the from-scratch experiment student (~1.04M).
_TINY_SIZES = _Gemma3Sizes(64, 128, 2, 32, 64, 1, 2, embedding_scale=10.0)
_SCRATCH_SIZES = _Gemma3Sizes(128, 256, 4, 128, 256, 4, 4)


def _tiny_gemma3_model(
    tokenizer: PreTrainedTokenizerBase, seed: int, sizes: _Gemma3Sizes = _TINY_SIZES
) -> Gemma3ForConditionalGeneration:
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    ids = _id_of(tokenizer)
    text_config = Gemma3TextConfig(
        vocab_size=_TINY_VOCAB_SIZE,
        hidden_size=sizes.hidden,
        intermediate_size=sizes.mlp,
        num_hidden_layers=2,
        num_attention_heads=sizes.heads,
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
        hidden_size=sizes.vision_hidden,
        intermediate_size=sizes.vision_mlp,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.vision_heads,
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
    with torch.no_grad():
        if sizes.embedding_scale != 1.0:
            model.get_input_embeddings().weight.mul_(sizes.embedding_scale)
        # transformers initialises the projector weight to zeros (checkpoints overwrite it):
        # left so, every image feature is 0, images cannot change the answer and the vision
        # tower gets no gradient. Random like the other weights, images reach the decoder.
        projector = model.model.multi_modal_projector.mm_input_projection_weight
        projector.normal_(std=text_config.initializer_range)  # config holds this text_config
    # Stop at <end_of_turn> like the real Gemma 3 instruct models.
    model.generation_config.eos_token_id = [ids("<eos>"), ids("<end_of_turn>")]
    model.generation_config.pad_token_id = ids("<pad>")
    model.generation_config.bos_token_id = ids("<bos>")
    return model


def build_tiny_gemma3(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny real-architecture Gemma 3 student offline and save model + processor."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = _tiny_gemma3_processor()
    model = _tiny_gemma3_model(processor.tokenizer, seed)
    save_model_folder(model, out_dir)
    processor.save_pretrained(out_dir)
    logger.debug("built tiny Gemma 3 student in %s", out_dir)
    return out_dir


def _scratch_words() -> tuple[str, ...]:
    """Words the scratch student's vocabulary holds whole: the certification marks."""
    from toolkit.synthetic import MARK_CLASSES

    return MARK_CLASSES


def _scratch_corpus_lines() -> list[str]:
    """The tiny corpus, the extraction instructions' lines and a line of the whole words.

    With the instructions in the corpus more of their words become single tokens, as in a
    real tokenizer: the compliance extraction prompt takes 289 tokens instead of 386.
    """
    from toolkit.schema import ATTRIBUTES_INSTRUCTIONS

    instructions = [line for line in ATTRIBUTES_INSTRUCTIONS.splitlines() if "{" not in line]
    return [*_corpus_lines(), *instructions, "whole words: " + " ".join(_scratch_words())]


def build_tiny_scratch_gemma3(out_dir: Path, seed: int = 0) -> Path:
    """Build the ~1M-parameter random-init Gemma 3 for from-scratch experiments (tiny-scratch).

    SigLIP 112 px / patch 14 / 4 layers / hidden 128; decoder 2 layers (sliding + full),
    hidden 128, 4 query heads, 1 KV head; 1k vocabulary holding CE, UKCA, FCC and RoHS
    as single tokens. Trained with tuning=full: LoRA cannot teach random weights.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = _tiny_gemma3_processor(_scratch_corpus_lines(), _scratch_words())
    model = _tiny_gemma3_model(processor.tokenizer, seed, _SCRATCH_SIZES)
    save_model_folder(model, out_dir)
    processor.save_pretrained(out_dir)
    logger.debug("built tiny-scratch Gemma 3 student in %s", out_dir)
    return out_dir


# Qwen2.5-VL's special tokens, in the order of the real vocabulary (151643...).
_QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# 56x56..112x112 pixels: 4..16 image tokens per image (one per 28x28 pixels).
_TINY_QWEN_MIN_PIXELS = 56 * 56
_TINY_QWEN_MAX_PIXELS = 112 * 112


def _qwen_corpus_lines() -> list[str]:
    """The Gemma corpus without its turn markers, plus Qwen chat words and box answers."""
    rng = random.Random(0)
    lines = [line for line in _corpus_lines() if not line.startswith("<")]
    lines += [
        "You are a helpful assistant.",
        "system",
        "user",
        "assistant",
        "Locate every region of this product photo that holds printed text or numbers.",
        "Answer with a JSON list of objects with keys bbox_2d and label.",
    ]
    labels = ["barcode", "model number", "serial", "CE mark", "warning", "ingredients", "label"]
    for _ in range(200):
        x1, y1 = rng.randint(0, 400), rng.randint(0, 400)
        box = [x1, y1, x1 + rng.randint(5, 200), y1 + rng.randint(5, 200)]
        lines.append(json.dumps([{"bbox_2d": box, "label": rng.choice(labels)}]))
    return lines


def _tiny_qwen_tokenizer() -> Qwen2Tokenizer:
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Trained with the exact normaliser and pre-tokeniser Qwen2Tokenizer rebuilds around it.
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB_SIZE,
        special_tokens=_QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_qwen_corpus_lines(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        # transformers annotates merges as "a b" strings; the tokenizers BPE takes pairs too.
        merges=[tuple(m) for m in state["merges"]],  # type: ignore[misc]
        eos_token="<|im_end|>",  # as the Instruct checkpoints: generation stops at the turn end
        pad_token="<|endoftext|>",
        unk_token=None,  # type: ignore[arg-type]  # annotated str; None means none (byte BPE)
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
        padding_side="left",
    )
    # As in the real tokenizer.json: every <|...|> token is an added special token, matched
    # whole before BPE (Qwen2Tokenizer registers only the named ones, not <|im_start|>).
    tokenizer.add_tokens([AddedToken(token, special=True) for token in _QWEN_SPECIAL_TOKENS])
    return tokenizer


def build_tiny_qwen25vl(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny real-architecture Qwen2.5-VL offline and save model + processor."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
        Qwen2_5_VLTextConfig,
        Qwen2_5_VLVisionConfig,
    )
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_qwen_tokenizer()
    ids = _id_of(tokenizer)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            min_pixels=_TINY_QWEN_MIN_PIXELS, max_pixels=_TINY_QWEN_MAX_PIXELS
        ),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),  # required by the processor class, unused here
        # The Instruct checkpoints' own template, verbatim (TRL ships it).
        chat_template=qwen2_5_vl_chat_template,
    )
    text_config = Qwen2_5_VLTextConfig(
        vocab_size=_TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,  # type: ignore[call-arg]  # not a declared field; read via **kwargs
        max_position_embeddings=4096,
        # M-RoPE splits head_dim/2 rotary frequencies over (time, height, width).
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    vision_config = Qwen2_5_VLVisionConfig(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        out_hidden_size=64,
        fullatt_block_indexes=[1],
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # As for the tiny Gemma: at std 0.02 the (untied) lm_head caps every logit near +-1.3,
    # so no decoder LoRA could lower the loss much below ln(vocab). x10 lets it learn.
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    model.generation_config = GenerationConfig(
        # Stop at <|im_end|> like the real Instruct models.
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
        pad_token_id=ids("<|endoftext|>"),
        bos_token_id=ids("<|endoftext|>"),
        # The real checkpoints' sampling defaults: greedy callers must override them.
        do_sample=True,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
        repetition_penalty=1.05,
    )
    save_model_folder(model, out_dir)
    processor.save_pretrained(out_dir)
    logger.debug("built tiny Qwen2.5-VL student in %s", out_dir)
    return out_dir


# Weight-name prefixes as the published checkpoints have them, per model_type: what vLLM's
# loaders expect. transformers 5 loads google/gemma-3-*'s vision_tower.vision_model.* into a
# flattened SigLIP and writes that layout back, but a Gemma 3 built from a config saves
# vision_tower.* bare, which vLLM 0.32 refuses ("no module or parameter named
# 'vision_tower.embeddings'").
_CHECKPOINT_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "gemma3": (("vision_tower.", "vision_tower.vision_model."),),
}


def save_model_folder(model: Any, out_dir: Path) -> Path:
    """Save a model with the weight names of its family's published checkpoints."""
    model.save_pretrained(out_dir)
    restore_checkpoint_names(Path(out_dir))
    return Path(out_dir)


def checkpoint_name_problems(folder: Path) -> list[str]:
    """Weight names in a model folder that the published checkpoints (and vLLM) spell otherwise."""
    renames = _CHECKPOINT_PREFIXES.get(_model_type(folder), ())
    return [
        name
        for shard in sorted(Path(folder).glob("*.safetensors"))
        for name in _tensor_names(shard)
        if _renamed(name, renames) != name
    ]


def restore_checkpoint_names(folder: Path) -> int:
    """Rename a saved model's weights to the published checkpoints' names; how many changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    folder = Path(folder)
    renames = _CHECKPOINT_PREFIXES.get(_model_type(folder), ())
    changed: dict[str, str] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        names = {name: _renamed(name, renames) for name in _tensor_names(shard)}
        if all(old == new for old, new in names.items()):
            continue
        with safe_open(str(shard), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {names[name]: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        save_file(tensors, str(shard), metadata=metadata)
        changed.update({old: new for old, new in names.items() if old != new})
    index = folder / "model.safetensors.index.json"
    if changed and index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {changed.get(k, k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return len(changed)


def _renamed(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    for bare, published in renames:
        if name.startswith(bare) and not name.startswith(published):
            return published + name[len(bare) :]
    return name


def _model_type(folder: Path) -> str:
    config = Path(folder) / "config.json"
    if not config.is_file():
        return ""
    return str(json.loads(config.read_text(encoding="utf-8")).get("model_type", ""))


def _tensor_names(shard: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as handle:
        return list(handle.keys())


def silence_known_warnings() -> None:
    """Hide third-party warnings users cannot act on (peft calling a renamed transformers API)."""
    import warnings

    warnings.filterwarnings(
        "ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning
    )
