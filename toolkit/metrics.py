"""Field-level precision, recall and F1 of attribute answers against references.

Each (group, field, normalised value) is one unit; a list field contributes one unit per
element, compared as a set. Normalisation: Unicode NFKC, case-folded, whitespace collapsed,
barcode (gtin) reduced to its digits.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

_SPACES = re.compile(r"\s+")
DIGITS_ONLY_FIELDS = {("identifiers", "gtin")}


def normalise(value: Any, group: str = "", name: str = "") -> str:
    """A value as compared: NFKC, case-folded, single spaces; digits only for barcodes."""
    text = unicodedata.normalize("NFKC", str(value)).casefold()
    text = _SPACES.sub(" ", text).strip()
    if (group, name) in DIGITS_ONLY_FIELDS:
        text = "".join(ch for ch in text if ch.isdigit())
    return text


def field_units(attributes: Any) -> set[tuple[str, str, str]]:
    """The (group, field, value) units of a schema-shaped answer (anything else: none)."""
    units: set[tuple[str, str, str]] = set()
    if not isinstance(attributes, dict):
        return units
    for group, fields in attributes.items():
        if not isinstance(fields, dict):
            continue
        for name, value in fields.items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                if item is None or isinstance(item, dict | list):
                    continue
                text = normalise(item, group, name)
                if text:
                    units.add((str(group), str(name), text))
    return units


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
        """TP / predicted (1.0 when nothing was predicted and nothing expected)."""
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

    def as_dict(self) -> dict[str, float]:
        """JSON-ready precision, recall, F1 and the counts behind them."""
        return {
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "f1": round(self.f1, 4),
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

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready scores."""
        return {
            "examples": self.examples,
            "json_valid_rate": round(self.valid_json / self.examples, 4) if self.examples else 0.0,
            "micro": self.micro.as_dict(),
            "groups": {k: v.as_dict() for k, v in sorted(self.groups.items())},
            "fields": {k: v.as_dict() for k, v in sorted(self.fields.items())},
        }


def score_example(predicted: Any, reference: Any) -> dict[str, Counts]:
    """Counts per 'group.field' for one answer against its reference."""
    pred_units, ref_units = field_units(predicted), field_units(reference)
    per_field: dict[str, Counts] = {}
    keys = Counter(f"{g}.{f}" for g, f, _ in pred_units | ref_units)
    for key in keys:
        group, name = key.split(".", 1)
        p = {u for u in pred_units if u[0] == group and u[1] == name}
        r = {u for u in ref_units if u[0] == group and u[1] == name}
        per_field[key] = Counts(tp=len(p & r), predicted=len(p), reference=len(r))
    return per_field


def score_answers(predictions: list[Any], references: list[Any], valid: list[bool]) -> FieldScores:
    """Field-level scores of parsed predictions (None when unparseable) against references."""
    scores = FieldScores()
    for predicted, reference, ok in zip(predictions, references, valid, strict=True):
        scores.examples += 1
        scores.valid_json += int(ok)
        for key, counts in score_example(predicted, reference).items():
            group = key.split(".", 1)[0]
            scores.micro.add(counts)
            scores.groups.setdefault(group, Counts()).add(counts)
            scores.fields.setdefault(key, Counts()).add(counts)
    return scores
