"""The contracts between the stages and what they plug in: answer backends and box sources.

They live in the core because `finetune` (in-process students, the detector) and
`teacher_labeling` (OpenAI-compatible endpoints, box teachers) both implement them, and
neither may import the other. Callers rely on every method here; none probes for one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from toolkit.answers import Example, GeneratedAnswer
from toolkit.boxes import Box
from toolkit.store import ItemRow, RunStore


class AnswerBackend(Protocol):
    """Answers examples in order; one answer per example, failures as `error`, never dropped."""

    name: str
    kind: str  # "transformers" | "endpoint"

    def identity(self) -> dict[str, Any]:
        """What identifies its answers in a cache key (kind, name, weights or endpoint and
        generation settings; never a key or secret)."""
        ...

    def check_ready(self) -> None:
        """Fail fast, before any work, when it cannot answer (a missing key, a dead server)."""
        ...

    def prepare(self) -> None:
        """Load weights or check keys: whatever should not count as answering time."""
        ...

    def answer(self, examples: Sequence[Example], progress: bool = False) -> list[GeneratedAnswer]:
        """One answer per example, in the order given."""
        ...

    def close(self) -> None:
        """Release the model or connections held."""
        ...


@dataclass(frozen=True)
class ItemPhotos:
    """An item's decoded photos for a box source: by image index, with their hashes."""

    item: ItemRow
    images: dict[int, Image.Image]
    hashes: dict[int, str]
    store: RunStore  # where a source caches its answers and logs its notes


class BoxSource(Protocol):
    """Where predict's boxes come from: finetune.predict's NoBoxes and DetectorBoxes,
    teacher_labeling.box_source.TeacherBoxes (a box teacher)."""

    name: str  # recorded as the boxes' source

    def key(self) -> str:
        """What identifies the boxes it gives (weights, settings): part of the resume key."""
        ...

    def prepare(self) -> None:
        """Load weights or check keys before the first item."""
        ...

    def boxes(self, photos: ItemPhotos) -> list[Box]:
        """The boxes of an item's decoded photos (Box.image: the image index), oriented pixels."""
        ...

    def close(self) -> None:
        """Release what it holds."""
        ...
