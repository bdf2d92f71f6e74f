"""Teacher instructions, in the spirit of the paper: only what is visible, nothing invented."""

from __future__ import annotations

from toolkit.schema import AttributeSchema, extraction_prompt

BOXES_INSTRUCTIONS = """Locate every region of this product photo that holds printed text or numbers
on the product surface: labels, barcodes, model or serial numbers, certification marks (CE, UKCA,
FCC, RoHS, ...), warnings, ingredient lists, 'Made in' statements. Answer with a JSON list:
[{{"bbox_2d": [x1, y1, x2, y2], "label": "<what the region holds>"}}]. {coords_hint}"""

COORDS_HINTS = {
    "qwen2.5-vl": "Coordinates are absolute pixels of the image.",
    "pixels": "Coordinates are absolute pixels of the image.",
    "norm1000": "Coordinates are integers from 0 to 1000 relative to the image width and height.",
    "norm1": "Coordinates are fractions from 0 to 1 of the image width and height.",
}


def attributes_prompt(schema: AttributeSchema, listing_text: str | None = None) -> str:
    """The instruction text for an attributes teacher: the same one the student is trained on."""
    return extraction_prompt(schema, listing_text)


def boxes_prompt(coords: str) -> str:
    """The instruction text for a boxes teacher using the given coordinate convention."""
    return BOXES_INSTRUCTIONS.format(coords_hint=COORDS_HINTS[coords])


def relabel_prompt(prompt: str, n_photos: int, n_crops: int) -> str:
    """The attributes instruction for "better labels": photos first, then close-up crops."""
    return (
        f"The first {n_photos} images are the listing's photos; the last {n_crops} are close-up "
        "crops of regions with printed text or numbers from those photos. Read the small print "
        "from the crops.\n\n" + prompt
    )
