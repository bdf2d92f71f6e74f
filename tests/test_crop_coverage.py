"""Coverage of teacher boxes by crops (toolkit.crops.coverage): pure geometry."""

from __future__ import annotations

import pytest

from toolkit.boxes import Box
from toolkit.crops import CropConfig
from toolkit.crops.coverage import COVERAGE_TOLERANCE_PX, box_inside, coverage, covered_boxes
from toolkit.crops.plan import CropPlan, plan_crops
from toolkit.store import CropRow


def _plan(image: int, region: tuple[int, int, int, int]) -> CropPlan:
    return CropPlan(image=image, region=region, boxes=())


@pytest.mark.parametrize(
    ("teacher", "crops", "expected"),
    [
        # a box well inside the one crop of its photo: covered
        pytest.param([Box(0, 20, 20, 40, 30)], [_plan(0, (0, 0, 64, 64))], 1.0, id="inside"),
        # the same rectangle, but the crop is of another photo of the item: not covered
        pytest.param([Box(1, 20, 20, 40, 30)], [_plan(0, (0, 0, 64, 64))], 0.0, id="other-photo"),
        # a box straddling the crop's right edge by 10 px: half of its text is cut off
        pytest.param(
            [Box(0, 50, 20, 74, 30)], [_plan(0, (0, 0, 64, 64))], 0.0, id="straddles-edge"
        ),
        # out by 1 px (rounding of a box edge): within the tolerance, covered
        pytest.param(
            [Box(0, 50, 20, 65, 30)], [_plan(0, (0, 0, 64, 64))], 1.0, id="within-tolerance"
        ),
        # the box is covered by the second crop of its photo, not the first
        pytest.param(
            [Box(0, 120, 120, 140, 130)],
            [_plan(0, (0, 0, 64, 64)), _plan(0, (100, 100, 164, 164))],
            1.0,
            id="second-crop",
        ),
        # no crops at all (the detector proposed nothing): every box is missed
        pytest.param([Box(0, 20, 20, 40, 30), Box(1, 0, 0, 5, 5)], [], 0.0, id="no-crops"),
        # no teacher boxes: nothing to cover, so None (skipped in averages), never 0
        pytest.param([], [_plan(0, (0, 0, 64, 64))], None, id="no-teacher-boxes"),
        # no boxes and no crops: still None
        pytest.param([], [], None, id="nothing"),
        # two of three covered: one on a photo without crops
        pytest.param(
            [Box(0, 1, 1, 9, 9), Box(0, 30, 30, 60, 60), Box(2, 1, 1, 9, 9)],
            [_plan(0, (0, 0, 64, 64))],
            2 / 3,
            id="partial",
        ),
        # a padded square reaching outside the photo still contains the box
        pytest.param([Box(0, 0, 0, 30, 20)], [_plan(0, (-10, -10, 90, 90))], 1.0, id="padded"),
    ],
)
def test_coverage(teacher, crops, expected):
    assert coverage(teacher, crops) == (pytest.approx(expected) if expected is not None else None)


def test_box_inside_tolerance_is_per_edge():
    region = (10, 10, 50, 50)
    assert box_inside((10, 10, 50, 50), region)  # exactly the crop: inside
    assert box_inside((8, 8, 52, 52), region, tolerance=COVERAGE_TOLERANCE_PX)
    assert not box_inside((7.9, 10, 50, 50), region, tolerance=2)  # left edge 2.1 px out
    assert not box_inside((8, 8, 52, 52), region, tolerance=0)


def test_store_crop_rows_count_as_crops():
    # the crops predict actually cut, as recorded in its run store
    row = CropRow("a", 0, (0, 0, 64, 64), "crops/x.png", "sha", "enclosing-square", "h", [1])
    assert covered_boxes([Box(0, 5, 5, 20, 20), Box(0, 60, 60, 90, 90)], [row]) == [True, False]


def test_the_crops_planned_from_the_teacher_boxes_cover_them_all():
    # croptune's own crop planning from a box source's boxes: the teacher's own boxes give
    # coverage 1 whatever the strategy (margins only grow boxes)
    boxes = [Box(0, 10, 10, 40, 20), Box(0, 300, 200, 380, 230), Box(1, 5, 100, 60, 120)]
    sizes = {0: (400, 300), 1: (400, 300)}
    for strategy in ("enclosing-square", "clustered", "per-box"):
        plans = plan_crops(boxes, sizes, CropConfig(strategy=strategy))
        assert coverage(boxes, plans) == 1.0
