"""Crop geometry (pure) and the pixels of stored crops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from toolkit.boxes import Box
from toolkit.crops import (
    CropConfig,
    budgeted_order,
    crop_region,
    enclosing_square,
    expand_box,
    plan_crops,
)


def _covers(region, box) -> bool:
    x1, y1, x2, y2 = region
    return x1 <= box[0] and y1 <= box[1] and x2 >= box[2] and y2 >= box[3]


@pytest.mark.parametrize(
    ("boxes", "image_wh", "min_side", "expected"),
    [
        # one box in the middle: square centred on it, side = its longer side
        pytest.param([(40, 40, 60, 50)], (200, 100), 1, (40, 35, 60, 55), id="centred"),
        # box at the top-left corner: the square is shifted inside, never negative
        pytest.param([(0, 0, 10, 30)], (200, 100), 1, (0, 0, 30, 30), id="top-left-corner"),
        # box at the bottom-right corner: shifted back inside the far edges
        pytest.param([(190, 95, 200, 100)], (200, 100), 20, (180, 80, 200, 100), id="bottom-right"),
        # two boxes far apart: one square covering both (the paper's enclosing square)
        pytest.param(
            [(0, 0, 10, 10), (50, 60, 70, 80)], (200, 100), 1, (0, 0, 80, 80), id="two-boxes"
        ),
        # fractional coordinates: whole pixels touched are covered
        pytest.param([(10.5, 10, 20.2, 15)], (100, 80), 1, (10, 7, 21, 18), id="fractional"),
        # tiny box: min_side makes a readable crop
        pytest.param([(50, 50, 52, 51)], (200, 100), 64, (19, 19, 83, 83), id="tiny-box-min-side"),
        # min_side above the image's short side: capped, so no padding is forced
        pytest.param([(5, 5, 10, 10)], (50, 40), 64, (0, 0, 40, 40), id="image-smaller-than-min"),
        # boxes wider than the image is tall: the square cannot fit and is centred with padding
        pytest.param([(0, 10, 100, 20)], (100, 80), 1, (0, -10, 100, 90), id="cannot-fit"),
        # box larger than the image (teacher overshoot): clipped to the image first
        pytest.param(
            [(-50, -50, 500, 500)], (100, 80), 1, (0, -10, 100, 90), id="larger-than-image"
        ),
        # degenerate zero-area box: still a 1-pixel square at least
        pytest.param([(30, 30, 30, 30)], (100, 80), 1, (30, 30, 31, 31), id="degenerate"),
    ],
)
def test_enclosing_square(boxes, image_wh, min_side, expected):
    region = enclosing_square(boxes, image_wh, min_side)
    assert region == expected
    x1, y1, x2, y2 = region
    assert x2 - x1 == y2 - y1  # always a square
    width, height = image_wh
    if x2 - x1 <= min(width, height):
        assert x1 >= 0 and y1 >= 0 and x2 <= width and y2 <= height  # inside when it fits


def test_enclosing_square_covers_many_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(20, 400, size=2))
        boxes = []
        for _ in range(int(rng.integers(1, 6))):
            x1, x2 = sorted(rng.uniform(0, width, 2))
            y1, y2 = sorted(rng.uniform(0, height, 2))
            boxes.append((x1, y1, x2, y2))
        region = enclosing_square(boxes, (width, height), 16)
        for box in boxes:
            assert _covers(region, box)
        side = region[2] - region[0]
        span = max(
            max(b[2] for b in boxes) - min(b[0] for b in boxes),
            max(b[3] for b in boxes) - min(b[1] for b in boxes),
        )
        assert side <= max(span + 2, 16)  # smallest: at most rounding above the span


def test_expand_box_uses_relative_margin_and_minimum():
    assert expand_box((10, 10, 110, 30), 0.1, 4) == (0, 0, 120, 40)  # 10% of 100
    assert expand_box((10, 10, 20, 12), 0.1, 4) == (6, 6, 24, 16)  # 1 px < minimum 4


def test_crop_region_pixels_equal_source_and_padding_is_fill():
    rng = np.random.default_rng(1)
    array = rng.integers(0, 255, size=(80, 100, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    inside = crop_region(image, (10, 20, 50, 60), (255, 255, 255))
    assert np.array_equal(np.asarray(inside), array[20:60, 10:50])
    padded = crop_region(image, (0, -10, 100, 90), (1, 2, 3))
    out = np.asarray(padded)
    assert out.shape == (100, 100, 3)
    assert np.array_equal(out[10:90], array)
    assert (out[:10] == (1, 2, 3)).all() and (out[90:] == (1, 2, 3)).all()


def test_plan_crops_one_square_per_boxed_image():
    boxes = [
        Box(0, 10, 10, 20, 20, "a"),
        Box(0, 60, 60, 70, 70, "b"),
        Box(2, 5, 5, 15, 15, "c"),
        Box(1, 5, 5, 5, 5, "empty"),  # invalid: no area, no crop
    ]
    sizes = {0: (100, 100), 1: (100, 100), 2: (50, 40)}
    plans = plan_crops(boxes, sizes, CropConfig(margin=0, min_margin_px=0, min_side=1))
    assert [p.image for p in plans] == [0, 2]
    assert plans[0].region == (10, 10, 70, 70)
    assert {b.label for b in plans[0].boxes} == {"a", "b"}


@pytest.mark.parametrize(
    ("originals", "crops", "budget", "expected"),
    [
        # under budget: everything kept
        pytest.param([0, 1, 2], [0, 1], 9, ([0, 1, 2], [0, 1]), id="under-budget"),
        # over budget: main photo, then crops, then other photos
        pytest.param([0, 1, 2, 3], [0, 1], 4, ([0, 1], [0, 1]), id="crops-before-extra-photos"),
        # budget smaller than the crops: main photo + first crops
        pytest.param([0, 1], [0, 1, 2], 2, ([0], [0]), id="tiny-budget"),
        # crops-only strategy: no originals
        pytest.param([], [0, 1, 2], 2, ([], [0, 1]), id="no-originals"),
    ],
)
def test_budgeted_order(originals, crops, budget, expected):
    assert budgeted_order(originals, crops, budget) == expected


def test_config_hash_changes_with_pixels_settings():
    assert CropConfig().config_hash() == CropConfig().config_hash()
    assert CropConfig(margin=0.2).config_hash() != CropConfig().config_hash()
