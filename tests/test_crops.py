"""Crop geometry (pure) and the pixels of stored crops."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from toolkit.boxes import Box
from toolkit.crops import CropConfig
from toolkit.crops.geometry import (
    cluster_boxes,
    enclosing_square,
    expand_box,
    merge_boxes,
    merge_groups,
)
from toolkit.crops.pixels import crop_region
from toolkit.crops.plan import plan_crops
from toolkit.crops.selection import budgeted_order, mark_duplicates, select_images
from toolkit.store import CropRow


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


@pytest.mark.parametrize(
    ("boxes", "iou", "expected"),
    [
        # nothing to merge: no boxes, one box
        pytest.param([], 0.1, [], id="empty"),
        pytest.param([(0, 0, 10, 10)], 0.1, [(0, 0, 10, 10)], id="single"),
        # apart: kept as they are
        pytest.param(
            [(0, 0, 10, 10), (50, 50, 60, 60)], 0.1, [(0, 0, 10, 10), (50, 50, 60, 60)], id="apart"
        ),
        # IoU 1/3 >= 0.1: one union box
        pytest.param([(0, 0, 10, 10), (5, 0, 15, 10)], 0.1, [(0, 0, 15, 10)], id="overlap"),
        # the same pair under a stricter threshold: kept apart
        pytest.param(
            [(0, 0, 10, 10), (5, 0, 15, 10)], 0.5, [(0, 0, 10, 10), (5, 0, 15, 10)], id="below-iou"
        ),
        # a chain a-b-c (a and c do not touch): transitive, one box
        pytest.param(
            [(0, 0, 10, 10), (5, 0, 15, 10), (12, 0, 22, 10)], 0.15, [(0, 0, 22, 10)], id="chain"
        ),
        # a and b merge (IoU 0.2); c overlaps each at 0.13 but their union at 0.18: merged too
        pytest.param(
            [(0, 0, 10, 12), (0, 8, 10, 20), (7, 0, 17, 20)], 0.15, [(0, 0, 17, 20)], id="repeat"
        ),
        # iou 1: only identical boxes merge
        pytest.param(
            [(0, 0, 10, 10), (0, 0, 10, 10), (1, 0, 11, 10)], 1.0,
            [(0, 0, 10, 10), (1, 0, 11, 10)], id="identical-only",
        ),
        # a small box inside a big one: IoU 0.04, not merged (IoU, not intersection/smaller)
        pytest.param(
            [(0, 0, 100, 100), (40, 40, 60, 60)], 0.1, [(0, 0, 100, 100), (40, 40, 60, 60)],
            id="contained-low-iou",
        ),
    ],
)  # fmt: skip
def test_merge_boxes(boxes, iou, expected):
    assert merge_boxes(boxes, iou) == expected


def test_merge_groups_is_order_independent_and_leaves_no_overlap():
    rng = np.random.default_rng(3)
    for _ in range(100):
        boxes = []
        for _ in range(int(rng.integers(2, 12))):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(5, 60, 2)
            boxes.append((x, y, x + w, y + h))
        groups = merge_groups(boxes, 0.1)
        assert sorted(i for g in groups for i in g) == list(range(len(boxes)))  # a partition
        order = rng.permutation(len(boxes))
        shuffled = merge_groups([boxes[i] for i in order], 0.1)
        assert sorted(sorted(int(order[i]) for i in g) for g in shuffled) == groups
        unions = merge_boxes(boxes, 0.1)
        for a in range(len(unions)):
            for b in range(a + 1, len(unions)):
                assert _iou(unions[a], unions[b]) < 0.1  # stable: nothing left to merge


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


@pytest.mark.parametrize(
    ("boxes", "image_wh", "overflow", "expected"),
    [
        # boxes wider than the image is tall, pad: a square centred on the image, padded
        pytest.param([(0, 10, 100, 20)], (100, 80), "pad", (0, -10, 100, 90), id="pad"),
        # the same, image: the square clipped to the image (a rectangle, no padding)
        pytest.param([(0, 10, 100, 20)], (100, 80), "image", (0, 0, 100, 80), id="image"),
        # a tall span in a narrow image, image: the full width, the square's rows only
        pytest.param([(10, 20, 30, 200)], (60, 300), "image", (0, 20, 60, 200), id="image-tall"),
        # (the same with pad: a 180-pixel square centred across the 60-pixel width)
        pytest.param([(10, 20, 30, 200)], (60, 300), "pad", (-60, 20, 120, 200), id="pad-tall"),
        # the square fits: overflow changes nothing
        pytest.param([(40, 40, 60, 50)], (200, 100), "image", (40, 35, 60, 55), id="fits"),
        # a box larger than the image, image: the whole image
        pytest.param([(-50, -50, 500, 500)], (100, 80), "image", (0, 0, 100, 80), id="whole"),
    ],
)
def test_enclosing_square_overflow(boxes, image_wh, overflow, expected):
    region = enclosing_square(boxes, image_wh, 1, overflow)
    assert region == expected
    for box in boxes:  # clipped to the image, every box is still covered
        x1, y1, x2, y2 = box
        clipped = (max(x1, 0), max(y1, 0), min(x2, image_wh[0]), min(y2, image_wh[1]))
        assert _covers(region, clipped)


@pytest.mark.parametrize(
    ("boxes", "image_wh", "fraction", "expected"),
    [
        # no boxes: no groups
        pytest.param([], (1000, 800), 0.5, [], id="empty"),
        # one box: one group
        pytest.param([(10, 10, 60, 40)], (1000, 800), 0.5, [[0]], id="single"),
        # a label at one corner and a barcode at the other: two groups (together 980 > 500)
        pytest.param(
            [(10, 10, 60, 40), (900, 700, 980, 780)], (1000, 800), 0.5, [[0], [1]], id="far-apart"
        ),
        # two boxes close together: one group
        pytest.param([(10, 10, 60, 40), (80, 20, 120, 60)], (1000, 800), 0.5, [[0, 1]], id="close"),
        # three tight pairs at three corners, listed interleaved: three groups of two
        pytest.param(
            [(10, 10, 50, 30), (900, 10, 950, 40), (20, 700, 60, 740),
             (60, 15, 90, 35), (960, 20, 990, 60), (70, 720, 110, 760)],
            (1000, 800), 0.3, [[0, 3], [1, 4], [2, 5]], id="many",
        ),
        # a box larger than the limit stays alone, even with a small box right next to it
        pytest.param(
            [(0, 0, 600, 300), (610, 0, 640, 20)], (1000, 800), 0.5, [[0], [1]], id="big-box"
        ),
        # the closest pair merges first; the third would push the square over the limit
        pytest.param(
            [(0, 0, 100, 100), (300, 0, 400, 100), (150, 0, 250, 100)], (1000, 800), 0.3,
            [[0, 2], [1]], id="closest-first",
        ),
        # fraction 1: everything fits one group (the enclosing square)
        pytest.param(
            [(10, 10, 60, 40), (900, 700, 980, 780)], (1000, 800), 1.0, [[0, 1]], id="fraction-1"
        ),
    ],
)  # fmt: skip
def test_cluster_boxes(boxes, image_wh, fraction, expected):
    assert cluster_boxes(boxes, image_wh, fraction) == expected
    assert cluster_boxes(boxes, image_wh, fraction) == expected  # deterministic


def test_cluster_boxes_respects_the_limit_on_random_boxes():
    rng = np.random.default_rng(7)
    for _ in range(100):
        width, height = (int(v) for v in rng.integers(200, 2000, size=2))
        boxes = []
        for _ in range(int(rng.integers(1, 15))):
            x, y = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
            boxes.append((x, y, x + rng.uniform(5, width / 4), y + rng.uniform(5, height / 4)))
        groups = cluster_boxes(boxes, (width, height), 0.4)
        assert sorted(i for g in groups for i in g) == list(range(len(boxes)))
        for group in groups:
            if len(group) > 1:
                region = enclosing_square([boxes[i] for i in group], (width, height))
                assert region[2] - region[0] <= 0.4 * max(width, height)


CORNERS = [Box(0, 10, 10, 60, 40, "label"), Box(0, 900, 700, 980, 780, "barcode")]
EXACT = {"margin": 0, "min_margin_px": 0, "min_side": 1}


@pytest.mark.parametrize(
    ("strategy", "boxes", "extra", "expected"),
    [
        # enclosing-square: one square for both corners, larger than the image is tall (padded)
        pytest.param("enclosing-square", CORNERS, {}, [(0, (10, -85, 980, 885))], id="square"),
        # (the same, clipped instead of padded when the square cannot fit)
        pytest.param(
            "enclosing-square", CORNERS, {"overflow": "image"}, [(0, (10, 0, 980, 800))],
            id="square-image",
        ),
        # clustered: two tight squares instead
        pytest.param(
            "clustered", CORNERS, {}, [(0, (10, 0, 60, 50)), (0, (900, 700, 980, 780))],
            id="clustered",
        ),
        # per-box: one square per box
        pytest.param(
            "per-box", CORNERS, {}, [(0, (10, 0, 60, 50)), (0, (900, 700, 980, 780))], id="per-box"
        ),
        # per-box: overlapping boxes are merged first (IoU 1/3), then one square
        pytest.param(
            "per-box", [Box(0, 0, 0, 10, 10), Box(0, 5, 0, 15, 10)], {}, [(0, (0, 0, 15, 15))],
            id="per-box-merged",
        ),
        # per-box: two tiny boxes in a corner grow to the same min_side square: one plan
        pytest.param(
            "per-box", [Box(0, 1, 1, 3, 3), Box(0, 10, 10, 12, 12)], {"min_side": 64},
            [(0, (0, 0, 64, 64))], id="per-box-same-square",
        ),
        # boxes on two images: plans in image order
        pytest.param(
            "per-box", [Box(1, 0, 0, 10, 10), Box(0, 0, 0, 10, 10)], {},
            [(0, (0, 0, 10, 10)), (1, (0, 0, 10, 10))], id="image-order",
        ),
    ],
)  # fmt: skip
def test_plan_crops_by_strategy(strategy, boxes, extra, expected):
    config = CropConfig(strategy=strategy, **{**EXACT, **extra})
    sizes = {0: (1000, 800), 1: (1000, 800)}
    plans = plan_crops(boxes, sizes, config)
    assert [(p.image, p.region) for p in plans] == expected
    covered = sorted(i for p in plans for i in p.indices)
    assert covered == list(range(len(boxes)))  # every box in exactly one plan
    for plan in plans:
        assert plan.boxes == tuple(boxes[i] for i in plan.indices)
        assert all(_covers(plan.region, b.clip(1000, 800).xyxy) for b in plan.boxes)
    assert plan_crops(boxes, sizes, config) == plans  # deterministic


def test_clustered_crops_are_smaller_than_the_enclosing_square():
    rng = np.random.default_rng(11)
    boxes = []
    for _ in range(20):
        x, y = rng.uniform(0, 1900), rng.uniform(0, 1400)
        boxes.append(Box(0, x, y, x + rng.uniform(20, 100), y + rng.uniform(10, 60)))
    sizes = {0: (2000, 1500)}
    (square,) = plan_crops(boxes, sizes, CropConfig())
    clustered = plan_crops(boxes, sizes, CropConfig(strategy="clustered", max_cluster_fraction=0.3))
    assert len(clustered) > 1
    assert all(p.region[2] - p.region[0] < square.region[2] - square.region[0] for p in clustered)
    assert sorted(i for p in clustered for i in p.indices) == list(range(20))


A, B4, B8 = "0000000000000000", "000000000000000f", "00000000000000ff"


@pytest.mark.parametrize(
    ("phashes", "threshold", "expected"),
    [
        # all different: none is a duplicate
        pytest.param([A, "ffffffffffffffff"], 6, [None, None], id="different"),
        # the same hash: the later one repeats the first
        pytest.param([A, A], 6, [None, 0], id="equal"),
        # 4 bits apart, threshold 6: duplicate; threshold 3: not
        pytest.param([A, B4], 6, [None, 0], id="within"),
        pytest.param([A, B4], 3, [None, None], id="beyond"),
        # threshold 0: only identical hashes
        pytest.param([A, B4, A], 0, [None, None, 0], id="zero"),
        # -1 disables de-duplication
        pytest.param([A, A], -1, [None, None], id="disabled"),
        # compared with KEPT images only: B8 is 4 bits from the duplicate B4, 8 from A: kept
        pytest.param([A, B4, B8], 6, [None, 0, None], id="no-chains"),
        # the closest kept image is named
        pytest.param([A, B8, "00000000000000fe"], 6, [None, None, 1], id="closest"),
        # an image without a hash is never a duplicate, nor the original of one
        pytest.param([None, A, A], 6, [None, None, 1], id="no-hash"),
    ],
)
def test_mark_duplicates(phashes, threshold, expected):
    assert mark_duplicates(phashes, threshold) == expected


def _crop(path: str, duplicate_of: str | None = None) -> CropRow:
    return CropRow("I", 0, (0, 0, 1, 1), path, "s", "enclosing-square", "h", [], None, duplicate_of)


@pytest.mark.parametrize(
    ("originals", "crops", "duplicates", "budget", "expected"),
    [
        # no duplicates: the budget order alone
        pytest.param([0, 1, 2], [_crop("c0"), _crop("c1")], {}, 4, ([0, 1], [0, 1]), id="plain"),
        # a re-encoded copy of the main photo is left out, freeing a slot
        pytest.param(
            [0, 1, 2], [_crop("c0")], {1: "image:0"}, 3, ([0, 2], [0]), id="duplicate-original"
        ),
        # a crop repeating the main photo is left out
        pytest.param(
            [0, 1], [_crop("c0", "image:0"), _crop("c1")], {}, 9, ([0, 1], [1]), id="duplicate-crop"
        ),
        # a photo repeating a crop is left out
        pytest.param([0, 1], [_crop("c0")], {1: "c0"}, 9, ([0], [0]), id="photo-repeats-crop"),
        # crops only (no originals used): a crop repeating a photo stays
        pytest.param([], [_crop("c0", "image:0")], {}, 9, ([], [0]), id="crops-only"),
        # originals only: a photo repeating a crop stays (the crop is not used)
        pytest.param([0, 1], [], {1: "c0"}, 9, ([0, 1], []), id="originals-only"),
    ],
)  # fmt: skip
def test_select_images(originals, crops, duplicates, budget, expected):
    assert select_images(originals, crops, duplicates, budget) == expected


def test_config_hash_covers_the_new_settings():
    base = CropConfig().config_hash()
    for change in ({"strategy": "clustered"}, {"overflow": "image"}, {"phash_threshold": 3},
                   {"merge_iou": 0.5}, {"max_cluster_fraction": 0.3}):  # fmt: skip
        assert CropConfig(**change).config_hash() != base


def test_the_image_budget_is_no_crop_setting():
    """The budget is the dataset config's: it never changes the hash crops are stored under."""
    from toolkit.dataset import DatasetConfig

    assert "max_images_per_item" not in CropConfig.model_fields
    assert "max_images_per_item" in DatasetConfig.model_fields
    # A crop config recorded before the move (run store, dataset, bundle) still reads, and
    # whatever budget it recorded, its hash is the one its crops were stored under.
    saved = CropConfig().model_dump(mode="json")
    three = CropConfig.from_saved({**saved, "max_images_per_item": 3})
    nine = CropConfig.from_saved({**saved, "max_images_per_item": 9})
    assert three == nine == CropConfig()
    assert three.config_hash() == nine.config_hash() == CropConfig().config_hash()
    # The default config's hash is the one croptune recorded before the move: existing runs'
    # crops are found, not cut again.
    assert CropConfig().config_hash() == "535dd63c1cdb"
    assert CropConfig(strategy="clustered").config_hash() == "537771b30807"


@pytest.mark.parametrize("where", ["yaml", "override"])
def test_the_old_budget_key_says_where_it_went(where, tmp_path):
    from toolkit.config import load_stage_config
    from toolkit.errors import CroptuneError

    path, overrides = None, []
    if where == "yaml":
        path = tmp_path / "crop.yaml"
        path.write_text("strategy: clustered\nmax_images_per_item: 4\n")
    else:
        overrides = ["max_images_per_item=4"]
    with pytest.raises(CroptuneError, match="max_images_per_item") as caught:
        load_stage_config(CropConfig, path, overrides, stage="crop")
    assert "moved to the dataset config" in str(caught.value)
    assert "dataset.yaml" in str(caught.value)
