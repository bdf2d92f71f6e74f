"""predict's own box sources (toolkit.protocols.BoxSource): none, and the bundle's detector.

The third, a box teacher, is teacher_labeling.box_source.TeacherBoxes.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from toolkit.boxes import Box
from toolkit.protocols import ItemPhotos


class NoBoxes:
    """No boxes: the originals only (what a bundle without a detector can do alone)."""

    name = "none"

    def key(self) -> str:
        """Always the same."""
        return "none"

    def prepare(self) -> None:
        """Nothing to load."""

    def boxes(self, photos: ItemPhotos) -> list[Box]:
        """No boxes."""
        return []

    def close(self) -> None:
        """Nothing held."""


class DetectorBoxes:
    """The bundle's region-proposal detector (finetune.detector), at its trained settings."""

    def __init__(self, folder: Path, device: str | None = None) -> None:
        from finetune.detector import DETECTOR_SOURCE

        self.folder = Path(folder)
        self.device = device
        self.name = DETECTOR_SOURCE
        self._detector: Any = None

    def key(self) -> str:
        """The weights' and settings' content."""
        from finetune.detector import CONFIG_FILE, WEIGHTS_FILE

        digest = hashlib.sha256()
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            target = self.folder / name
            digest.update(target.read_bytes() if target.is_file() else b"-")
        return f"detector:{digest.hexdigest()[:16]}"

    def prepare(self) -> None:
        """Load the detector (once)."""
        if self._detector is None:
            from finetune.detector import load_detector

            self._detector = load_detector(self.folder, device=self.device)

    def boxes(self, photos: ItemPhotos) -> list[Box]:
        """Proposals on every photo, each box carrying its photo's image index."""
        from finetune.detector import predict_boxes

        self.prepare()
        indices = sorted(photos.images)
        found = predict_boxes(self._detector, [photos.images[i] for i in indices])
        return [replace(box, image=indices[box.image]) for boxes in found for box in boxes]

    def close(self) -> None:
        """Drop the model."""
        self._detector = None
