"""A planned region's pixels: cut from the oriented image (padded outside it) and encoded."""

from __future__ import annotations

import io

from PIL import Image

from toolkit.crops.config import CropConfig
from toolkit.crops.geometry import Region


def crop_region(image: Image.Image, region: Region, fill: tuple[int, int, int]) -> Image.Image:
    """The pixels of region; parts outside the image are filled with `fill`."""
    x1, y1, x2, y2 = region
    if x1 >= 0 and y1 >= 0 and x2 <= image.width and y2 <= image.height:
        return image.crop(region)
    canvas = Image.new("RGB", (x2 - x1, y2 - y1), fill)
    inside = (max(x1, 0), max(y1, 0), min(x2, image.width), min(y2, image.height))
    if inside[2] > inside[0] and inside[3] > inside[1]:
        canvas.paste(image.crop(inside), (inside[0] - x1, inside[1] - y1))
    return canvas


def encode_crop(image: Image.Image, config: CropConfig) -> tuple[bytes, str]:
    """Encoded crop bytes and the file suffix, in the configured format."""
    buffer = io.BytesIO()
    if config.image_format == "png":
        image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue(), ".png"
    image.save(buffer, format="JPEG", quality=config.jpeg_quality)
    return buffer.getvalue(), ".jpg"
