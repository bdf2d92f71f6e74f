"""What the tiny students' tokenizers learn from: the training lines, the whole words, the size."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Words the tiny-scratch student's vocabulary holds whole (one token each): the
# certification marks. The marks catalog (croptune.synthetic.marks) draws from these.
SCRATCH_WHOLE_WORDS: tuple[str, ...] = ("CE", "UKCA", "FCC", "RoHS")
TINY_VOCAB_SIZE = 1024


def corpus_lines() -> list[str]:
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


def scratch_corpus_lines() -> list[str]:
    """The tiny corpus, the extraction instructions' lines and a line of the whole words.

    With the instructions in the corpus more of their words become single tokens, as in a
    real tokenizer: the compliance extraction prompt takes 289 tokens instead of 386.
    """
    from toolkit.schema import ATTRIBUTES_INSTRUCTIONS

    instructions = [line for line in ATTRIBUTES_INSTRUCTIONS.splitlines() if "{" not in line]
    return [*corpus_lines(), *instructions, "whole words: " + " ".join(SCRATCH_WHOLE_WORDS)]


def qwen_corpus_lines() -> list[str]:
    """The Gemma corpus without its turn markers, plus Qwen chat words and box answers."""
    rng = random.Random(0)
    lines = [line for line in corpus_lines() if not line.startswith("<")]
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


def token_id_of(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], int]:
    """token -> its id."""
    # convert_tokens_to_ids gives one int for one token (a list only for a list of tokens).
    return cast("Callable[[str], int]", tokenizer.convert_tokens_to_ids)
