"""The local (in-process transformers) teacher on a tiny real-architecture Qwen2.5-VL."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from teacher_labeling.conventions import sent_size
from teacher_labeling.local import LocalTeacher, _check_qwen_processor
from teacher_labeling.parse import AnswerParseError, parse_attributes, parse_boxes
from teacher_labeling.teachers import TeacherConfig, TeacherError
from toolkit.errors import CroptuneError
from toolkit.schema import load_schema
from toolkit.store import ItemRow

# Pixel limits wider than the tiny model's own (56*56..112*112): the teacher's config,
# not the checkpoint's preprocessor_config, must decide how the processor resizes.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 140 * 140
MAX_TOKENS = 16


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune.students.tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl"), seed=0)


@pytest.fixture(scope="session")
def teacher(tiny_qwen: Path) -> LocalTeacher:
    return _teacher(tiny_qwen)


def _teacher(model, role="both", **overrides) -> LocalTeacher:
    config = TeacherConfig(
        name="qwen-local",
        role=role,
        kind="local",
        model=str(model),
        coords="qwen2.5-vl",
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        max_tokens=MAX_TOKENS,
        **overrides,
    )
    return LocalTeacher(config, load_schema())


ITEM = ItemRow("A1", "Acme kettle", None, None, None, [])


def _photo(width, height, seed=0) -> Image.Image:
    """A busy RGB picture (gradients and bars) so answers differ between images."""
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            ((x * 7 + seed * 50) % 256, (y * 5) % 256, ((x // 9 + y // 7) * 40 + seed) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    return image


def _boxes_request(teacher, original):
    config = teacher.config
    wh = sent_size("qwen2.5-vl", *original.size, config.min_pixels, config.max_pixels)
    sent = original.resize(wh, Image.Resampling.BICUBIC)
    return teacher.boxes_request(ITEM, 0, sent, "hash0", original.size)


def _ask(teacher, request):
    return asyncio.run(teacher.answer(request, ITEM))


def test_answers_boxes_and_attributes_requests(teacher):
    original = _photo(250, 170)
    boxes = _ask(teacher, _boxes_request(teacher, original))
    assert isinstance(boxes.text, str)
    assert boxes.usage["prompt_tokens"] > 0
    assert 0 < boxes.usage["completion_tokens"] <= MAX_TOKENS
    # Greedy, although the checkpoint's generation_config samples (as real Qwen's does).
    assert _ask(teacher, _boxes_request(teacher, original)).text == boxes.text

    images = [_photo(130, 90, seed=1), _photo(77, 150, seed=2)]
    request = teacher.attributes_request(ITEM, images, ["h1", "h2"])
    answer = _ask(teacher, request)
    assert isinstance(answer.text, str)
    assert answer.usage["prompt_tokens"] > boxes.usage["prompt_tokens"]  # long schema prompt
    assert answer.usage["completion_tokens"] <= MAX_TOKENS


@pytest.mark.parametrize("size", [(250, 170), (97, 61), (333, 517), (41, 300)])
def test_processor_keeps_the_sent_size(teacher, size):
    teacher.load()
    processor = teacher._processor
    request = _boxes_request(teacher, _photo(*size))
    sent = request.images[0]
    assert sent.size != size or size[0] % 28 == 0  # originals are not at a fixed point
    text = processor.apply_chat_template(
        teacher.messages(request), add_generation_prompt=True, tokenize=False
    )
    inputs = processor(
        text=[text], images=request.images, return_tensors="pt", **teacher.processor_kwargs()
    )
    _, grid_h, grid_w = inputs["image_grid_thw"][0].tolist()
    assert (grid_w * 14, grid_h * 14) == sent.size
    # One image pad token per 2x2 merged patch group, all in the prompt.
    assert (inputs["input_ids"] == processor.image_token_id).sum() == grid_h * grid_w // 4


def test_the_checkpoint_limits_alone_would_resize_again(teacher):
    # Why the config's limits are passed: the tiny checkpoint caps images at 112*112 pixels,
    # so left to itself its processor shrinks a 168x112 image croptune already sized.
    teacher.load()
    processor = teacher._processor
    sent = _boxes_request(teacher, _photo(250, 170)).images[0]
    assert sent.size == (168, 112)
    default = processor.image_processor(images=[sent], return_tensors="pt")["image_grid_thw"]
    assert tuple(default[0].tolist()[1:]) != (112 // 14, 168 // 14)


def test_a_resized_boxes_image_is_refused_not_mislabelled(teacher):
    request = teacher.boxes_request(ITEM, 0, _photo(100, 90), "h", (100, 90))  # not a fixed point
    with pytest.raises(TeacherError, match="resized"):
        _ask(teacher, request)


def test_a_failed_generate_is_a_teacher_error(teacher):
    # Qwen's processor refuses aspect ratios over 200: this request fails, the teacher goes on.
    request = teacher.attributes_request(ITEM, [Image.new("RGB", (600, 2))], ["h"])
    with pytest.raises(TeacherError, match="qwen"):
        _ask(teacher, request)
    assert _ask(teacher, _boxes_request(teacher, _photo(120, 80))).text is not None


def test_junk_answers_reach_the_parsers_safely(teacher):
    schema = load_schema()
    for seed, size in enumerate([(250, 170), (97, 61), (333, 517)]):
        original = _photo(*size, seed=seed)
        request = _boxes_request(teacher, original)
        text = _ask(teacher, request).text
        try:
            boxes, _ = parse_boxes(text, 0, "qwen2.5-vl", request.images[0].size, original.size)
        except AnswerParseError:
            pass
        else:
            assert isinstance(boxes, list)
        with contextlib.suppress(AnswerParseError):
            parse_attributes(text, schema)


@pytest.mark.parametrize("family", ["gemma3", "qwen2.5-vl"])
def test_the_prompt_has_the_templates_tokens_only(family, tiny_qwen, tiny_student):
    # The chat template writes Gemma's <bos>; the tokenizer adding its own made two.
    if family == "gemma3":
        teacher = LocalTeacher(
            TeacherConfig(name="g", role="attributes", kind="local", model=str(tiny_student),
                          coords="pixels", max_tokens=MAX_TOKENS),
            load_schema(),
        )  # fmt: skip
    else:
        teacher = _teacher(tiny_qwen, role="attributes")
    request = teacher.attributes_request(ITEM, [_photo(64, 48)], ["h0"])
    teacher._load_locked()
    ids = teacher.encode(request)["input_ids"][0].tolist()
    tokenizer = teacher._processor.tokenizer
    rendered = teacher._processor.apply_chat_template(
        teacher.messages(request), add_generation_prompt=True, tokenize=False
    )
    if tokenizer.bos_token_id is not None and rendered.startswith(tokenizer.bos_token):
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids[:3]) == tokenizer.decode(
        tokenizer(rendered, add_special_tokens=False)["input_ids"][:3]
    )


def test_a_missing_model_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    teacher = _teacher(missing)
    with pytest.raises(CroptuneError, match="no-such-model"):
        teacher.check_ready()
    with pytest.raises(CroptuneError, match="no-such-model"):
        _ask(teacher, teacher.attributes_request(ITEM, [_photo(60, 60)], ["h"]))
    # A hub id is not mistaken for a missing folder (loading it is what tells).
    _teacher("Qwen/Qwen2.5-VL-32B-Instruct").check_ready()
    with pytest.raises(CroptuneError, match="cannot load model 'someone/missing-vl'"):
        _ask(_teacher("someone/missing-vl"), teacher.attributes_request(ITEM, [], []))


def test_qwen_coords_need_a_qwen_processor():
    other = SimpleNamespace(
        image_processor=SimpleNamespace(size={"height": 896, "width": 896}, patch_size=14)
    )
    with pytest.raises(CroptuneError, match="qwen2.5-vl"):
        _check_qwen_processor("t", "google/gemma-3-4b-it", other)


def test_labels_a_catalog_end_to_end(tiny_qwen, tmp_path):
    from teacher_labeling.labeling import label_items
    from toolkit.catalog import ingest_catalog, load_catalog
    from toolkit.store import RunStore

    (tmp_path / "img").mkdir()
    lines = []
    for item_id, sizes in [("A", [(250, 170), (97, 61)]), ("B", [(333, 517)])]:
        paths = []
        for index, size in enumerate(sizes):
            _photo(*size, seed=index).save(tmp_path / "img" / f"{item_id}{index}.png")
            paths.append(f"img/{item_id}{index}.png")
        lines.append(json.dumps({"item_id": item_id, "images": paths, "title": "kettle"}))
    (tmp_path / "catalog.jsonl").write_text("\n".join(lines) + "\n")

    teacher = _teacher(tiny_qwen)
    with RunStore(tmp_path / "run") as store:
        ingest_catalog(load_catalog(tmp_path / "catalog.jsonl"), store)
        summary = label_items(store, [teacher])
    # 2 attribute requests + 3 boxes requests, all answered; junk may fail to parse only.
    assert summary.asked == 5
    assert all(("boxes:" in e or "attributes:" in e) for e in summary.errors), summary.errors
    assert not teacher.loaded  # the run closed the teacher
