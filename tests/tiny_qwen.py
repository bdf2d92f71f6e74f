"""A tiny real-architecture Qwen2.5-VL built offline, for tests of the local teacher.

Random weights (its answers are junk), real classes end to end: Qwen2Tokenizer (byte-level
BPE), Qwen2VLImageProcessor, Qwen2_5_VLProcessor, Qwen2_5_VLForConditionalGeneration, all
saved with save_pretrained so AutoProcessor / AutoModelForImageTextToText reload them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# Qwen2.5-VL's special tokens, in the order of the real vocabulary (151643...).
SPECIAL_TOKENS = [
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
VOCAB_SIZE = 1024
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112

# A minimal Qwen2-VL style template: default system turn, images as
# <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad token).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus_lines() -> list[str]:
    """Short lines to train the tokenizer on: prompts, box and attribute answers, words."""
    from teacher_labeling.prompts import BOXES_INSTRUCTIONS, COORDS_HINTS

    rng = random.Random(0)
    lines = [line for line in BOXES_INSTRUCTIONS.splitlines() if line.strip()]
    lines += list(COORDS_HINTS.values())
    lines += [
        "You are a helpful assistant.",
        "You are given photos of one product listing.",
        "Read the printed text and answer with ONE JSON object that follows this schema.",
        "Only report what is visible. Do not invent fields.",
        "Made in China",
        "Made in Germany",
        "CE UKCA FCC RoHS",
        "Warning: keep away from children",
        "system",
        "user",
        "assistant",
    ]
    labels = ["barcode", "model number", "serial", "CE mark", "warning", "ingredients", "label"]
    fields = ["gtin", "model_number", "brand", "size", "color", "material", "country_of_origin"]
    for _ in range(200):
        x1, y1 = rng.randint(0, 400), rng.randint(0, 400)
        box = [x1, y1, x1 + rng.randint(5, 200), y1 + rng.randint(5, 200)]
        lines.append(json.dumps([{"bbox_2d": box, "label": rng.choice(labels)}]))
        value = "".join(
            rng.choice("0123456789ABCDEFKLMNPRSTX- ") for _ in range(rng.randint(3, 13))
        )
        lines.append(json.dumps({"attributes": {rng.choice(fields): value}}))
    return lines


def _build_tokenizer() -> object:
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
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus_lines(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=state["vocab"],
        merges=[tuple(m) for m in state["merges"]],
        eos_token="<|im_end|>",  # as the Instruct checkpoints: generation stops at the turn end
        pad_token="<|endoftext|>",
        unk_token=None,
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
    tokenizer.add_tokens([AddedToken(token, special=True) for token in SPECIAL_TOKENS])
    return tokenizer


def build_tiny_qwen25vl(out_dir: Path, seed: int = 0) -> Path:
    """Build and save a tiny random Qwen2.5-VL (processor + model) into out_dir; returns it."""
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

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),  # required by the processor class, unused here
        chat_template=CHAT_TEMPLATE,
    )

    text_config = Qwen2_5_VLTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
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
    model.generation_config = GenerationConfig(
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
        pad_token_id=ids("<|endoftext|>"),
        bos_token_id=ids("<|endoftext|>"),
        # The real checkpoints' sampling defaults: a greedy teacher must override them.
        do_sample=True,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
        repetition_penalty=1.05,
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
