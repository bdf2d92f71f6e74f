"""The tiny-reader base: the tiny-scratch architecture, pretrained briefly on a generic task.

It plays the part of a pretrained VLM in the demo: it has learnt to say what a picture
shows (finetune.students.reading: an object's colour and shape, a paper label's colour),
never a catalog, a schema, JSON or a certification mark. Built offline on first use and
cached like the other tiny students (finetune.students.tiny); the build takes a few
minutes on 2 cores, once.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from finetune.students.checkpoints import save_model_folder
from finetune.students.reading import READ_PROMPT, WORDS, reading_sample
from finetune.students.reading import corpus_lines as reading_corpus_lines
from finetune.students.tiny_gemma3 import (
    _SCRATCH_SIZES,
    _tiny_gemma3_model,
    _tiny_gemma3_processor,
)
from finetune.students.vocab import SCRATCH_WHOLE_WORDS, scratch_corpus_lines

logger = logging.getLogger(__name__)

PRETRAINING_FILE = "pretraining.json"


@dataclass(frozen=True)
class Pretraining:
    """How the reader base is pretrained (written next to its weights)."""

    steps: int = 2400
    batch_size: int = 16
    learning_rate: float = 2e-3  # one-cycle peak; a ~1M-parameter model from random weights
    warmup_fraction: float = 0.05
    adam_beta2: float = 0.95  # as the crop ablation: 0.999 remembers the early large gradients
    data_seed: int = 1
    # Every text_every-th step is a text batch (repeat a corpus line), the rest pictures.
    text_every: int = 3
    threads: int = 0  # torch threads; 0 = leave torch's setting


def reader_corpus_lines() -> list[str]:
    """The tokenizer's training lines: the scratch corpus plus the reading task's words."""
    return [*scratch_corpus_lines(), *reading_corpus_lines()]


def reader_whole_words() -> tuple[str, ...]:
    """Words held whole (one token each): the marks and the reading task's answer words."""
    return tuple(dict.fromkeys((*SCRATCH_WHOLE_WORDS, *WORDS)))


def _prompt() -> str:
    """The pretraining prompt in Gemma 3's chat format (one image, then the question)."""
    return (
        "<bos><start_of_turn>user\n<start_of_image>"
        f"{READ_PROMPT}<end_of_turn>\n<start_of_turn>model\n"
    )


def _batch(processor: Any, rng: random.Random, size: int, prompt_length: int) -> dict[str, Any]:
    """A training batch of reading samples, the loss on the answer only."""
    samples = [reading_sample(rng) for _ in range(size)]
    processor.tokenizer.padding_side = "right"
    encoded = processor(
        text=[_prompt() + answer + "<end_of_turn>\n" for _, answer in samples],
        images=[[image] for image, _ in samples],
        return_tensors="pt",
        padding=True,
        add_special_tokens=False,
    )
    labels = encoded["input_ids"].clone()
    labels[:, :prompt_length] = -100
    labels[encoded["attention_mask"] == 0] = -100
    encoded["labels"] = labels
    return dict(encoded)


def _text_batch(processor: Any, lines: list[str], rng: random.Random, size: int) -> dict[str, Any]:
    """A batch of the text task: repeat a line of the tokenizer's corpus (loss on the answer).

    It trains every output token's embedding, which LoRA cannot change later (a random
    embedding row keeps its token's logit near zero whatever the adapter does).
    """
    import torch

    tokenizer = processor.tokenizer
    prompts, answers = [], []
    for _ in range(size):
        line = rng.choice(lines)
        prompts.append(
            f"<bos><start_of_turn>user\nRepeat: {line}<end_of_turn>\n<start_of_turn>model\n"
        )
        answers.append(line + "<end_of_turn>\n")
    ids = [
        tokenizer(p + a, add_special_tokens=False)["input_ids"]
        for p, a in zip(prompts, answers, strict=True)
    ]
    starts = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    width = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((size, width), pad)
    attention = torch.zeros((size, width), dtype=torch.long)
    labels = torch.full((size, width), -100)
    for row, (tokens, start) in enumerate(zip(ids, starts, strict=True)):
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention[row, : len(tokens)] = 1
        labels[row, start : len(tokens)] = torch.tensor(tokens[start:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def pretrain(model: Any, processor: Any, settings: Pretraining) -> list[tuple[int, float]]:
    """Train every weight on the reading task; (step, loss) every 100 steps."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    rng = random.Random(settings.data_seed)
    first_image, _ = reading_sample(random.Random(0))
    prompt_length = len(
        processor(text=[_prompt()], images=[[first_image]], add_special_tokens=False)["input_ids"][
            0
        ]
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, betas=(0.9, settings.adam_beta2)
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=settings.learning_rate,
        total_steps=settings.steps,
        pct_start=settings.warmup_fraction,
    )
    curve: list[tuple[int, float]] = []
    lines = [line for line in reader_corpus_lines() if "<" not in line]
    model.train()
    started = time.perf_counter()
    for step in range(settings.steps):
        if settings.text_every and step % settings.text_every == settings.text_every - 1:
            batch = _text_batch(processor, lines, rng, settings.batch_size)
        else:
            batch = _batch(processor, rng, settings.batch_size, prompt_length)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == settings.steps - 1:
            curve.append((step, round(float(loss), 4)))
            logger.info(
                "tiny-reader pretraining: step %d/%d, loss %.3f, %.0f s",
                step,
                settings.steps,
                float(loss),
                time.perf_counter() - started,
            )
    model.eval()
    return curve


def build_tiny_reader(out_dir: Path, seed: int = 0, settings: Pretraining | None = None) -> Path:
    """Build the tiny-reader base offline: tiny-scratch's architecture, pretrained on reading."""
    settings = settings or Pretraining()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = _tiny_gemma3_processor(reader_corpus_lines(), reader_whole_words())
    model = _tiny_gemma3_model(processor.tokenizer, seed, _SCRATCH_SIZES)
    model.set_attn_implementation("sdpa")  # ~20% faster than eager on CPU, same result
    logger.info("building the tiny-reader base (once; %d pretraining steps)", settings.steps)
    started = time.perf_counter()
    curve = pretrain(model, processor, settings)
    model.set_attn_implementation("eager")  # saved like the other tiny students
    save_model_folder(model, out_dir)
    processor.save_pretrained(out_dir)
    record = {
        "task": "finetune.students.reading (object colour and shape, label colour)",
        "settings": asdict(settings),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "loss_curve": curve,
    }
    (out_dir / PRETRAINING_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return out_dir
