"""Teacher answer parsers and coordinate conventions: pure functions, table-driven."""

from __future__ import annotations

import json
import math

import pytest

from teacher_labeling.conventions import from_pixels, sent_size, smart_resize, to_pixels
from teacher_labeling.parse import AnswerParseError, extract_json, parse_attributes, parse_boxes
from toolkit.schema import load_schema


@pytest.mark.parametrize(
    ("height", "width", "min_pixels", "max_pixels", "expected"),
    [
        # already a fixed point: multiples of 28 within the limits stay as they are
        pytest.param(476, 644, 3136, 12845056, (476, 644), id="fixed-point"),
        # sides not multiples of 28: rounded to the nearest multiple
        pytest.param(480, 640, 3136, 12845056, (476, 644), id="round-to-28"),
        # above max_pixels: scaled down, floor to multiples of 28
        pytest.param(1200, 1600, 3136, 1003520, (840, 1148), id="over-max"),
        # below min_pixels: scaled up
        pytest.param(20, 30, 3136, 12845056, (56, 84), id="under-min"),
    ],
)
def test_smart_resize(height, width, min_pixels, max_pixels, expected):
    h, w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    assert (h, w) == expected
    assert h % 28 == 0 and w % 28 == 0
    assert min_pixels <= h * w <= max_pixels
    # a fixed point: resizing the result again changes nothing (server and client agree)
    assert smart_resize(h, w, min_pixels=min_pixels, max_pixels=max_pixels) == (h, w)


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
        smart_resize as hf_smart_resize,
    )

    for height, width in [(480, 640), (1200, 1600), (1000, 37), (3000, 4000), (29, 29)]:
        for max_pixels in (112 * 112, 1003520, 12845056):
            assert smart_resize(height, width, max_pixels=max_pixels) == hf_smart_resize(
                height, width, factor=28, min_pixels=3136, max_pixels=max_pixels
            )


@pytest.mark.parametrize(
    ("coords", "answer_box", "sent_wh", "original_wh", "expected"),
    [
        # pixels of the image as sent, same size as the original
        pytest.param(
            "pixels", (10, 20, 30, 40), (100, 50), (100, 50), (10, 20, 30, 40), id="pixels"
        ),
        # pixels of a half-size sent image map back to double
        pytest.param(
            "pixels", (10, 20, 30, 40), (50, 25), (100, 50), (20, 40, 60, 80), id="pixels-scaled"
        ),
        # 0..1000 on both axes
        pytest.param(
            "norm1000", (0, 500, 1000, 1000), (0, 0), (640, 480), (0, 240, 640, 480), id="norm1000"
        ),
        # 0..1 floats
        pytest.param(
            "norm1", (0.25, 0.5, 0.75, 1.0), (0, 0), (640, 480), (160, 240, 480, 480), id="norm1"
        ),
        # qwen2.5-vl: pixels of the smart-resized image (476x644 for a 480x640 photo)
        pytest.param(
            "qwen2.5-vl", (0, 0, 644, 476), (644, 476), (640, 480), (0, 0, 640, 480), id="qwen-full"
        ),
    ],
)
def test_to_pixels(coords, answer_box, sent_wh, original_wh, expected):
    result = to_pixels(answer_box, coords, sent_wh, original_wh)
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(result, expected, strict=True))
    back = from_pixels(result, coords, sent_wh, original_wh)
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(back, answer_box, strict=True))


def test_sent_size_is_a_smart_resize_fixed_point_only_for_qwen():
    assert sent_size("qwen2.5-vl", 640, 480, 3136, 12845056) == (644, 476)
    assert sent_size("pixels", 640, 480, 3136, 12845056) == (640, 480)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # bare JSON
        pytest.param('[{"a": 1}]', [{"a": 1}], id="bare"),
        # fenced with a language tag and prose around it
        pytest.param('Sure!\n```json\n{"a": 1}\n```\nDone.', {"a": 1}, id="fenced"),
        # truncated list (max_tokens hit): complete entries survive
        pytest.param('[{"a": 1}, {"b": 2}, {"c"', [{"a": 1}, {"b": 2}], id="truncated"),
        # unterminated fence
        pytest.param('```json\n{"a": [1, 2]', {"a": [1, 2]}, id="unterminated-fence"),
    ],
)
def test_extract_json(text, expected):
    value, _ = extract_json(text)
    if isinstance(expected, list):
        assert value[: len(expected)] == expected
    else:
        assert value == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("I cannot see any text.", id="prose-only"),
    ],
)
def test_extract_json_refuses_answers_without_json(text):
    with pytest.raises(AnswerParseError):
        extract_json(text)


def test_parse_boxes_converts_clips_nothing_and_drops_bad_entries():
    text = """```json
[{"bbox_2d": [100, 200, 300, 400], "label": "barcode"},
 {"bbox_2d": [500, 500, 400, 450], "label": "swapped"},
 {"bbox_2d": [1, 2, 3], "label": "three numbers"},
 {"bbox_2d": ["a", 1, 2, 3]},
 {"bbox_2d": [NaN, 1, 2, 3]},
 {"label": "no box"}]
```"""
    boxes, notes = parse_boxes(text, 2, "norm1000", (0, 0), (2000, 1000))
    assert [(b.image, b.xyxy, b.label) for b in boxes] == [
        (2, (200.0, 200.0, 600.0, 400.0), "barcode"),
        (2, (800.0, 450.0, 1000.0, 500.0), "swapped"),  # corners reordered, not dropped
    ]
    assert len(notes) == 4


def test_parse_boxes_accepts_an_object_wrapping_the_list():
    boxes, _ = parse_boxes('{"boxes": [{"box": [1, 2, 3, 4]}]}', 0, "pixels", (10, 10), (10, 10))
    assert boxes[0].xyxy == (1, 2, 3, 4)


def test_parse_attributes_cleans_to_schema():
    schema = load_schema()
    text = (
        '```json\n{"identifiers": {"gtin": " 4006381333931 ", "colour": "red"},'
        ' "regulatory_safety": {"certification_marks": "CE"}, "extra": {}}\n```'
    )
    attributes, notes = parse_attributes(text, schema)
    assert attributes == {
        "identifiers": {"gtin": "4006381333931"},
        "regulatory_safety": {"certification_marks": ["CE"]},
    }
    assert any("colour" in n for n in notes) and any("extra" in n for n in notes)


def test_parse_attributes_refuses_a_list():
    with pytest.raises(AnswerParseError):
        parse_attributes("[1, 2]", load_schema())


@pytest.mark.parametrize(
    ("answer", "cleaned", "note"),
    [
        # flat: each field name exists in exactly one group, so it is placed there
        ({"brand": "Acme", "gtin": "123"},
         {"attributes": {"brand": "Acme"}, "identifiers": {"gtin": "123"}},
         "field 'brand' given at the top level: placed in group 'attributes'"),
        # mixed: the grouped value wins over a flat duplicate, which is dropped and said so
        ({"brand": "Flat", "attributes": {"brand": "Grouped"}},
         {"attributes": {"brand": "Grouped"}},
         "field 'brand' at the top level: group 'attributes' already has it; dropped"),
        # a flat name no group has
        ({"shoe_size": "42"}, {}, "unknown field 'shoe_size' dropped (no group has it)"),
        # a group the schema does not have
        ({"extras": {"a": 1}}, {}, "unknown group 'extras' dropped"),
    ],
)  # fmt: skip
def test_schema_clean_maps_flat_answers_and_says_what_it_did(answer, cleaned, note):
    from toolkit.schema import load_schema

    before = json.dumps(answer, sort_keys=True)
    result, notes = load_schema("compliance").clean(answer)
    assert result == cleaned
    assert note in notes
    assert json.dumps(answer, sort_keys=True) == before  # the answer itself is not changed
