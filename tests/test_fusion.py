"""Box fusion across teachers: clustering, policies, labels, agreement."""

from __future__ import annotations

import pytest

from teacher_labeling.fusion import FusedBox, agreement_stats, fuse_boxes
from toolkit.boxes import Box


def b(teacher: str, x1, y1, x2, y2, score=None, label="text", image=0) -> Box:
    return Box(image, x1, y1, x2, y2, label=label, source=teacher, score=score)


def summary(fused: list[FusedBox]) -> list[tuple[tuple[float, ...], float, tuple[str, ...]]]:
    """(xyxy, agreement, member teachers) of each fused box, for comparing with a table."""
    return [(f.box.xyxy, f.agreement, f.teachers) for f in fused]


CASES = [
    # The same box from two teachers becomes one box both teachers confirm.
    pytest.param(
        [b("a", 10, 10, 50, 40), b("b", 10, 10, 50, 40)],
        ["a", "b"],
        "weighted",
        [((10, 10, 50, 40), 1.0, ("a", "b"))],
        id="identical-two-teachers",
    ),
    # Disjoint boxes stay apart; each is seen by one of the two teachers.
    pytest.param(
        [b("a", 0, 0, 10, 10), b("b", 100, 100, 120, 130)],
        ["a", "b"],
        "weighted",
        [((0, 0, 10, 10), 0.5, ("a",)), ((100, 100, 120, 130), 0.5, ("b",))],
        id="disjoint-weighted",
    ),
    # Intersection keeps only boxes every teacher confirmed: none here.
    pytest.param(
        [b("a", 0, 0, 10, 10), b("b", 100, 100, 120, 130)],
        ["a", "b"],
        "intersection",
        [],
        id="disjoint-intersection",
    ),
    # IoU 0.6 (7500 / 12500); weights 0.9 / 0.1: x1 = 0.9*0 + 0.1*25 = 2.5,
    # x2 = 0.9*100 + 0.1*125 = 102.5, y unchanged: close to the 0.9 box.
    pytest.param(
        [b("a", 0, 0, 100, 100, 0.9), b("b", 25, 0, 125, 100, 0.1)],
        ["a", "b"],
        "weighted",
        [((2.5, 0, 102.5, 100), 1.0, ("a", "b"))],
        id="overlap-weighted-by-score",
    ),
    # Scores are listed low first: the order of the input does not matter.
    pytest.param(
        [b("b", 25, 0, 125, 100, 0.1), b("a", 0, 0, 100, 100, 0.9)],
        ["a", "b"],
        "weighted",
        [((2.5, 0, 102.5, 100), 1.0, ("a", "b"))],
        id="overlap-weighted-input-order",
    ),
    # Union: the box enclosing both members.
    pytest.param(
        [b("a", 0, 0, 100, 100, 0.9), b("b", 25, 5, 125, 90, 0.1)],
        ["a", "b"],
        "union",
        [((0, 0, 125, 100), 1.0, ("a", "b"))],
        id="overlap-union",
    ),
    # Intersection keeps a box both teachers confirmed, at the weighted mean.
    pytest.param(
        [b("a", 0, 0, 100, 100, 0.9), b("b", 25, 0, 125, 100, 0.1)],
        ["a", "b"],
        "intersection",
        [((2.5, 0, 102.5, 100), 1.0, ("a", "b"))],
        id="overlap-intersection",
    ),
    # Below the threshold (IoU 1/3) the boxes stay apart.
    pytest.param(
        [b("a", 0, 0, 100, 100), b("b", 50, 0, 150, 100)],
        ["a", "b"],
        "weighted",
        [((0, 0, 100, 100), 0.5, ("a",)), ((50, 0, 150, 100), 0.5, ("b",))],
        id="below-threshold",
    ),
    # Two overlapping boxes of teacher a (IoU 0.82) are never merged with each other;
    # b's box (IoU 0.90 with a's best) joins a's best box, the weaker a box stays alone.
    # x1 = (0.9*0 + 0.7*5) / 1.6 = 2.1875, x2 = (0.9*100 + 0.7*105) / 1.6 = 102.1875.
    pytest.param(
        [b("a", 0, 0, 100, 100, 0.9), b("a", 10, 0, 110, 100, 0.8), b("b", 5, 0, 105, 100, 0.7)],
        ["a", "b"],
        "weighted",
        [
            ((2.1875, 0, 102.1875, 100), 1.0, ("a", "b")),
            ((10, 0, 110, 100), 0.5, ("a",)),
        ],
        id="same-teacher-not-merged",
    ),
    # Three teachers: a and b agree (no scores: plain mean x1 = 1, x2 = 51), c alone elsewhere.
    pytest.param(
        [b("a", 0, 0, 50, 50), b("b", 2, 0, 52, 50), b("c", 200, 200, 240, 260)],
        ["a", "b", "c"],
        "weighted",
        [((1, 0, 51, 50), 2 / 3, ("a", "b")), ((200, 200, 240, 260), 1 / 3, ("c",))],
        id="three-teachers",
    ),
    # Three teachers all agree: the union encloses all three boxes.
    pytest.param(
        [b("a", 0, 0, 50, 50), b("b", 2, 0, 52, 50), b("c", 0, 1, 50, 51)],
        ["a", "b", "c"],
        "union",
        [((0, 0, 52, 51), 1.0, ("a", "b", "c"))],
        id="three-teachers-all-agree-union",
    ),
    # A teacher that labeled the image but found nothing still counts in the agreement.
    pytest.param(
        [b("a", 0, 0, 50, 50), b("b", 0, 0, 50, 50)],
        ["a", "b", "silent"],
        "weighted",
        [((0, 0, 50, 50), 2 / 3, ("a", "b"))],
        id="teacher-without-boxes",
    ),
    # No boxes, no fused boxes.
    pytest.param([], ["a", "b"], "weighted", [], id="empty"),
    # One teacher: its boxes come back unchanged (even overlapping ones), agreement 1.0.
    pytest.param(
        [b("a", 0, 0, 100, 100, 0.5), b("a", 10, 10, 100, 100, 0.8), b("a", 300, 5, 310, 9)],
        ["a"],
        "weighted",
        [
            ((300, 5, 310, 9), 1.0, ("a",)),
            ((10, 10, 100, 100), 1.0, ("a",)),
            ((0, 0, 100, 100), 1.0, ("a",)),
        ],
        id="single-teacher",
    ),
]


@pytest.mark.parametrize(("boxes", "teachers", "policy", "expected"), CASES)
def test_fuse_boxes(boxes, teachers, policy, expected):
    fused = fuse_boxes(boxes, teachers, iou_threshold=0.5, policy=policy)
    got = summary(fused)
    assert len(got) == len(expected)
    for (xyxy, agreement, members), (want_xyxy, want_agreement, want_members) in zip(
        got, expected, strict=True
    ):
        assert xyxy == pytest.approx(want_xyxy)
        assert agreement == pytest.approx(want_agreement)
        assert members == want_members
    for f in fused:
        assert f.box.source == "fused"
        assert f.box.image == boxes[0].image


SCORE_CASES = [
    # Mean of the members' scores.
    pytest.param(
        [b("a", 0, 0, 10, 10, 0.9), b("b", 0, 0, 10, 10, 0.5)], ["a", "b"], 0.7, id="mean"
    ),
    # No scores at all: the score is the agreement.
    pytest.param([b("a", 0, 0, 10, 10), b("b", 0, 0, 10, 10)], ["a", "b", "c"], 2 / 3, id="none"),
    # A missing score counts as 1.0 next to a given one.
    pytest.param([b("a", 0, 0, 10, 10, 0.4), b("b", 0, 0, 10, 10)], ["a", "b"], 0.7, id="mixed"),
]


@pytest.mark.parametrize(("boxes", "teachers", "score"), SCORE_CASES)
def test_fused_score(boxes, teachers, score):
    (fused,) = fuse_boxes(boxes, teachers)
    assert fused.box.score == pytest.approx(score)


LABEL_CASES = [
    # Majority wins over a higher score.
    pytest.param(
        [
            b("a", 0, 0, 10, 10, 0.99, "barcode"),
            b("b", 0, 0, 10, 10, 0.5, "text"),
            b("c", 0, 0, 10, 10, 0.4, "text"),
        ],
        "text",
        id="majority",
    ),
    # A tie goes to the label of the highest-scoring member.
    pytest.param(
        [b("a", 0, 0, 10, 10, 0.3, "text"), b("b", 0, 0, 10, 10, 0.8, "barcode")],
        "barcode",
        id="tie-highest-score",
    ),
]


@pytest.mark.parametrize(("boxes", "label"), LABEL_CASES)
def test_fused_label(boxes, label):
    (fused,) = fuse_boxes(boxes, sorted({m.source for m in boxes}))
    assert fused.box.label == label


def test_policies_cluster_alike():
    boxes = [
        b("a", 0, 0, 100, 100, 0.9),
        b("b", 25, 0, 125, 100, 0.1),
        b("b", 400, 400, 500, 500, 0.6),
    ]
    runs = {p: fuse_boxes(boxes, ["a", "b"], policy=p) for p in ("weighted", "union")}
    assert [f.members for f in runs["weighted"]] == [f.members for f in runs["union"]]


def test_threshold_is_inclusive():
    # IoU exactly 0.6 (7500 / 12500) matches a threshold of 0.6.
    boxes = [b("a", 0, 0, 100, 100), b("b", 25, 0, 125, 100)]
    assert len(fuse_boxes(boxes, ["a", "b"], iou_threshold=0.6)) == 1
    assert len(fuse_boxes(boxes, ["a", "b"], iou_threshold=0.61)) == 2


@pytest.mark.parametrize(
    ("boxes", "teachers", "policy"),
    [
        # Boxes of two images.
        pytest.param(
            [b("a", 0, 0, 1, 1, image=0), b("a", 0, 0, 1, 1, image=1)],
            ["a"],
            "weighted",
            id="two-images",
        ),
        # A box from a teacher not in the list.
        pytest.param([b("x", 0, 0, 1, 1)], ["a"], "weighted", id="unknown-teacher"),
        # An unknown policy.
        pytest.param([b("a", 0, 0, 1, 1)], ["a"], "mean", id="bad-policy"),
    ],
)
def test_fuse_boxes_rejects(boxes, teachers, policy):
    with pytest.raises(ValueError):
        fuse_boxes(boxes, teachers, policy=policy)


STATS_CASES = [
    # Nothing fused.
    pytest.param([], ["a", "b"], (0, 0.0, 0.0, {}), id="empty"),
    # One box both teachers confirm, one only b saw (unmatched for b).
    pytest.param(
        [b("a", 0, 0, 10, 10), b("b", 0, 0, 10, 10), b("b", 50, 50, 60, 60)],
        ["a", "b"],
        (2, 0.5, 0.75, {"a": 0, "b": 1}),
        id="two-teachers",
    ),
    # A single teacher: nobody could confirm, so nothing counts as unmatched.
    pytest.param(
        [b("a", 0, 0, 10, 10), b("a", 50, 50, 60, 60)],
        ["a"],
        (2, 1.0, 1.0, {"a": 0}),
        id="single-teacher",
    ),
]


@pytest.mark.parametrize(("boxes", "teachers", "expected"), STATS_CASES)
def test_agreement_stats(boxes, teachers, expected):
    stats = agreement_stats(fuse_boxes(boxes, teachers))
    count, confirmed, mean, unmatched = expected
    assert stats["boxes"] == count
    assert stats["confirmed_by_all"] == pytest.approx(confirmed)
    assert stats["mean_agreement"] == pytest.approx(mean)
    assert stats["unmatched"] == unmatched


def test_agreement_stats_over_several_images():
    fused = fuse_boxes([b("a", 0, 0, 10, 10, image=0)], ["a", "b"]) + fuse_boxes(
        [b("a", 0, 0, 10, 10, image=1), b("b", 0, 0, 10, 10, image=1)], ["a", "b"]
    )
    stats = agreement_stats(fused)
    assert stats == {
        "boxes": 2,
        "confirmed_by_all": 0.5,
        "mean_agreement": 0.75,
        "unmatched": {"a": 1, "b": 0},
    }
