"""What answering a prompt deals in: an example, a generated answer, and the one parser of
model answers. The contract of the backends that answer is toolkit.protocols.AnswerBackend.

It lives in toolkit core because both `finetune` (transformers in-process) and
`teacher_labeling` (OpenAI-compatible endpoints) answer, and neither may import the other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# One question: the images in the order their placeholders appear in the messages, and the
# chat messages (a dataset row's `prompt`: `{"type": "image"}` parts, then the text).
Example = tuple[list[Any], list[dict[str, Any]]]


@dataclass
class GeneratedAnswer:
    """One answer: its text, the seconds it took (None if unknown), why it failed, if it did."""

    text: str
    seconds: float | None = None
    error: str | None = None
    cached: bool = False  # answered from a cache: `seconds` is the original request's
    stopped: str | None = None  # why generation was cut short, e.g. a runaway repetition


# --------------------------------------------------------------------------- answer parsing

# One parser for every model answer (teachers, the judge, the student in evaluate and predict).
# A real answer of Gemma 3's 1024-token budget is ~4k characters and the schema nests 3 levels
# (group -> field -> list); far beyond either is a runaway generation, refused with a reason
# rather than fed to a recursive parser (json.loads raises RecursionError near 1000 levels).
MAX_ANSWER_CHARS = 200_000
MAX_JSON_DEPTH = 16
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.DOTALL)


class AnswerParseError(ValueError):
    """An answer holds nothing usable; the message says what was wrong with it."""


def json_depth(text: str) -> int:
    """The deepest nesting of [ and { in a JSON-ish text, brackets inside strings ignored."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def extract_json(text: str | None) -> tuple[Any, bool]:
    """The JSON value in an answer and whether the answer was that JSON as written.

    Tolerant like supervision's VLM parsers: a code fence or prose around the JSON is
    skipped and truncated JSON (max_tokens hit) is repaired, but then it was not valid as
    written. Empty, binary, huge and runaway-nested answers raise AnswerParseError.
    """
    if text is None or not text.strip():
        raise AnswerParseError("empty answer")
    if len(text) > MAX_ANSWER_CHARS:
        raise AnswerParseError(
            f"answer of {len(text)} characters, more than {MAX_ANSWER_CHARS}: a runaway "
            f"generation ({text[:60]!r}...)"
        )
    controls = sum(1 for c in text if c < " " and c not in "\t\n\r")
    if "\x00" in text or controls > len(text) // 10:
        raise AnswerParseError(f"answer is not text ({controls} control characters)")
    stripped = text.strip()
    fenced = _FENCE.search(stripped)
    candidate = (fenced.group(1) if fenced else stripped).strip()
    as_written = candidate == stripped or (fenced is not None and stripped.startswith("```"))
    start = min((i for i in (candidate.find("{"), candidate.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise AnswerParseError(f"no JSON object or list in the answer: {text[:80]!r}")
    as_written = as_written and start == 0
    candidate = candidate[start:]
    depth = json_depth(candidate)
    if depth > MAX_JSON_DEPTH:
        raise AnswerParseError(
            f"JSON nested {depth} levels deep (at most {MAX_JSON_DEPTH}): a runaway answer "
            f"({candidate[:60]!r}...)"
        )
    try:
        return json.loads(candidate), as_written
    except (json.JSONDecodeError, RecursionError):
        pass
    from json_repair import repair_json

    try:
        repaired = repair_json(candidate, return_objects=True)
    except Exception:  # json_repair raises assorted errors on pathological input
        repaired = None
    if repaired in ("", None, [], {}) and candidate not in ("[]", "{}"):
        raise AnswerParseError(f"answer is not JSON and could not be repaired: {text[:80]!r}")
    return repaired, False
