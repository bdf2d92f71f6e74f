"""The offline tiny Qwen2.5-VL student (croptune:tiny-qwen): its tokenizer, model and processor."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.students.checkpoints import save_model_folder
from finetune.students.vocab import TINY_VOCAB_SIZE, qwen_corpus_lines, token_id_of

if TYPE_CHECKING:
    from transformers import Qwen2Tokenizer

logger = logging.getLogger(__name__)

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
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=_QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(qwen_corpus_lines(), trainer=trainer)
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
    ids = token_id_of(tokenizer)
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
        vocab_size=TINY_VOCAB_SIZE,
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
