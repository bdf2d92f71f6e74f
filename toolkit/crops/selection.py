"""Which of an item's images are used: pHash duplicates out, then the image budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PIL import Image

from toolkit.store import CropRow

# The paper's maximum images per item; the dataset config's max_images_per_item defaults to it.
DEFAULT_IMAGE_BUDGET = 9
PHASH_WORK_SIDE = 128  # pHash input is brought near this shorter side first (see image_phash)


def image_phash(image: Image.Image) -> str:
    """The 64-bit pHash of an image, hex, computed on a small copy for speed.

    pHash keeps only the coarsest structure (8x8 DCT of a 32x32 grey image), so a large
    image is first made small: subsampled to about twice PHASH_WORK_SIDE on its shorter
    side (nearest: reads only the sampled pixels), turned grey, then box-reduced by 4. On
    photos, re-encoded (JPEG q70) and resized copies stay within a few bits of each other,
    as with imagehash.phash on the full image, at a twentieth of its cost.
    """
    import imagehash

    factor = min(image.size) // PHASH_WORK_SIDE
    if factor >= 4:
        width, height = image.size
        size = (max(4, 2 * width // factor), max(4, 2 * height // factor))
        image = image.resize(size, Image.Resampling.NEAREST).convert("L").reduce(4)
    elif factor >= 2:
        image = image.convert("L").reduce(factor)
    return str(imagehash.phash(image))


def phash_distance(a: str, b: str) -> int:
    """Hamming distance between two hex pHashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def mark_duplicates(phashes: Sequence[str | None], threshold: int) -> list[int | None]:
    """For each image in priority order, the position of the earlier KEPT image it repeats.

    An image is a duplicate when its pHash is within `threshold` bits of a kept image (the
    closest one, the earliest on ties); None for a kept image, an image without a pHash, or
    when threshold < 0 (de-duplication off).
    """
    kept: list[tuple[int, str]] = []
    out: list[int | None] = []
    for position, value in enumerate(phashes):
        if value is None or threshold < 0:
            out.append(None)
            if value is not None:
                kept.append((position, value))
            continue
        best: tuple[int, int] | None = None
        for other, other_value in kept:
            distance = phash_distance(value, other_value)
            if distance <= threshold and (best is None or distance < best[0]):
                best = (distance, other)
        out.append(None if best is None else best[1])
        if best is None:
            kept.append((position, value))
    return out


def priority_order(originals: list[int], crops: list[int]) -> list[tuple[str, int]]:
    """Images in budget priority: ("o", index) the main photo, ("c", i) every crop, then the
    other photos in catalog order."""
    ranked = [("o", i) for i in originals[:1]] + [("c", i) for i in crops]
    return ranked + [("o", i) for i in originals[1:]]


def budgeted_order(
    originals: list[int], crops: list[int], budget: int
) -> tuple[list[int], list[int]]:
    """The originals and crops kept under an image budget.

    Priority: the first original (the listing's main photo), then every crop (they hold
    what a downscaled photo hides), then the other originals in catalog order.
    """
    kept = priority_order(originals, crops)[:budget]
    return [i for k, i in kept if k == "o"], [i for k, i in kept if k == "c"]


def original_key(index: int) -> str:
    """How an original is named in `duplicate_of`."""
    return f"image:{index}"


def select_images(
    originals: list[int],
    crops: Sequence[CropRow],
    original_duplicates: Mapping[int, str | None],
    budget: int,
) -> tuple[list[int], list[int]]:
    """Originals (indices) and crops (positions) used: duplicates out, then the budget.

    An image is left out as a duplicate only when the image it repeats is itself among
    those given (a crop repeating a photo the example does not use stays).
    """
    used = {original_key(i) for i in originals} | {c.path for c in crops}
    fresh_originals = [i for i in originals if original_duplicates.get(i) not in used]
    fresh_crops = [n for n, c in enumerate(crops) if c.duplicate_of not in used]
    return budgeted_order(fresh_originals, fresh_crops, budget)
