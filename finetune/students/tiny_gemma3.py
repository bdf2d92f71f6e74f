"""The offline tiny Gemma 3 students: croptune:tiny (LoRA tests) and croptune:tiny-scratch."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.students.checkpoints import save_model_folder
from finetune.students.vocab import (
    SCRATCH_WHOLE_WORDS,
    TINY_VOCAB_SIZE,
    corpus_lines,
    scratch_corpus_lines,
    token_id_of,
)

if TYPE_CHECKING:
    from transformers import (
        Gemma3ForConditionalGeneration,
        Gemma3Processor,
        PreTrainedTokenizerBase,
    )

logger = logging.getLogger(__name__)

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
_TINY_IMAGE_SIZE = 112
_TINY_IMAGE_TOKENS = 16


def _train_tiny_bpe(
    lines: list[str], vocab_size: int = TINY_VOCAB_SIZE
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

    # Room for the whole words, so the vocabulary stays within TINY_VOCAB_SIZE.
    vocab, merges = _train_tiny_bpe(lines or corpus_lines(), TINY_VOCAB_SIZE - len(words))
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

    ids = token_id_of(tokenizer)
    text_config = Gemma3TextConfig(
        vocab_size=TINY_VOCAB_SIZE,
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


def build_tiny_scratch_gemma3(out_dir: Path, seed: int = 0) -> Path:
    """Build the ~1M-parameter random-init Gemma 3 for from-scratch experiments (tiny-scratch).

    SigLIP 112 px / patch 14 / 4 layers / hidden 128; decoder 2 layers (sliding + full),
    hidden 128, 4 query heads, 1 KV head; 1k vocabulary holding CE, UKCA, FCC and RoHS
    as single tokens. Trained with tuning=full: LoRA cannot teach random weights.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = _tiny_gemma3_processor(scratch_corpus_lines(), SCRATCH_WHOLE_WORDS)
    model = _tiny_gemma3_model(processor.tokenizer, seed, _SCRATCH_SIZES)
    save_model_folder(model, out_dir)
    processor.save_pretrained(out_dir)
    logger.debug("built tiny-scratch Gemma 3 student in %s", out_dir)
    return out_dir
