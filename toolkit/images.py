"""Image loading and normalisation: decode once, orient, convert to RGB, hash."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# 64 MP: a 9000x7000 product photo passes, a decompression bomb does not. Pillow's own
# default (89 MP) only warns below twice its limit; croptune turns both into errors.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_DOWNLOAD_BYTES = 50_000_000
EXIF_ORIENTATION = 0x0112


class ImageLoadError(Exception):
    """An image that cannot be used: the message says why, in plain words."""


class ImageChangedError(ImageLoadError):
    """An ingested image whose file now holds other pixels than at ingest."""


@dataclass(frozen=True)
class LoadedImage:
    """An oriented RGB image with its content hash and what decoding changed about it."""

    image: Image.Image
    sha256: str
    # e.g. "EXIF orientation 6 applied (4000x3000 file, 3000x4000 oriented)", "CMYK converted
    # to RGB": the pixels croptune uses are not the file's, and a user should hear so.
    conversions: tuple[str, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in oriented pixels."""
        return self.image.size


def is_url(uri: str) -> bool:
    """Whether an image reference is an http(s) URL rather than a file path."""
    return uri[:8].lower().startswith(("http://", "https://"))  # schemes are case-insensitive


def file_stat(uri: str) -> str | None:
    """'size:mtime_ns' of a local file (None for URLs and missing files): a cheap change check."""
    if is_url(uri):
        return None
    try:
        stat = Path(uri).stat()
    except OSError:
        return None
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def read_image_bytes(uri: str, timeout_s: float = 30.0) -> bytes:
    """The raw bytes of an image file or http(s) URL."""
    if is_url(uri):
        try:
            with urllib.request.urlopen(uri, timeout=timeout_s) as response:  # noqa: S310
                data = response.read(DEFAULT_MAX_DOWNLOAD_BYTES + 1)
        except OSError as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # an HTTP error response holds the connection open
            raise ImageLoadError(f"download failed: {exc}") from exc
        if len(data) > DEFAULT_MAX_DOWNLOAD_BYTES:
            raise ImageLoadError(f"download larger than {DEFAULT_MAX_DOWNLOAD_BYTES} bytes")
        return data
    path = Path(uri)
    if not path.exists():
        raise ImageLoadError("file not found")
    if not path.is_file():
        raise ImageLoadError("not a file")
    return path.read_bytes()


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Oriented RGB pixels from encoded image bytes; raises ImageLoadError with the reason."""
    return decode_image_with_conversions(data, max_pixels)[0]


def decode_image_with_conversions(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Image.Image, tuple[str, ...]]:
    """Oriented RGB pixels from encoded image bytes, and each change decoding made to them."""
    conversions: list[str] = []
    if not data:
        raise ImageLoadError("empty file")
    if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        # Pillow's own guard is a process-wide setting; croptune's check below is the one
        # that applies, so let a user-raised limit through Pillow's (lower) default.
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"{width}x{height} is {width * height:,} pixels, over the limit of "
                    f"{max_pixels:,} (raise max_image_pixels in the label config if it is a real photo)"
                )
            # Truncated files fail here (unless the user's process set Pillow's
            # LOAD_TRUNCATED_IMAGES), rather than being padded with grey.
            image.load()
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            if orientation != 1:
                file_size = image.size
                image = ImageOps.exif_transpose(image)  # (a copy: skipped when upright)
                conversions.append(
                    f"EXIF orientation {orientation} applied ({file_size[0]}x{file_size[1]} "
                    f"file, {image.width}x{image.height} oriented; boxes are read in the "
                    "oriented frame)"
                )
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"refused as a possible decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError("not an image or an unsupported format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"corrupt or truncated image: {exc}") from exc
    if image.width == 0 or image.height == 0:
        raise ImageLoadError("image has no pixels")
    rgb, change = to_rgb_noted(image)
    if change:
        conversions.append(change)
    return rgb, tuple(conversions)


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy: alpha composited on white, palettes expanded, 16-bit and float scaled."""
    return to_rgb_noted(image)[0]


def to_rgb_noted(image: Image.Image) -> tuple[Image.Image, str | None]:
    """An RGB copy (as `to_rgb`) and what it changed, in words (None for RGB or plain grey)."""
    source_mode = mode = image.mode
    if mode == "RGB":
        return image, None
    if mode.startswith("I;16"):
        return _scale_to_8bit(image).convert("RGB"), f"16-bit ({mode}) scaled to 8-bit"
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "float"
        return _scale_to_8bit(image).convert("RGB"), f"{kind} pixels stretched to 8-bit"
    if mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image, None  # a palette without transparency: its colours, exactly
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
        # An alpha channel that is opaque everywhere changes nothing: no note.
        opaque = rgba.getchannel("A").getextrema()[0] == 255
        return rgb, None if opaque else "transparency composited on white"
    # CMYK, YCbCr, LAB, HSV, L, 1: Pillow's conversions are correct for these; grey ("L",
    # "1") is repeated into three channels, nothing lost.
    note = None if mode in ("L", "1") else f"{source_mode} converted to RGB"
    return image.convert("RGB"), note


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    """Map a 16-bit, 32-bit or float single-channel image onto 0..255."""
    import numpy as np

    array = np.nan_to_num(np.asarray(image, dtype=np.float64))
    if image.mode.startswith("I;16"):
        scaled = array / 65535.0 * 255.0  # 16-bit has a fixed scale: keep absolute brightness
    else:
        # 32-bit integer and float images have no fixed scale: stretch their actual range
        # (a uniform one keeps its value, clipped to 0..255).
        low, high = float(array.min()), float(array.max())
        scaled = array if high <= low else (array - low) / (high - low) * 255.0
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def pixel_hash(image: Image.Image) -> str:
    """SHA-256 of an RGB image's size and pixels: equal for equal pixels, whatever the file."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def load_image(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read, orient and normalise one image, with its pixel hash."""
    image, conversions = decode_image_with_conversions(read_image_bytes(uri), max_pixels)
    return LoadedImage(image=image, sha256=pixel_hash(image), conversions=conversions)


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of an image: exactly its pixels."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    """JPEG bytes of an RGB image (no EXIF: the pixels are already oriented)."""
    buffer = io.BytesIO()
    # 4:4:4 chroma: the default 4:2:0 halves colour resolution, which blurs coloured small
    # print (red warning text, certification marks) and shifts box edges by a pixel.
    image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()
