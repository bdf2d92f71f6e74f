"""One in-process generation path: the local teacher and the student encode and answer alike."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from teacher_labeling.local import LocalTeacher
from teacher_labeling.teachers import TeacherConfig
from toolkit.dataset import example_row
from toolkit.schema import load_schema
from toolkit.store import ItemRow

MAX_TOKENS = 24
ITEM = ItemRow("A1", "Acme kettle", None, None, None, [])


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def pan_and_scan_student(tiny_student: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Gemma 3 whose saved processor asks for pan & scan (a per-call option)."""
    from transformers import AutoProcessor

    target = tmp_path_factory.mktemp("tiny-gemma3-pan-and-scan") / "model"
    shutil.copytree(tiny_student, target)
    processor = AutoProcessor.from_pretrained(target)
    processor.image_processor.do_pan_and_scan = True
    processor.image_processor.pan_and_scan_max_num_crops = 2
    processor.save_pretrained(target)
    return target


@pytest.mark.parametrize("variant", ["plain", "pan-and-scan"])
def test_teacher_and_student_build_the_same_inputs_and_answer(
    variant, tiny_student, pan_and_scan_student
):
    """Given one model, images and prompt, the local teacher and the in-process student
    build identical input_ids / pixel_values and generate the same text (one <bos>, the
    processor's per-call pan & scan, the same decoding)."""
    from finetune.infer import TransformersBackend, encode_examples

    model = tiny_student if variant == "plain" else pan_and_scan_student
    teacher = LocalTeacher(
        TeacherConfig(name="g", role="attributes", kind="local", model=str(model),
                      coords="pixels", max_tokens=MAX_TOKENS),
        load_schema(),
    )  # fmt: skip
    request = teacher.attributes_request(ITEM, [_photo(640, 260, 1), _photo(64, 64, 2)], ["a", "b"])
    images = list(request.images)
    example = (images, example_row(images, request.prompt, "")["prompt"])
    student = TransformersBackend(str(model), max_new_tokens=MAX_TOKENS)
    _, processor = student._load()
    teacher.load()

    taught = teacher.encode(request)
    studied = encode_examples(processor, [example])
    assert sorted(taught.keys()) == sorted(studied.keys())
    for key in taught:
        assert taught[key].shape == studied[key].shape, key
        assert bool((taught[key] == studied[key]).all()), key
    ids = taught["input_ids"][0].tolist()
    assert ids.count(processor.tokenizer.bos_token_id) == 1
    # The wide photo is panned and scanned into crops only when the processor asks for it.
    assert taught["pixel_values"].shape[0] == (2 if variant == "plain" else 4)

    answer = asyncio.run(teacher.answer(request, ITEM))
    (generated,) = student.answer([example])
    assert answer.text.strip() == generated.text  # the student strips its answers
    assert answer.usage["prompt_tokens"] == len(ids)
    # The random tiny model answers MAX_TOKENS newlines: cut by the limit, said so.
    assert answer.text and answer.usage == {
        "prompt_tokens": len(ids), "completion_tokens": MAX_TOKENS, "truncated": 1
    }  # fmt: skip
    assert generated.stopped is None


def test_importing_the_core_stays_light():
    """toolkit.generation imports torch and transformers only when it runs."""
    import subprocess

    code = (
        "import sys, toolkit.store, toolkit.generation, toolkit.crops, toolkit.dataset; "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
