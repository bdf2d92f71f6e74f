"""How an example image is stored: its file's own bytes when croptune did not change its
pixels, else PNG (lossless) of the pixels croptune made."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from toolkit.catalog.ingest import read_ingested_image
from toolkit.dataset.rows import ExampleImage, fit_image
from toolkit.images import (
    EXIF_ORIENTATION,
    SOURCE_MIME,
    SourceFile,
    decode_image,
    encode_png,
    read_image_bytes,
)

# Formats whose bytes are stored as they are (when upright RGB within the size): every
# trainer decodes them with Pillow as croptune does. Others (TIFF, BMP, GIF, ...) become PNG.
SOURCE_FORMATS = frozenset(SOURCE_MIME)
# Why an image is stored as PNG instead of its bytes (an image may have several reasons).
RESIZED = "resized"  # longer than max_image_side: downscaled
EXIF_TURNED = "exif_turned"  # an EXIF orientation other than 1: turned upright
CONVERTED = "converted"  # not RGB (CMYK, grey, palette, alpha, 16-bit) or not in SOURCE_FORMATS
REENCODE = "reencode"  # every image re-encoded on request (the builder before source bytes)
REASONS = (RESIZED, EXIF_TURNED, CONVERTED, REENCODE)


@dataclass(frozen=True)
class StoredImage:
    """The bytes an example image is stored as, and why they are PNG (() : the file's own)."""

    data: bytes
    reasons: tuple[str, ...] = ()

    def feature_value(self) -> dict[str, Any]:
        """The value a `datasets.Image` feature stores as it is: these bytes, no path."""
        return {"bytes": self.data, "path": None}


def reencode_reasons(data: bytes, max_side: int | None) -> tuple[str, ...]:
    """Why decoding these bytes would not give the example's pixels; () when it would.

    The example's pixels are toolkit.images.decode_image's (EXIF orientation applied, RGB)
    fitted to max_side: the bytes decode to exactly those when they are upright RGB in a
    SOURCE_FORMATS format within max_side. Only the header is read (a PNG's EXIF may come
    after its pixels: Pillow decodes it to look, as decode_image does).
    """
    return _inspect(data, max_side)[0]


def source_file(data: bytes, pixel_hash: str, max_side: int | None = None) -> SourceFile | None:
    """The file to send or store instead of re-encoding, when its bytes decode to exactly the
    example's pixels (reencode_reasons is empty); pixel_hash: those pixels' hash."""
    reasons, image_format = _inspect(data, max_side)
    if reasons or image_format is None:
        return None
    return SourceFile(data, pixel_hash, SOURCE_MIME[image_format])


def _inspect(data: bytes, max_side: int | None) -> tuple[tuple[str, ...], str | None]:
    """reencode_reasons, and the file's format (None when unreadable)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked at ingest
            with Image.open(io.BytesIO(data)) as image:
                reasons = []
                if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
                    reasons.append(EXIF_TURNED)
                if image.mode != "RGB" or image.format not in SOURCE_FORMATS:
                    reasons.append(CONVERTED)
                if max_side is not None and max(image.size) > max_side:
                    reasons.append(RESIZED)
                return tuple(reasons), image.format
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return (CONVERTED,), None  # unreadable here: decoding says why (ImageLoadError)


def stored_image(source: ExampleImage, reencode: bool = False) -> StoredImage:
    """How an example image is stored; decoding the result gives exactly example_pixels(source).

    Bytes croptune did not change (upright RGB within the size, see reencode_reasons) are
    stored as they are, without decoding them; the rest as PNG of the oriented, converted,
    downscaled pixels. reencode: PNG for every image (what the builder did before).
    ImageLoadError when the file is unreadable or changed since ingest.
    """
    pixels: Image.Image | None = None
    if source.original is not None:
        data, pixels = read_ingested_image(source.original, decode=False)
    else:
        data = read_image_bytes(source.uri)
    reasons = reencode_reasons(data, source.max_side)
    if reencode:
        reasons = (*reasons, REENCODE)
    if not reasons:
        return StoredImage(data)
    if pixels is None:
        pixels = decode_image(data)
    return StoredImage(encode_png(fit_image(pixels, source.max_side)), reasons)
