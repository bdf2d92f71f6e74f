"""Image loading and normalisation: decode once, orient, convert to RGB, hash."""

from __future__ import annotations

import contextlib
import hashlib
import io
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# 64 MP: a 9000x7000 product photo passes, a decompression bomb does not. Pillow's own
# default (89 MP) only warns below twice its limit; croptune turns both into errors.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_DOWNLOAD_BYTES = 50_000_000
EXIF_ORIENTATION = 0x0112
# EXIF orientations that swap width and height (transpose, the two quarter turns, transverse)
_SWAPS_AXES = {5, 6, 7, 8}

# A region (x1, y1, x2, y2) of an image in pixels, fractional.
Box4 = tuple[float, float, float, float]


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


# Where an image's SourceFile travels with its pixels (Pillow copies `info` to what is made
# from an image, a resize or a crop too: marked_source checks the pixel hash before use).
_SOURCE_KEY = "croptune.source_file"
# A file format's MIME type in a data URL (MPO: a JPEG with more frames after the first).
SOURCE_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class SourceFile:
    """An image file's bytes that decode to exactly some oriented RGB pixels (their hash)."""

    data: bytes
    pixel_hash: str
    mime: str  # a SOURCE_MIME value

    def data_url(self) -> str:
        """The file as a data URL (its own bytes, base64)."""
        import base64

        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


def mark_source(image: Image.Image, source: SourceFile) -> Image.Image:
    """The image, carrying the file it was decoded from (sent instead of a re-encoding)."""
    image.info[_SOURCE_KEY] = source
    return image


def marked_source(image: Image.Image, image_hash: str) -> SourceFile | None:
    """The file the image was decoded from, when its bytes decode to exactly these pixels.

    image_hash: pixel_hash(image). An image made from a marked one (resized, cropped,
    converted) carries the mark too, with other pixels: the hash tells them apart.
    """
    source = image.info.get(_SOURCE_KEY)
    if isinstance(source, SourceFile) and source.pixel_hash == image_hash:
        return source
    return None


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
    image, conversions, _ = _decode(data, max_pixels)
    return image, conversions


def decode_resized(
    data: bytes,
    sizes: Sequence[tuple[int, int] | None],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = True,
) -> tuple[list[Image.Image], tuple[str, ...]]:
    """Oriented RGB pixels at each of `sizes` (None: as decoded), resized as `resized` does,
    and what decoding changed; a JPEG is decoded at the smallest DCT scale that still covers
    a size (draft mode: 1/2, 1/4 or 1/8), once per scale.

    The picture is the same whatever the scale: a reduced decode is resized from the region
    that is the whole original, so a box in a sent image maps to the same original pixels
    (up to the resize's rounding). Each size's pixels depend only on the file and that size.
    """
    decoded: dict[tuple[int, int], tuple[Image.Image, tuple[str, ...], Box4]] = {}
    images: list[Image.Image] = []
    conversions: tuple[str, ...] = ()
    for size in sizes:
        with _decoding_errors():
            file = _open(data, max_pixels)
            full_size = file.size
            whole: Box4 = (0, 0, *full_size)
            if draft and size is not None and file.format == "JPEG":
                # Ask for the size in the file's frame: the draft is decoded before orienting.
                swapped = file.getexif().get(EXIF_ORIENTATION, 1) in _SWAPS_AXES
                drafted = file.draft(None, (size[1], size[0]) if swapped else size)
                if drafted is not None:
                    # ceil(side / scale) pixels are decoded: the last column and row cover
                    # part of a pixel of the original, so the whole picture is side / scale.
                    whole = drafted[1]
            if file.size not in decoded:
                decoded[file.size] = _decode_opened(file, full_size, whole)
        image, conversions, whole = decoded[file.size]
        images.append(image if size is None else resized(image, size, whole))
    return images, conversions


def resized(image: Image.Image, size: tuple[int, int], whole: Box4 | None = None) -> Image.Image:
    """`image` at `size` (bicubic; unchanged when it already has that size): how every image
    sent to a teacher is resized. whole: the region of `image` that is the whole picture (a
    JPEG decoded at a reduced scale covers a fraction of a pixel more)."""
    width, height = size
    if whole is None or whole == (0, 0, image.width, image.height):
        if (width, height) == image.size:
            return image
        return image.resize((width, height), Image.Resampling.BICUBIC)
    return image.resize((width, height), Image.Resampling.BICUBIC, box=whole)


def _decode(data: bytes, max_pixels: int) -> tuple[Image.Image, tuple[str, ...], Box4]:
    """Oriented RGB pixels at full scale, the changes made, and the whole picture's region."""
    with _decoding_errors():
        image = _open(data, max_pixels)
        return _decode_opened(image, image.size, (0, 0, *image.size))


@contextlib.contextmanager
def _decoding_errors() -> Iterator[None]:
    """Pillow's errors while opening or decoding, as ImageLoadError saying why in plain words."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"refused as a possible decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError("not an image or an unsupported format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"corrupt or truncated image: {exc}") from exc


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image file opened (header only), refused when over max_pixels."""
    if not data:
        raise ImageLoadError("empty file")
    if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        # Pillow's own guard is a process-wide setting; croptune's check below is the one
        # that applies, so let a user-raised limit through Pillow's (lower) default.
        Image.MAX_IMAGE_PIXELS = max_pixels
    image: Image.Image = Image.open(io.BytesIO(data))
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{width}x{height} is {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (raise max_image_pixels in the label config if it is a real photo)"
        )
    return image


def _decode_opened(
    image: Image.Image, full_size: tuple[int, int], whole: Box4
) -> tuple[Image.Image, tuple[str, ...], Box4]:
    """An opened file's pixels (at its draft scale, if one was set: `full_size` is the file's
    own size, `whole` the region of the decoded pixels that is the whole picture), oriented
    and in RGB, the changes made, and that region in the oriented frame."""
    conversions: list[str] = []
    decoded_size = image.size
    # Truncated files fail here (unless the user's process set Pillow's
    # LOAD_TRUNCATED_IMAGES), rather than being padded with grey.
    image.load()
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation != 1:
        image = ImageOps.exif_transpose(image)  # (a copy: skipped when upright)
        whole = _oriented_box(whole, decoded_size, orientation)
        shown = (full_size[1], full_size[0]) if orientation in _SWAPS_AXES else full_size
        conversions.append(
            f"EXIF orientation {orientation} applied ({full_size[0]}x{full_size[1]} "
            f"file, {shown[0]}x{shown[1]} oriented; boxes are read in the "
            "oriented frame)"
        )
    if image.width == 0 or image.height == 0:
        raise ImageLoadError("image has no pixels")
    rgb, change = to_rgb_noted(image)
    if change:
        conversions.append(change)
    return rgb, tuple(conversions), whole


def _oriented_box(box: Box4, size: tuple[int, int], orientation: int) -> Box4:
    """A region of an image of `size` (file frame) in the frame its EXIF orientation gives."""
    w, h = size
    x1, y1, x2, y2 = box

    # Where exif_transpose takes the point (x, y) of the file frame, per orientation.
    def move(x: float, y: float) -> tuple[float, float]:
        return {
            2: (w - x, y),  # mirrored
            3: (w - x, h - y),  # upside down
            4: (x, h - y),  # mirrored, upside down
            5: (y, x),  # transposed
            6: (h - y, x),  # a quarter turn clockwise
            7: (h - y, w - x),  # transversed
            8: (y, w - x),  # a quarter turn counter-clockwise
        }.get(orientation, (x, y))

    (ax, ay), (bx, by) = move(x1, y1), move(x2, y2)
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


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
