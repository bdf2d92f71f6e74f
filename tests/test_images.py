"""Tests of image loading: RGB normalisation, EXIF orientation, clear errors, hashes, URLs."""

from __future__ import annotations

import functools
import http.server
import io
import struct
import threading
import urllib.error
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from toolkit.images import (
    ImageLoadError,
    decode_image,
    is_url,
    load_image,
    pixel_hash,
    read_image_bytes,
    to_rgb,
)

ORIENTATION = 0x0112
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _pixels(image: Image.Image) -> list[list[int]]:
    """Row-major RGB triples of an image."""
    assert image.mode == "RGB"
    return np.asarray(image).reshape(-1, 3).tolist()


def _assert_pixels(image: Image.Image, expected: list[tuple[int, int, int]], tol: int) -> None:
    got = np.asarray(_pixels(image), dtype=int)
    want = np.asarray(expected, dtype=int)
    assert got.shape == want.shape, (got.tolist(), expected)
    assert np.abs(got - want).max() <= tol, (got.tolist(), expected)


def _row(mode: str, values: list) -> Image.Image:
    """A 1-pixel-high image of the given mode holding the given pixel values."""
    image = Image.new(mode, (len(values), 1))
    for x, value in enumerate(values):
        image.putpixel((x, 0), value)
    return image


def _palette(colours: list[tuple[int, int, int]], indexes: list[int]) -> Image.Image:
    image = Image.new("P", (len(indexes), 1))
    flat = [c for colour in colours for c in colour]
    image.putpalette(flat + [0] * (768 - len(flat)))
    for x, index in enumerate(indexes):
        image.putpixel((x, 0), index)
    return image


def _with_transparency(image: Image.Image, index: int) -> Image.Image:
    image.info["transparency"] = index
    return image


def _array(values: list, dtype: type) -> Image.Image:
    return Image.fromarray(np.array([values], dtype=dtype))


@pytest.mark.parametrize(
    ("make", "source_mode", "expected", "tol"),
    [
        # RGB is passed through untouched.
        pytest.param(
            lambda: _row("RGB", [(10, 20, 30), (200, 100, 0)]),
            "RGB",
            [(10, 20, 30), (200, 100, 0)],
            0,
            id="rgb-passthrough",
        ),
        # Fully transparent pixels become the white background, whatever their colour.
        pytest.param(
            lambda: _row("RGBA", [(0, 0, 255, 0), (0, 0, 0, 0)]),
            "RGBA",
            [WHITE, WHITE],
            0,
            id="rgba-alpha-0-white",
        ),
        # Opaque pixels keep their colour.
        pytest.param(
            lambda: _row("RGBA", [(0, 0, 255, 255), (12, 34, 56, 255)]),
            "RGBA",
            [BLUE, (12, 34, 56)],
            0,
            id="rgba-alpha-255-colour",
        ),
        # Half alpha: 128/255 of blue + 127/255 of white = (127, 127, 255).
        pytest.param(
            lambda: _row("RGBA", [(0, 0, 255, 128)]),
            "RGBA",
            [(127, 127, 255)],
            1,
            id="rgba-alpha-128-blended",
        ),
        # Grey+alpha: transparent -> white, opaque grey kept, half-alpha black -> mid grey.
        pytest.param(
            lambda: _row("LA", [(0, 0), (200, 255), (0, 128)]),
            "LA",
            [WHITE, (200, 200, 200), (127, 127, 127)],
            1,
            id="la",
        ),
        # Palette without transparency: indexes expand to their palette colours.
        pytest.param(
            lambda: _palette([RED, BLUE, (0, 0, 0)], [0, 1, 2, 1]),
            "P",
            [RED, BLUE, (0, 0, 0), BLUE],
            0,
            id="palette-opaque",
        ),
        # Palette whose transparent entry is black: it must show white, not black.
        pytest.param(
            lambda: _with_transparency(_palette([RED, (0, 0, 0)], [0, 1, 1]), 1),
            "P",
            [RED, WHITE, WHITE],
            0,
            id="palette-transparency-index",
        ),
        # CMYK: pure cyan ink is RGB (0, 255, 255); full black ink is black.
        pytest.param(
            lambda: _row("CMYK", [(255, 0, 0, 0), (0, 0, 0, 255)]),
            "CMYK",
            [(0, 255, 255), (0, 0, 0)],
            1,
            id="cmyk-cyan-and-black",
        ),
        # 8-bit grey copies the level to all three channels.
        pytest.param(
            lambda: _row("L", [0, 128, 255]),
            "L",
            [(0, 0, 0), (128, 128, 128), WHITE],
            0,
            id="grey-L",
        ),
        # 1-bit: 0 is black, 1 is white.
        pytest.param(
            lambda: _row("1", [0, 1]),
            "1",
            [(0, 0, 0), WHITE],
            0,
            id="bilevel-1",
        ),
        # True 16-bit data keeps absolute brightness: 65535 -> 255, 32768 -> ~128, 0 -> 0.
        pytest.param(
            lambda: _array([65535, 32768, 0], np.uint16),
            "I;16",
            [WHITE, (128, 128, 128), (0, 0, 0)],
            1,
            id="i16-absolute",
        ),
        # Dark true 16-bit data stays dark: 1000/65535 of full scale is ~3.9, not stretched.
        pytest.param(
            lambda: _array([1000, 0], np.uint16),
            "I;16",
            [(4, 4, 4), (0, 0, 0)],
            1,
            id="i16-dark-not-stretched",
        ),
        # A uniformly white 16-bit image stays white (has no range to stretch).
        pytest.param(
            lambda: _array([65535, 65535], np.uint16),
            "I;16",
            [WHITE, WHITE],
            0,
            id="i16-uniform-white",
        ),
        # 32-bit signed ints have no fixed scale: their actual range maps onto 0..255.
        pytest.param(
            lambda: _array([-100, 0, 100], np.int32),
            "I",
            [(0, 0, 0), (127, 127, 127), WHITE],
            1,
            id="i32-range",
        ),
        # 16-bit data whose maximum fits in 8 bits is still 16-bit: very dark, not stretched.
        pytest.param(
            lambda: _array([255, 0], np.uint16),
            "I;16",
            [(1, 1, 1), (0, 0, 0)],
            0,
            id="i16-max-255-stays-dark",
        ),
        # A uniform 32-bit image has no range: it keeps its value (clipped to 0..255).
        pytest.param(
            lambda: _array([100, 100], np.int32),
            "I",
            [(100, 100, 100), (100, 100, 100)],
            0,
            id="i32-uniform-keeps-value",
        ),
        # Float: the range 0..1 maps onto 0..255 (0.25 -> ~64).
        pytest.param(
            lambda: _array([0.0, 0.25, 1.0], np.float32),
            "F",
            [(0, 0, 0), (64, 64, 64), WHITE],
            1,
            id="float-F",
        ),
        # Float NaN is ignored for the range and becomes black, not an error.
        pytest.param(
            lambda: _array([float("nan"), 0.0, 2.0], np.float32),
            "F",
            [(0, 0, 0), (0, 0, 0), WHITE],
            0,
            id="float-F-nan",
        ),
    ],
)
def test_to_rgb_exact_pixels(
    make: Callable[[], Image.Image],
    source_mode: str,
    expected: list[tuple[int, int, int]],
    tol: int,
) -> None:
    image = make()
    assert image.mode == source_mode  # the case really exercises that mode
    _assert_pixels(to_rgb(image), expected, tol)


@pytest.mark.parametrize(
    ("make", "fmt", "expected", "tol", "conversions"),
    [
        # A 16-bit grey PNG read back from disk: 65535 -> 255, 0 -> 0.
        pytest.param(
            lambda: _array([65535, 0], np.uint16),
            "PNG",
            [WHITE, (0, 0, 0)],
            0,
            ("16-bit (I;16) scaled to 8-bit",),
            id="png-16bit-grey",
        ),
        # A palette PNG with a tRNS entry: the transparent index reads as white.
        pytest.param(
            lambda: _with_transparency(_palette([RED, (0, 0, 0)], [0, 1]), 1),
            "PNG",
            [RED, WHITE],
            0,
            ("transparency composited on white",),
            id="png-palette-trns",
        ),
        # An RGBA PNG with a fully transparent black pixel.
        pytest.param(
            lambda: _row("RGBA", [(0, 0, 0, 0), (0, 0, 255, 255)]),
            "PNG",
            [WHITE, BLUE],
            0,
            ("transparency composited on white",),
            id="png-rgba",
        ),
        # A CMYK JPEG (Adobe inverted ink) decodes to cyan, within JPEG loss.
        pytest.param(
            lambda: Image.new("CMYK", (16, 16), (255, 0, 0, 0)),
            "JPEG",
            [(0, 255, 255)] * 256,
            4,
            ("CMYK converted to RGB",),
            id="jpeg-cmyk",
        ),
        # An RGBA PNG opaque everywhere: the alpha channel changes nothing, so no note.
        pytest.param(
            lambda: _row("RGBA", [(0, 0, 255, 255), (255, 0, 0, 255)]),
            "PNG",
            [BLUE, RED],
            0,
            (),
            id="png-rgba-opaque",
        ),
        # A plain grey PNG: repeated into three channels, nothing lost, no note.
        pytest.param(
            lambda: _array([255, 0], np.uint8),
            "PNG",
            [WHITE, (0, 0, 0)],
            0,
            (),
            id="png-grey-8bit",
        ),
    ],
)
def test_load_image_from_file_normalises(
    tmp_path: Path,
    make: Callable[[], Image.Image],
    fmt: str,
    expected: list[tuple[int, int, int]],
    tol: int,
    conversions: tuple[str, ...],
) -> None:
    source = make()
    path = tmp_path / f"image.{fmt.lower()}"
    source.save(path, format=fmt)
    with Image.open(path) as on_disk:
        assert on_disk.mode == source.mode  # the file really holds that mode
    loaded = load_image(str(path))
    assert loaded.size == source.size
    _assert_pixels(loaded.image, expected, tol)
    assert loaded.conversions == conversions  # every change to the pixels is named


# --- EXIF orientation --------------------------------------------------------------------

UPRIGHT_SIZE = (48, 32)  # landscape, so a missed 90-degree turn shows in the size
BLOCK = 12


def _upright() -> Image.Image:
    """White, with a red block in the top-left corner and a blue one in the top-right."""
    image = Image.new("RGB", UPRIGHT_SIZE, WHITE)
    width, _ = UPRIGHT_SIZE
    image.paste(RED, (0, 0, BLOCK, BLOCK))
    image.paste(BLUE, (width - BLOCK, 0, width, BLOCK))
    return image


def _corner(image: Image.Image, corner: str) -> tuple[int, int, int]:
    """The pixel at the centre of the BLOCK-sized square in a corner (TL, TR, BL, BR)."""
    width, height = image.size
    x = BLOCK // 2 if corner[1] == "L" else width - BLOCK // 2
    y = BLOCK // 2 if corner[0] == "T" else height - BLOCK // 2
    return image.convert("RGB").getpixel((x, y))  # type: ignore[return-value]


def _near(pixel: tuple[int, int, int], colour: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, colour, strict=True))


T = Image.Transpose


@pytest.mark.parametrize(
    ("orientation", "store_as", "red_corner_on_disk"),
    [
        # 1: stored upright.
        pytest.param(1, None, "TL", id="1-upright"),
        # 2: stored mirrored left-right (row 0 top, column 0 right).
        pytest.param(2, T.FLIP_LEFT_RIGHT, "TR", id="2-mirror-horizontal"),
        # 3: stored upside down (row 0 bottom, column 0 right).
        pytest.param(3, T.ROTATE_180, "BR", id="3-rotate-180"),
        # 4: stored mirrored top-bottom (row 0 bottom, column 0 left).
        pytest.param(4, T.FLIP_TOP_BOTTOM, "BL", id="4-mirror-vertical"),
        # 5: stored transposed (row 0 left, column 0 top): the only corner that stays put.
        pytest.param(5, T.TRANSPOSE, "TL", id="5-transpose"),
        # 6: stored turned 90 degrees counter-clockwise (row 0 right, column 0 top).
        pytest.param(6, T.ROTATE_90, "BL", id="6-rotate-90-cw-to-view"),
        # 7: stored transversed (row 0 right, column 0 bottom).
        pytest.param(7, T.TRANSVERSE, "BR", id="7-transverse"),
        # 8: stored turned 90 degrees clockwise (row 0 left, column 0 bottom).
        pytest.param(8, T.ROTATE_270, "TR", id="8-rotate-90-ccw-to-view"),
    ],
)
def test_exif_orientation_restores_upright_pixels(
    tmp_path: Path, orientation: int, store_as: Image.Transpose | None, red_corner_on_disk: str
) -> None:
    upright = _upright()
    stored = upright if store_as is None else upright.transpose(store_as)
    # The stored pixels match the EXIF definition of this orientation.
    assert _near(_corner(stored, red_corner_on_disk), RED, tol=0)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    stored.save(path, exif=exif, quality=95)

    loaded = load_image(str(path))

    assert loaded.size == UPRIGHT_SIZE
    assert loaded.image.mode == "RGB"
    assert _near(_corner(loaded.image, "TL"), RED)
    assert _near(_corner(loaded.image, "TR"), BLUE)
    assert _near(_corner(loaded.image, "BL"), WHITE)
    assert _near(_corner(loaded.image, "BR"), WHITE)
    # A turned file is said to be turned, with both sizes (boxes live in the oriented frame).
    stored_w, stored_h = stored.size
    expected = (
        ()
        if orientation == 1
        else (
            f"EXIF orientation {orientation} applied ({stored_w}x{stored_h} file, "
            f"{UPRIGHT_SIZE[0]}x{UPRIGHT_SIZE[1]} oriented; boxes are read in the oriented frame)",
        )
    )
    assert loaded.conversions == expected


# --- errors ------------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A 1-bit grey PNG whose header claims width x height, followed by junk pixel data.

    Opening it is instant; decoding it would fail as corrupt. So a pixel-limit message
    proves the limit was checked before any decoding.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"not zlib data")
        + chunk(b"IEND", b"")
    )


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _write(name: str, data: bytes) -> Callable[[Path], str]:
    def make(folder: Path) -> str:
        path = folder / name
        path.write_bytes(data)
        return str(path)

    return make


@pytest.mark.parametrize(
    ("make_uri", "expected"),
    [
        # A path that does not exist.
        pytest.param(lambda d: str(d / "nope.jpg"), ["file not found"], id="missing-file"),
        # A folder where a file was expected.
        pytest.param(lambda d: str(d), ["not a file"], id="directory"),
        # A zero-byte file.
        pytest.param(_write("empty.jpg", b""), ["empty file"], id="empty-file"),
        # Bytes that are no image format at all.
        pytest.param(
            _write("noise.jpg", np.random.default_rng(1).bytes(2000)),
            ["not an image or an unsupported format"],
            id="random-bytes",
        ),
        # A JPEG cut in half fails instead of being padded with grey.
        pytest.param(
            _write("half.jpg", _first_half(_encoded("JPEG"))),
            ["corrupt or truncated image", "truncated"],
            id="truncated-jpeg",
        ),
        # A PNG cut in half likewise.
        pytest.param(
            _write("half.png", _first_half(_encoded("PNG"))),
            ["corrupt or truncated image", "truncated"],
            id="truncated-png",
        ),
        # A valid header with broken pixel data (small enough to be decoded).
        pytest.param(
            _write("broken.png", _png_header(10, 10)),
            ["corrupt or truncated image"],
            id="corrupt-pixel-data",
        ),
        # 81 MP header: over croptune's 64 MP limit, refused from the header alone.
        pytest.param(
            _write("big.png", _png_header(9000, 9000)),
            ["9000x9000 is 81,000,000 pixels, over the limit of 64,000,000"],
            id="over-max-pixels",
        ),
        # 400 MP header: Pillow's own bomb guard, also refused from the header alone.
        pytest.param(
            _write("bomb.png", _png_header(20000, 20000)),
            ["decompression bomb", "400000000 pixels", "limit"],
            id="decompression-bomb",
        ),
    ],
)
def test_load_errors_say_why(
    tmp_path: Path, make_uri: Callable[[Path], str], expected: list[str]
) -> None:
    uri = make_uri(tmp_path)
    with pytest.raises(ImageLoadError) as caught:
        load_image(uri)
    for fragment in expected:
        assert fragment in str(caught.value)


def test_pixel_limit_is_checked_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (100, 60), RED).save(path)

    def no_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(ImageLoadError, match=r"100x60 is 6,000 pixels, over the limit of 5,999"):
        load_image(str(path), max_pixels=5_999)


def test_pixel_limit_is_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (100, 60), RED).save(path)
    assert load_image(str(path), max_pixels=6_000).size == (100, 60)


def test_decode_image_refuses_empty_bytes() -> None:
    with pytest.raises(ImageLoadError, match="empty file"):
        decode_image(b"")


# --- pixel hash --------------------------------------------------------------------------


def _noise(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))


def test_pixel_hash_same_pixels_same_hash_whatever_the_file(tmp_path: Path) -> None:
    image = _noise()
    path = tmp_path / "noise.png"
    image.save(path)
    loaded = load_image(str(path))
    assert loaded.sha256 == pixel_hash(image)
    assert len(loaded.sha256) == 64


def test_pixel_hash_changes_with_one_pixel() -> None:
    image = _noise()
    changed = image.copy()
    r, g, b = changed.getpixel((5, 7))  # type: ignore[misc]
    changed.putpixel((5, 7), (r ^ 1, g, b))
    assert pixel_hash(changed) != pixel_hash(image)


def test_pixel_hash_same_pixels_other_shape_differs() -> None:
    # 2x3 and 3x2 images with the same bytes are different images.
    data = bytes(range(18))
    wide = Image.frombytes("RGB", (3, 2), data)
    tall = Image.frombytes("RGB", (2, 3), data)
    assert pixel_hash(wide) != pixel_hash(tall)


def test_pixel_hash_follows_pixels_through_jpeg(tmp_path: Path) -> None:
    image = _noise()
    path = tmp_path / "noise.jpg"
    image.save(path, quality=90)
    loaded = load_image(str(path))
    # JPEG is lossy: random noise cannot survive it bit for bit, so the hash differs.
    assert not np.array_equal(np.asarray(loaded.image), np.asarray(image))
    assert loaded.sha256 != pixel_hash(image)
    # ... and the same JPEG file always gives the same hash.
    assert load_image(str(path)).sha256 == loaded.sha256


# --- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # Plain http URL.
        pytest.param("http://example.com/a.jpg", True, id="http"),
        # https URL with a query string.
        pytest.param("https://cdn.example.com/a.jpg?w=800", True, id="https"),
        # URL schemes are case-insensitive.
        pytest.param("HTTPS://EXAMPLE.COM/A.JPG", True, id="upper-case-scheme"),
        # A relative path is a file.
        pytest.param("img/a1_0.jpg", False, id="relative-path"),
        # An absolute path that merely contains a URL later on is a file.
        pytest.param("/data/http://x.jpg", False, id="absolute-path-with-url-inside"),
        # Other schemes are not downloaded.
        pytest.param("ftp://example.com/a.jpg", False, id="ftp"),
        # file:// URLs are not treated as http(s).
        pytest.param("file:///tmp/a.jpg", False, id="file-url"),
        # A file named like a scheme, without the slashes.
        pytest.param("http:a.jpg", False, id="scheme-without-slashes"),
    ],
)
def test_is_url(uri: str, expected: bool) -> None:
    assert is_url(uri) is expected


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def http_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A folder served over http on 127.0.0.1 (a random free port): (folder, base URL)."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    folder = tmp_path / "www"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_load_image_over_http(http_folder: tuple[Path, str]) -> None:
    folder, base = http_folder
    image = _noise(3)
    image.save(folder / "x.png")

    assert read_image_bytes(f"{base}/x.png") == (folder / "x.png").read_bytes()
    loaded = load_image(f"{base}/x.png")
    assert loaded.size == (32, 24)
    assert loaded.sha256 == pixel_hash(image)


def test_http_404_is_a_download_error(http_folder: tuple[Path, str]) -> None:
    _, base = http_folder
    with pytest.raises(ImageLoadError) as caught:
        load_image(f"{base}/missing.png")
    message = str(caught.value)
    assert message.startswith("download failed")
    assert "404" in message
    cause = caught.value.__cause__
    assert isinstance(cause, urllib.error.HTTPError) and cause.code == 404
    # The error response was closed, not left holding its socket until garbage collection.
    assert cause.fp is None or cause.fp.closed


def test_http_non_image_body_is_not_an_image(http_folder: tuple[Path, str]) -> None:
    # The server answers 200 with an HTML page: decoding, not downloading, fails.
    folder, base = http_folder
    (folder / "page.png").write_text("<html>sorry</html>", encoding="utf-8")
    with pytest.raises(ImageLoadError, match="not an image or an unsupported format"):
        load_image(f"{base}/page.png")
