"""The one answer parser (toolkit.answers.extract_json) and the runaway-repetition stop:
any answer, however broken, becomes a value or a reason, never an exception elsewhere."""

from __future__ import annotations

import json

import pytest

from toolkit.answers import (
    MAX_ANSWER_CHARS,
    MAX_JSON_DEPTH,
    AnswerParseError,
    extract_json,
    json_depth,
)
from toolkit.generation import REPEAT_MIN_SPAN, runaway_repetition

NESTED = '{"attributes":' * 5000 + '"x"' + "}" * 5000


@pytest.mark.parametrize(
    ("text", "value", "as_written"),
    [
        # bare JSON, as written
        ('{"a": 1}', {"a": 1}, True),
        # fenced: the fence's JSON counts as written (as the JSON-validity metric has it)
        ('```json\n{"a": 1}\n```', {"a": 1}, True),
        # prose before the JSON: found, but not valid as written
        ('Sure! {"a": 1}', {"a": 1}, False),
        # truncated (max_tokens hit): repaired, not valid as written
        ('{"a": [1, 2', {"a": [1, 2]}, False),
        # nested as deep as the limit allows
        (
            "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH,
            json.loads("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH),
            True,
        ),
        # brackets inside strings are not nesting
        ('{"a": "' + "{[" * 100 + '"}', {"a": "{[" * 100}, True),
    ],
)
def test_extract_json_values(text, value, as_written):
    assert extract_json(text) == (value, as_written)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # nothing at all
        ("", "empty answer"),
        # whitespace only
        ("  \n ", "empty answer"),
        # a nesting loop to the token limit (what crashed predict with RecursionError)
        (NESTED, "JSON nested 5000 levels deep"),
        # one level too deep
        (
            "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
            f"nested {MAX_JSON_DEPTH + 1} levels",
        ),
        # a truncated nesting loop: no closing brackets at all
        ('{"a":' * 400, "JSON nested 400 levels deep"),
        # a looping answer longer than any real one
        ('{"a": "' + "la" * MAX_ANSWER_CHARS, "a runaway generation"),
        # binary
        ("\x00\x01\x02{}", "not text"),
        # control characters, mostly
        ("\x07" * 50 + "{}", "not text"),
        # prose only
        ("I cannot read the label.", "no JSON object or list"),
        # a bracket and garbage json_repair cannot make anything of
        ("{]]]", "could not be repaired"),
    ],
)
def test_extract_json_refuses_with_a_reason(text, reason):
    with pytest.raises(AnswerParseError, match=reason.replace("(", r"\(")):
        extract_json(text)


def test_json_depth_counts_only_structure():
    assert json_depth('{"a": [1, {"b": "]]]"}]}') == 3
    assert json_depth('"{{{"') == 0
    assert json_depth('{"a": "\\"{"}') == 1  # an escaped quote does not end the string


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        # a 4-token nesting loop over 200 tokens
        ([1, 2, 3, 4] * 50, (4, 50)),
        # one token repeated to the span
        ([7] * REPEAT_MIN_SPAN, (1, REPEAT_MIN_SPAN)),
        # the loop after a normal start still counts (it is at the end)
        ([9, 8, 7, 6, 5] + [1, 2] * 60, (2, 60)),
        # a barcode's repeated digit is too short to be a loop
        ([5] * 13, None),
        # repeats that stop before the end: the answer recovered
        ([1, 2, 3] * 40 + [4, 5, 6, 7], None),
        # varied text
        (list(range(300)), None),
        # nothing yet
        ([], None),
    ],
)
def test_runaway_repetition(tokens, expected):
    assert runaway_repetition(tokens) == expected


def test_a_random_student_is_stopped_when_it_loops():
    """The tiny base (random weights) falls into a loop; generation stops and says so."""
    from PIL import Image

    from finetune.infer import TransformersBackend

    backend = TransformersBackend("croptune:tiny", max_new_tokens=600)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Read."}]}]
    (answer,) = backend.answer([([Image.new("RGB", (64, 64), (200, 30, 30))], messages)])
    assert answer.stopped is not None and answer.stopped.startswith("runaway repetition"), answer
    tokens = int(answer.stopped.rsplit("after ", 1)[1].split()[0])
    assert REPEAT_MIN_SPAN <= tokens < 600  # stopped early, not at the limit


@pytest.mark.parametrize(
    "tokens",
    [
        [1, 2, 3, 4] * 50,  # a 4-token loop
        [9] * 300,  # one token
        list(range(100)) + [5, 6] * 48,  # a loop after a normal start
        [1, 2, 3] * 40 + [4, 5],  # recovered
        list(range(400)),  # varied
        [1] * 95,  # one short of the span
    ],
)
def test_the_stopping_tail_decides_as_the_whole_row_does(tokens):
    """RepetitionStop scans only the last REPEAT_WINDOW tokens; the verdict is the same."""
    from toolkit.generation import REPEAT_WINDOW

    whole = runaway_repetition(tokens) is not None
    assert (runaway_repetition(tokens[-REPEAT_WINDOW:]) is not None) == whole
