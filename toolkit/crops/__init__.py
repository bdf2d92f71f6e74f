"""Targeted crops: pure square geometry first, pixels second.

Gemma 3 spends the same 256 tokens on every image whatever its size, so the paper
cuts ONE square per image: the smallest square that covers all of that image's boxes.
croptune also offers `clustered` (one square per group of nearby boxes, so a label at one
corner and a barcode at the other become two tight crops instead of one as large as the
photo) and `per-box` (one square per box: the naive baseline).

After cutting, an item's originals and crops are de-duplicated by perceptual hash (pHash) in
the budget's priority order; the image budget (the dataset config's) applies when examples
are built.

    config     CropConfig: the settings, and the hash crops are stored under
    geometry   pure box and square math: margins, merging, clustering, enclosing squares
    plan       which squares one item gets from its boxes (CropPlan, plan_crops)
    pixels     a region's pixels, cut and encoded
    selection  which images are used: pHash duplicates, then the image budget
    run        the crop stage over a run store (crop_run, crop_item)
    coverage   the share of teacher boxes lying inside a box source's crops
"""

from toolkit.crops.config import CropConfig
from toolkit.crops.run import FUSED_SOURCE, CropSummary, crop_item, crop_run

__all__ = ["FUSED_SOURCE", "CropConfig", "CropSummary", "crop_item", "crop_run"]
