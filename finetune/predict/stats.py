"""What a predict run did: its summary, predict_stats.json (counts, items/s, time per stage)
and the log line."""

from __future__ import annotations

import logging
import statistics
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.detector.config import DETECTOR_SOURCE
from finetune.predict.predictor import STAGES

if TYPE_CHECKING:
    from finetune.predict.bundle import Bundle
    from finetune.predict.predictor import Predictor
    from toolkit.protocols import AnswerBackend

logger = logging.getLogger(__name__)

STATS_FILE = "predict_stats.json"


@dataclass
class PredictSummary:
    """What a predict run did: items, failures, where things went, time per stage."""

    out: Path
    workdir: Path
    items: int = 0  # records written (predictions and errors)
    predicted: int = 0
    failed: int = 0
    resumed: int = 0  # predictions of an earlier run, not asked again
    failures: list[dict[str, Any]] = field(default_factory=list)
    # Warnings and notes of the written records by cause -> item ids (for the console).
    warnings: dict[str, list[str]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    stats_file: Path | None = None


class PerItem:
    """What each item of this run took (images, boxes, seconds per stage), as float arrays:
    8 bytes a value, not a dict an item."""

    def __init__(self) -> None:
        self.images = array("d")
        self.boxes = array("d")
        self.seconds = {stage: array("d") for stage in STAGES}

    def __len__(self) -> int:
        return len(self.images)

    def add(self, images: int, boxes: int, seconds: dict[str, float]) -> None:
        """Count one item."""
        self.images.append(images)
        self.boxes.append(boxes)
        for stage in STAGES:
            self.seconds[stage].append(seconds[stage])


def _distribution(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "mean": round(statistics.fmean(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def predict_stats(
    summary: PredictSummary,
    bundle: Bundle,
    backend: AnswerBackend,
    predictor: Predictor,
    seconds: dict[str, float],
    per_item: PerItem,
    loop_seconds: float,
) -> dict[str, Any]:
    """predict_stats.json: counts, items/s, time per stage (this run's items only)."""
    processed = len(per_item)
    images = per_item.images
    return {
        "items": summary.items,
        "predicted": summary.predicted,
        "failed": summary.failed,
        "resumed": summary.resumed,
        "processed_this_run": processed,
        "student": backend.name,
        "student_kind": backend.kind,
        "box_source": predictor.box_source.name,
        # The detector's held-out coverage as measured when trained (croptune.yaml).
        "box_source_coverage": bundle.detector_coverage
        if predictor.box_source.name == DETECTOR_SOURCE
        else None,
        "items_per_second": round(processed / loop_seconds, 4)
        if processed and loop_seconds
        else None,
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "seconds_per_item": {stage: _distribution(per_item.seconds[stage]) for stage in STAGES},
        "images_per_item": _distribution(images),
        "image_tokens_per_item": _distribution([n * bundle.image_tokens for n in images])
        if bundle.image_tokens
        else None,
        "boxes_per_item": _distribution(per_item.boxes),
    }


def log_stats(summary: PredictSummary) -> None:
    """One debug line of a run's counts, items/s and mean time per stage."""
    stats = summary.stats
    per_stage = ", ".join(
        f"{stage} {d['mean'] * 1000:.0f} ms"
        for stage, d in stats["seconds_per_item"].items()
        if d is not None
    )
    logger.debug(
        "predict: %d item(s), %d predicted, %d failed, %d resumed; %s items/s; per item: %s",
        summary.items,
        summary.predicted,
        summary.failed,
        summary.resumed,
        stats["items_per_second"],
        per_stage or "n/a",
    )
