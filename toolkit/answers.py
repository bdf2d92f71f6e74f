"""The contract between evaluation and whatever answers prompts: in-process model or endpoint.

It lives in toolkit core because both `finetune` (transformers in-process) and
`teacher_labeling` (OpenAI-compatible endpoints) implement it, and neither may import
the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

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


class AnswerBackend(Protocol):
    """Answers examples in order; one answer per example, failures as `error`, never dropped."""

    name: str
    kind: str  # "transformers" | "endpoint"

    def prepare(self) -> None:
        """Load weights or check keys: whatever should not count as answering time."""
        ...

    def answer(self, examples: Sequence[Example], progress: bool = False) -> list[GeneratedAnswer]:
        """One answer per example, in the order given."""
        ...

    def close(self) -> None:
        """Release the model or connections held."""
        ...
