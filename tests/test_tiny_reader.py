"""The tiny-reader base: its generic pretraining task, its vocabulary, and its build."""

from __future__ import annotations

import json
import random

import pytest

from finetune.students.checkpoints import checkpoint_name_problems
from finetune.students.reading import COLOURS, SHAPES, WORDS, corpus_lines, reading_sample
from finetune.students.tiny_reader import (
    PRETRAINING_FILE,
    Pretraining,
    build_tiny_reader,
    reader_corpus_lines,
    reader_whole_words,
)
from finetune.students.vocab import SCRATCH_WHOLE_WORDS


def test_reading_samples_are_seeded_and_answer_what_is_drawn() -> None:
    a = [reading_sample(random.Random(5)) for _ in range(3)]
    b = [reading_sample(random.Random(5)) for _ in range(3)]
    assert [x[1] for x in a] == [x[1] for x in b]
    assert [x[0].tobytes() for x in a] == [x[0].tobytes() for x in b]
    rng = random.Random(0)
    for _ in range(200):
        image, answer = reading_sample(rng)
        first, second = answer.split("\n")
        assert first.startswith("object: ") and second.startswith("label: ")
        obj, label = first.removeprefix("object: "), second.removeprefix("label: ")
        if obj == "none":  # a close-up: a square around the label, as a crop
            assert image.width == image.height < 448 and label in COLOURS
        else:  # a whole scene
            colour, shape = obj.split(" ")
            assert image.size == (448, 448) and colour in COLOURS and shape in SHAPES
            assert label == "none" or label in COLOURS


def test_the_pictures_never_show_the_demo_task() -> None:
    # No picture answer names a certification mark or is JSON: fine-tuning teaches those.
    rng = random.Random(1)
    answers = [reading_sample(rng)[1] for _ in range(500)]
    for answer in answers:
        assert "{" not in answer
        assert not set(answer.replace("\n", " ").split(" ")) & set(SCRATCH_WHOLE_WORDS)
    assert {a.split("\n")[1] for a in answers} >= {f"label: {c}" for c in COLOURS}


def test_answer_words_are_single_tokens_of_the_reader_vocabulary() -> None:
    from finetune.students.tiny_gemma3 import _tiny_gemma3_processor

    tokenizer = _tiny_gemma3_processor(reader_corpus_lines(), reader_whole_words()).tokenizer
    for word in (*WORDS, *SCRATCH_WHOLE_WORDS):
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert set(corpus_lines()) <= set(reader_corpus_lines())


@pytest.mark.slow
def test_build_writes_a_loadable_base_with_its_pretraining_record(tmp_path) -> None:
    import torch
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    from finetune.students.tiny_gemma3 import build_tiny_scratch_gemma3

    settings = Pretraining(steps=4, batch_size=2)
    folder = build_tiny_reader(tmp_path / "reader", settings=settings)
    record = json.loads((folder / PRETRAINING_FILE).read_text())
    assert record["settings"]["steps"] == 4 and len(record["loss_curve"]) == 2
    assert all(loss == loss and loss > 0 for _, loss in record["loss_curve"])  # finite
    assert checkpoint_name_problems(folder) == []  # vLLM's weight names
    model = Gemma3ForConditionalGeneration.from_pretrained(folder)
    AutoProcessor.from_pretrained(folder)
    # Pretraining moved the weights away from tiny-scratch's random start (same seed, sizes).
    scratch = Gemma3ForConditionalGeneration.from_pretrained(
        build_tiny_scratch_gemma3(tmp_path / "scratch")
    )
    moved = [
        name
        for (name, p), (_, q) in zip(
            model.named_parameters(), scratch.named_parameters(), strict=True
        )
        if p.shape == q.shape and not torch.equal(p, q)
    ]
    assert any("vision_tower" in name for name in moved)
    assert any("language_model" in name for name in moved)
