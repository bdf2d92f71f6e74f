"""toolkit.files.json_lines: the one JSON Lines reader under the catalog, predictions and teacher-label files."""

from __future__ import annotations

import json

import pytest

from toolkit.files import json_lines


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # one object a line, numbered from 1
        ('{"a": 1}\n{"b": 2}\n', [(1, {"a": 1}), (2, {"b": 2})]),
        # blank and whitespace-only lines are skipped but still counted
        ('\n{"a": 1}\n   \n{"b": 2}', [(2, {"a": 1}), (4, {"b": 2})]),
        # a line that is not JSON comes back as its decode error, with its number
        ('{"a": 1}\n{"b": \n', [(1, {"a": 1}), (2, json.JSONDecodeError)]),
        # any JSON value, not only objects: the caller checks the shape
        ("[1, 2]\n3\n", [(1, [1, 2]), (2, 3)]),
    ],
)
def test_json_lines(text, expected):
    got = list(json_lines(text.splitlines(keepends=True)))
    assert [n for n, _ in got] == [n for n, _ in expected]
    for (_, value), (_, want) in zip(got, expected, strict=True):
        if want is json.JSONDecodeError:
            assert isinstance(value, json.JSONDecodeError)
        else:
            assert value == want
