"""An answer's text as a parsed object, its validity and why it is unusable
(over toolkit.answers.extract_json)."""

from __future__ import annotations

from typing import Any


def parse_answer(text: str) -> tuple[Any, bool]:
    """(parsed object or None, whether it was valid JSON once a code fence is removed).

    toolkit.answers.extract_json does the parsing; a repaired (truncated) answer counts as
    invalid and is kept only when it is an object; an unusable one is (None, False).
    """
    value, valid, _ = parse_answer_or_reason(text)
    return value, valid


def parse_answer_or_reason(text: str) -> tuple[Any, bool, str | None]:
    """(parsed object or None, valid as written, why nothing usable came out of it or None)."""
    from toolkit.answers import AnswerParseError, extract_json

    try:
        value, valid = extract_json(text)
    except AnswerParseError as exc:
        return None, False, str(exc)
    if valid or isinstance(value, dict):
        return value, valid, None
    return None, False, f"the repaired answer is a {type(value).__name__}, not a JSON object"
