"""Teacher coordinate conventions, each converted to croptune's pixel xyxy at the edge.

Every function here is pure: numbers in, numbers out.
"""

from __future__ import annotations

import math

# The conversion math lives in toolkit (catalog reference boxes use it too); re-exported here.
from toolkit.boxes import XYXY, Coords, from_pixels, to_pixels

__all__ = [
    "QWEN_FACTOR",
    "QWEN_MAX_PIXELS",
    "QWEN_MIN_PIXELS",
    "XYXY",
    "Coords",
    "from_pixels",
    "sent_size",
    "smart_resize",
    "to_pixels",
]

# Qwen2.5-VL's processor defaults (patch 14 x spatial merge 2).
QWEN_FACTOR = 28
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 16384


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """(height, width) that Qwen2.5-VL's processor resizes an image to.

    Same arithmetic as transformers' qwen2_vl image processor: sides rounded to
    multiples of `factor`, pixel count brought within [min_pixels, max_pixels].
    """
    if max(height, width) / max(min(height, width), 1) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} is over 200, which Qwen2.5-VL refuses")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def sent_size(
    coords: Coords, width: int, height: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(width, height) of the image croptune sends to a teacher using `coords`."""
    if coords == "qwen2.5-vl":
        # Send a smart_resize fixed point: the server's processor then keeps it as is,
        # so its pixel answers are in the image we sent, whatever its own settings.
        h_bar, w_bar = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
        return w_bar, h_bar
    return width, height
