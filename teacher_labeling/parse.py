"""Pure parsers: a teacher's answer text -> attributes or boxes.

The JSON itself comes from toolkit.answers.extract_json, the one answer parser: tolerant the
way supervision's VLM parsers are (code fences, prose around the JSON, truncated JSON) and
refusing empty, binary, huge and runaway-nested answers with a reason.
"""

from __future__ import annotations

import math
from typing import Any

from teacher_labeling.conventions import Coords, to_pixels
from toolkit.answers import AnswerParseError, extract_json
from toolkit.boxes import Box
from toolkit.schema import AttributeSchema

__all__ = ["AnswerParseError", "extract_json", "parse_attributes", "parse_boxes"]

_BOX_KEYS = ("bbox_2d", "bbox", "box", "xyxy", "box_2d")


def parse_attributes(text: str, schema: AttributeSchema) -> tuple[dict[str, Any], list[str]]:
    """Schema-shaped attributes from an answer, and notes on what was dropped."""
    value, _ = extract_json(text)
    if not isinstance(value, dict):
        raise AnswerParseError(
            f"expected a JSON object of attribute groups, got {type(value).__name__}"
        )
    return schema.clean(value)


def parse_boxes(
    text: str,
    image: int,
    coords: Coords,
    sent_wh: tuple[int, int],
    original_wh: tuple[int, int],
) -> tuple[list[Box], list[str]]:
    """Boxes in oriented-original pixels from an answer, and notes on entries dropped."""
    value, _ = extract_json(text)
    if isinstance(value, dict):
        value = next((v for v in value.values() if isinstance(v, list)), [value])
    if not isinstance(value, list):
        raise AnswerParseError(f"expected a JSON list of boxes, got {type(value).__name__}")
    boxes: list[Box] = []
    notes: list[str] = []
    for entry in value:
        coords_list = _box_coordinates(entry)
        if coords_list is None:
            notes.append(f"entry without 4 numeric coordinates dropped: {str(entry)[:60]}")
            continue
        x1, y1, x2, y2 = to_pixels(coords_list, coords, sent_wh, original_wh)
        label = entry.get("label", "") if isinstance(entry, dict) else ""
        score = entry.get("score") if isinstance(entry, dict) else None
        boxes.append(
            Box(
                image=image,
                x1=min(x1, x2),
                y1=min(y1, y2),
                x2=max(x1, x2),
                y2=max(y1, y2),
                label=str(label or ""),
                score=float(score) if isinstance(score, int | float) else None,
            )
        )
    return boxes, notes


def _box_coordinates(entry: Any) -> tuple[float, float, float, float] | None:
    raw = entry
    if isinstance(entry, dict):
        raw = next((entry[k] for k in _BOX_KEYS if k in entry), None)
    if not isinstance(raw, list | tuple) or len(raw) != 4:
        return None
    try:
        values = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in values):
        return None
    return values  # type: ignore[return-value]
