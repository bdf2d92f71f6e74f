"""Messages grouped by cause: the console says each cause once, with a count and a few ids."""

from __future__ import annotations

import re
from collections.abc import Sequence

# Quoted excerpts (an answer's text), bracketed values, numbers in parentheses and image
# references are a message's particulars, not its cause: "no JSON object or list in the
# answer: '<noise>'" is one cause for every item. Short quoted names ('brand') stay.
_PARTICULARS = re.compile(
    r"(?<!\w)'[^']{25,}'(?!\w)|(?<!\w)\"[^\"]{25,}\"(?!\w)|\[[^\]]*\]|\(\d[^)]*\)"
    r"|(?<=\bimage )\d+ \(.*?\)(?=: )"
)


def cause_of(teacher: str | None, message: str) -> str:
    """The cause a warning or failure message reports, without its particulars."""
    return (f"{teacher}: " if teacher else "") + _PARTICULARS.sub("...", message)


def group_by_cause(messages: Sequence[tuple[str | None, str]]) -> dict[str, list[str]]:
    """(item id or None, message) pairs -> cause -> the item ids (or '-') it happened to."""
    grouped: dict[str, list[str]] = {}
    for item_id, message in messages:
        grouped.setdefault(cause_of(None, message), []).append(item_id or "-")
    return grouped


def innermost_message(exc: BaseException) -> str:
    """The message of the error at the bottom of a wrapped one (a Ray worker's own error
    inside the task error Ray raised): its last line, or a croptune error's message."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)  # Ray's RayTaskError: the worker's exception
        if isinstance(inner, BaseException):
            exc = inner
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            break
    text = str(exc).strip()
    for line in reversed(text.splitlines()):
        if "CroptuneError: " in line:  # a worker's error inside a traceback Ray formatted
            return line.split("CroptuneError: ", 1)[1]
    return text.splitlines()[-1] if text else type(exc).__name__
