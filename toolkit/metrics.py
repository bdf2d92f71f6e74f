"""Field-level precision, recall and F1 of attribute answers against references.

Units
    An answer (and its reference) is a JSON object of groups, each an object of fields.
    Every (group, field, normalised value) is one unit. Precision = matched units /
    predicted units, recall = matched units / reference units, F1 = their harmonic mean.
    Scores are reported micro (all units of all items pooled), per group and per field;
    every group and field of the schema has a row, even when no item has it.

- Lists are sets: one unit per distinct normalised element; order and duplicates are ignored.
- Nested objects are flattened, not dropped: ``{"attributes": {"size": {"value": "500",
  "unit": "ml"}}}`` has the fields ``attributes.size.value`` and ``attributes.size.unit``
  (the elements of a list of objects likewise); they count in their top-level group.
- Not given: ``null``, ``""``, whitespace, ``[]``, ``{}`` and a value that normalises to
  nothing (a barcode without digits) are no unit, on either side. A group that is not an
  object, or an answer that is not an object, gives no units.
- An unparseable answer (``None``) predicts nothing: 0 matched, every reference unit of
  the item missed, so recall drops. The JSON validity rate is reported beside the scores.
- Empty rows (no unit on either side) have precision, recall and F1 ``None``: nothing to score.
  In the Counts properties the convention is: nothing expected gives recall 1; nothing
  predicted gives precision 1 if nothing was expected, else 0.

Normalisation (both sides, in this order)
    1. Unicode NFKC: full-width letters and digits fold to ASCII ("４００" -> "400"),
       no-break spaces become spaces, "℃" becomes "°C".
    2. Invisible format characters (zero-width space, soft hyphen, BOM) are removed.
    3. Case folding ("MADE IN ITALY" == "made in italy").
    4. Whitespace runs become one space; ends are stripped.
    5. The field's ``compare`` mode from the schema (``toolkit/schemas/compliance.yaml``:
       ``gtin`` is ``digits``; ``model_number``, ``batch_lot``, ``serial_number`` are ``code``;
       everything else, and any field the schema does not name, is ``text``):

       - ``text``: a number followed by a known unit is written ``<number> <unit>`` with the
         unit's short name: "500ml", "500 ML", "500 mL" and "500 millilitres" all become
         "500 ml". A decimal comma becomes a point ("0,5 l" -> "0.5 l") unless it could be a
         thousands separator (exactly three digits after it and a non-zero whole part:
         "1,000 mAh" stays as written). Units are NOT converted into each other: "0.5 l" and
         "500 ml", or "1 kg" and "1000 g", stay different values. Known units: UNIT_ALIASES.
       - ``code``: steps 1-4 only ("500L" in a model number is not a quantity).
       - ``digits``: digits only ("4 006381-333931" -> "4006381333931"): barcodes.
    6. JSON numbers are written without a trailing ".0" (500.0 -> "500"); booleans as
       "true"/"false".
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.schema import AttributeSchema

_SPACES = re.compile(r"\s+")

# Short unit name -> the spellings that mean it (after NFKC and case folding).
UNIT_ALIASES: dict[str, tuple[str, ...]] = {
    "ml": ("ml", "mls", "millilitre", "millilitres", "milliliter", "milliliters"),
    "cl": ("cl", "centilitre", "centilitres", "centiliter", "centiliters"),
    "dl": ("dl", "decilitre", "decilitres", "deciliter", "deciliters"),
    "l": ("l", "lt", "ltr", "ltrs", "litre", "litres", "liter", "liters"),
    "mg": ("mg", "milligram", "milligrams", "milligramme", "milligrammes"),
    "g": ("g", "gr", "gram", "grams", "gramme", "grammes"),
    "kg": ("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms", "kilogramme", "kilogrammes"),
    "fl oz": ("fl oz", "fl. oz", "fl.oz", "fl. oz.", "floz", "fluid ounce", "fluid ounces"),
    "oz": ("oz", "ounce", "ounces"),
    "lb": ("lb", "lbs", "pound", "pounds"),
    "mm": ("mm", "millimetre", "millimetres", "millimeter", "millimeters"),
    "cm": ("cm", "centimetre", "centimetres", "centimeter", "centimeters"),
    "m": ("m", "metre", "metres", "meter", "meters"),
    "in": ("in", "inch", "inches"),
    "w": ("w", "watt", "watts"),
    "kw": ("kw", "kilowatt", "kilowatts"),
    "wh": ("wh", "watt-hour", "watt-hours"),
    "v": ("v", "volt", "volts"),
    "a": ("a", "amp", "amps", "ampere", "amperes"),
    "mah": ("mah",),
    "hz": ("hz", "hertz"),
    "°c": ("°c", "° c"),
    "°f": ("°f", "° f"),
}
_UNIT_OF = {alias: unit for unit, aliases in UNIT_ALIASES.items() for alias in aliases}
# Longest spellings first, so "fl oz" wins over "oz" and "mm" over "m".
_QUANTITY = re.compile(
    # Not inside a word or number ("kt500ml" is a code); "2x500ml" is a pack of two.
    r"(?<![^\W_x]|[.,])"
    r"(\d+(?:[.,]\d+)*)\s*("
    + "|".join(re.escape(a) for a in sorted(_UNIT_OF, key=len, reverse=True))
    + r")(?![\w°])"
)
_DECIMAL_COMMA = re.compile(r"^(\d+),(\d+)$")


def _number(text: str) -> str:
    """A quantity's number with a decimal comma as a point (thousands groups left alone)."""
    match = _DECIMAL_COMMA.match(text)
    if match is None:
        return text
    whole, fraction = match.groups()
    if len(fraction) == 3 and whole.strip("0"):
        return text  # "1,000": a thousands separator as likely as a decimal comma
    return f"{whole}.{fraction}"


def _quantity(match: re.Match[str]) -> str:
    return f"{_number(match.group(1))} {_UNIT_OF[match.group(2)]}"


@functools.lru_cache(maxsize=1)
def _default_schema() -> AttributeSchema:
    from toolkit.schema import load_schema

    return load_schema("compliance")


def compare_mode(group: str, name: str, schema: AttributeSchema | None = None) -> str:
    """How a field's values are compared: the schema's text | code | digits (text if unknown)."""
    schema = schema or _default_schema()
    spec = schema.groups.get(group, {}).get(name.split(".", 1)[0])
    return spec.compare if spec is not None else "text"


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def normalise(
    value: Any, group: str = "", name: str = "", schema: AttributeSchema | None = None
) -> str:
    """A value as compared (module docstring: NFKC, format characters, case, spaces, mode)."""
    text = unicodedata.normalize("NFKC", _scalar_text(value))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf").casefold()
    text = _SPACES.sub(" ", text).strip()
    mode = compare_mode(group, name, schema)
    if mode == "digits":
        return "".join(ch for ch in text if ch.isdigit())
    if mode == "text":
        text = _QUANTITY.sub(_quantity, text)
    return text


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _leaves(value: Any, key: str, in_list: bool) -> Iterator[tuple[str, Any, bool]]:
    """(dotted key, scalar, whether it sits in a list) for every scalar under value."""
    if isinstance(value, dict):
        for name, inner in value.items():
            yield from _leaves(inner, f"{key}.{name}", in_list)
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _leaves(inner, key, True)
    elif _given(value):
        yield key, value, in_list


def flatten_fields(attributes: Any) -> dict[str, Any]:
    """The given fields of an answer: {"group.field[.sub]": scalar, or list of scalars}."""
    flat: dict[str, list[Any]] = {}
    listed: set[str] = set()
    if not isinstance(attributes, dict):
        return {}
    for group, fields in attributes.items():
        if not isinstance(fields, dict):
            continue
        for name, value in fields.items():
            for key, scalar, in_list in _leaves(value, f"{group}.{name}", False):
                flat.setdefault(key, []).append(scalar)
                if in_list:
                    listed.add(key)
    return {
        key: values if key in listed or len(values) > 1 else values[0]
        for key, values in flat.items()
    }


def _split(key: str) -> tuple[str, str]:
    group, _, name = key.partition(".")
    return group, name


def _value_set(key: str, value: Any, schema: AttributeSchema | None) -> set[str]:
    group, name = _split(key)
    values = value if isinstance(value, list) else [value]
    return {text for text in (normalise(v, group, name, schema) for v in values) if text}


def field_values(attributes: Any, schema: AttributeSchema | None = None) -> dict[str, set[str]]:
    """Normalised value sets per "group.field[.sub]" (fields with no value left out)."""
    sets = {
        key: _value_set(key, value, schema) for key, value in flatten_fields(attributes).items()
    }
    return {key: values for key, values in sets.items() if values}


def field_units(
    attributes: Any, schema: AttributeSchema | None = None
) -> set[tuple[str, str, str]]:
    """The (group, field, normalised value) units of an answer (field may be dotted: nested)."""
    return {
        (*_split(key), text)
        for key, values in field_values(attributes, schema).items()
        for text in values
    }


@dataclass
class Counts:
    """True positives, predicted units and reference units."""

    tp: int = 0
    predicted: int = 0
    reference: int = 0

    def add(self, other: Counts) -> None:
        """Accumulate another count."""
        self.tp += other.tp
        self.predicted += other.predicted
        self.reference += other.reference

    @property
    def precision(self) -> float:
        """TP / predicted (with nothing predicted: 1.0 if nothing was expected, else 0.0)."""
        return self.tp / self.predicted if self.predicted else float(self.reference == 0)

    @property
    def recall(self) -> float:
        """TP / reference (1.0 when nothing was expected)."""
        return self.tp / self.reference if self.reference else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready precision, recall, F1 (None with no unit on either side) and counts."""
        empty = self.predicted == 0 and self.reference == 0
        return {
            "precision": None if empty else round(self.precision, 4),
            "recall": None if empty else round(self.recall, 4),
            "f1": None if empty else round(self.f1, 4),
            "tp": self.tp,
            "predicted": self.predicted,
            "reference": self.reference,
        }


@dataclass
class FieldScores:
    """Micro scores over all units, and per group and per field."""

    micro: Counts = field(default_factory=Counts)
    groups: dict[str, Counts] = field(default_factory=dict)
    fields: dict[str, Counts] = field(default_factory=dict)
    examples: int = 0
    valid_json: int = 0

    def add_example(
        self, predicted: Any, reference: Any, valid: bool, schema: AttributeSchema | None = None
    ) -> None:
        """Score one answer against its reference and accumulate it."""
        self.examples += 1
        self.valid_json += int(valid)
        for key, counts in score_example(predicted, reference, schema).items():
            self.micro.add(counts)
            self.groups.setdefault(_split(key)[0], Counts()).add(counts)
            self.fields.setdefault(key, Counts()).add(counts)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready scores."""
        return {
            "examples": self.examples,
            "json_valid": self.valid_json,
            "json_valid_rate": round(self.valid_json / self.examples, 4) if self.examples else 0.0,
            "micro": self.micro.as_dict(),
            "groups": {k: v.as_dict() for k, v in self.groups.items()},
            "fields": {k: v.as_dict() for k, v in self.fields.items()},
        }


def score_example(
    predicted: Any, reference: Any, schema: AttributeSchema | None = None
) -> dict[str, Counts]:
    """Counts per "group.field[.sub]" for one answer against its reference."""
    pred, ref = field_values(predicted, schema), field_values(reference, schema)
    return {
        key: Counts(
            tp=len(pred.get(key, set()) & ref.get(key, set())),
            predicted=len(pred.get(key, ())),
            reference=len(ref.get(key, ())),
        )
        for key in sorted(pred.keys() | ref.keys())
    }


def empty_scores(schema: AttributeSchema | None = None) -> FieldScores:
    """Scores with a zero row for every group and field of the schema (schema order)."""
    schema = schema or _default_schema()
    scores = FieldScores()
    for group, fields in schema.groups.items():
        scores.groups[group] = Counts()
        for name in fields:
            scores.fields[f"{group}.{name}"] = Counts()
    return scores


def score_answers(
    predictions: list[Any],
    references: list[Any],
    valid: list[bool] | None = None,
    schema: AttributeSchema | None = None,
) -> FieldScores:
    """Field-level scores of parsed predictions (None when unparseable) against references.

    valid: whether each answer was valid JSON (default: parsed at all); only the validity
    rate uses it. schema: its groups and fields get rows even when empty, and it says how
    each field is compared (default: the built-in compliance schema).
    """
    if valid is None:
        valid = [prediction is not None for prediction in predictions]
    scores = empty_scores(schema)
    for predicted, reference, ok in zip(predictions, references, valid, strict=True):
        scores.add_example(predicted, reference, ok, schema)
    return scores


def field_errors(
    predicted: Any, reference: Any, schema: AttributeSchema | None = None
) -> list[dict[str, Any]]:
    """What one answer got wrong, for humans: {field, kind, predicted, reference} per field.

    kind: missed (only the reference gives the field), extra (only the answer gives it),
    wrong (both give it, the normalised values differ; lists: the sets differ). Values are
    as written (lists for list fields), None for the side that does not give the field.
    """
    pred_raw, ref_raw = flatten_fields(predicted), flatten_fields(reference)
    pred, ref = field_values(predicted, schema), field_values(reference, schema)
    errors: list[dict[str, Any]] = []
    for key in sorted(pred.keys() | ref.keys()):
        if pred.get(key) == ref.get(key):
            continue
        kind = "wrong" if key in pred and key in ref else "missed" if key in ref else "extra"
        errors.append(
            {
                "field": key,
                "kind": kind,
                "predicted": pred_raw.get(key),
                "reference": ref_raw.get(key),
            }
        )
    return errors
