"""Box fusion across teachers: boxes of one image matched by IoU and fused (pure functions).

The paper boxes with one teacher; with several, each teacher's boxes of an image are
matched greedily (highest score first, at most one box per teacher in a cluster) and
every cluster becomes one fused box, weighted-boxes-fusion style.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

import numpy as np

from toolkit.boxes import Box
from toolkit.crops import FUSED_SOURCE

FusionPolicy = Literal["weighted", "union", "intersection"]
# sv.box_iou_batch returns float32: an IoU meant to equal the threshold may land a hair below.
_IOU_EPS = 1e-6


@dataclass(frozen=True)
class FusedBox:
    """One fused box, the teachers' boxes that formed it, and how many teachers agreed."""

    box: Box
    members: tuple[Box, ...]
    agreement: float

    @property
    def teachers(self) -> tuple[str, ...]:
        """The teachers whose boxes formed this one, best score first."""
        return tuple(m.source for m in self.members)


class AgreementStats(TypedDict):
    """Agreement between box teachers over fused boxes (of one or many images)."""

    boxes: int
    confirmed_by_all: float
    mean_agreement: float
    unmatched: dict[str, int]


def _score(box: Box) -> float:
    return 1.0 if box.score is None else float(box.score)


def _weighted_xyxy(members: Sequence[Box]) -> tuple[float, float, float, float]:
    """Score-weighted mean corners (a plain mean when every weight is zero)."""
    weights = np.array([max(_score(m), 0.0) for m in members], dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones(len(members), dtype=np.float64)
    coords = np.array([m.xyxy for m in members], dtype=np.float64)
    x1, y1, x2, y2 = (weights[:, None] * coords).sum(axis=0) / weights.sum()
    return (float(x1), float(y1), float(x2), float(y2))


def _union_xyxy(members: Sequence[Box]) -> tuple[float, float, float, float]:
    return (
        min(m.x1 for m in members),
        min(m.y1 for m in members),
        max(m.x2 for m in members),
        max(m.y2 for m in members),
    )


def _label(members: Sequence[Box]) -> str:
    """The most common member label; ties go to the label with the highest-scoring member."""
    counts = Counter(m.label for m in members)
    best: dict[str, float] = {}
    for m in members:
        best[m.label] = max(best.get(m.label, float("-inf")), _score(m))
    # members are in descending score order, so max() keeps the first on a full tie
    return max(counts, key=lambda label: (counts[label], best[label]))


def fuse_boxes(
    boxes: Sequence[Box],
    teachers: Sequence[str],
    iou_threshold: float = 0.5,
    policy: FusionPolicy = "weighted",
) -> list[FusedBox]:
    """Boxes of one image from several teachers, matched by IoU and fused.

    `teachers` are the teachers that labeled this image (also those that found no box).
    Clusters are matched against their score-weighted mean box whatever the policy, so
    the policies differ only in the coordinates they output and in which clusters they keep.
    """
    import supervision as sv

    if policy not in ("weighted", "union", "intersection"):
        raise ValueError(f"unknown fusion policy {policy!r}; use weighted, union or intersection")
    names = list(dict.fromkeys(teachers))
    if not boxes:
        return []
    images = {b.image for b in boxes}
    if len(images) > 1:
        raise ValueError(f"fuse_boxes takes the boxes of one image, got images {sorted(images)}")
    strangers = sorted({b.source for b in boxes} - set(names))
    if strangers:
        raise ValueError(f"boxes from {strangers} but teachers are {names}")

    members: list[list[Box]] = []
    centres: list[tuple[float, float, float, float]] = []
    for box in sorted(boxes, key=_score, reverse=True):  # stable: input order breaks ties
        joined = False
        if centres:
            ious = sv.box_iou_batch(
                np.array([box.xyxy], dtype=np.float64), np.array(centres, dtype=np.float64)
            )[0]
            for k, iou in enumerate(ious):
                if iou >= iou_threshold - _IOU_EPS and all(
                    m.source != box.source for m in members[k]
                ):
                    members[k].append(box)
                    centres[k] = _weighted_xyxy(members[k])
                    joined = True
                    break
        if not joined:
            members.append([box])
            centres.append(box.xyxy)

    fused = []
    for group in members:
        agreement = len(group) / len(names)
        if policy == "intersection" and len(group) < len(names):
            continue
        xyxy = _union_xyxy(group) if policy == "union" else _weighted_xyxy(group)
        no_scores = all(m.score is None for m in group)
        score = agreement if no_scores else float(np.mean([_score(m) for m in group]))
        box = Box(group[0].image, *xyxy, label=_label(group), source=FUSED_SOURCE, score=score)
        fused.append(FusedBox(box=box, members=tuple(group), agreement=agreement))
    return fused


def agreement_stats(fused: Iterable[FusedBox]) -> AgreementStats:
    """Fused boxes, share confirmed by every teacher, mean agreement, unmatched boxes per teacher.

    A box is unmatched when other teachers labeled its image but none of them confirmed it.
    fused is read once (a run's boxes stream through: only the counts are kept).
    """
    unmatched: dict[str, int] = {}
    count = confirmed = 0
    total = 0.0
    for f in fused:
        for m in f.members:
            unmatched.setdefault(m.source, 0)
        if len(f.members) == 1 and f.agreement < 1.0:
            unmatched[f.members[0].source] += 1
        count += 1
        confirmed += f.agreement >= 1.0
        total += f.agreement
    return AgreementStats(
        boxes=count,
        confirmed_by_all=confirmed / count if count else 0.0,
        mean_agreement=total / count if count else 0.0,
        unmatched=dict(sorted(unmatched.items())),
    )
