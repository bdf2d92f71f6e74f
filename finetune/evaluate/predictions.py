"""Score `croptune predict` output files (`croptune evaluate --predictions`) against a
catalog's or a run's attributes, every mismatch counted in `coverage`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.evaluate.result import PREDICTIONS, EvaluationResult, item_errors
from toolkit.errors import CroptuneError
from toolkit.files import json_lines
from toolkit.metrics import score_answers

# The error of a reference item that a predictions file has no record for.
NO_PREDICTION = "no prediction"


@dataclass
class PredictionRecords:
    """A `croptune predict` output file, read: one record per item id, and what did not fit."""

    path: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # item_id -> kept record
    lines: dict[str, int] = field(default_factory=dict)  # item_id -> line of the kept record
    duplicates: dict[str, list[int]] = field(default_factory=dict)  # item_id -> all its lines
    bad_lines: list[dict[str, Any]] = field(default_factory=list)  # {"line", "error"}
    # Error records of catalog rows that are no item's outcome: no item id, or an id whose
    # item has its own record (a duplicate catalog row; predict writes it after the item's).
    catalog_rows: list[dict[str, Any]] = field(default_factory=list)


def read_predictions(path: Path) -> PredictionRecords:
    """Read predict's JSON lines; a duplicate item id keeps its last record, bad lines are named.

    A `catalog` error record (a catalog row that did not load) never replaces an item's own
    record, and an item's own record replaces it without counting as a duplicate.
    """
    path = Path(path)
    if not path.is_file():
        raise CroptuneError(
            f"predictions {path} do not exist; write them with "
            "`croptune predict CATALOG --bundle BUNDLE --out FILE`"
        )
    found = PredictionRecords(path=path)
    all_lines: dict[str, list[int]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, record in json_lines(handle):
            if isinstance(record, json.JSONDecodeError):
                found.bad_lines.append({"line": number, "error": f"not valid JSON: {record}"})
                continue
            why = _not_a_record(record)
            if why is not None:
                found.bad_lines.append({"line": number, "error": why})
                continue
            item_id = record["item_id"]
            catalog_row = "error" in record and record.get("stage") == "catalog"
            kept = found.records.get(item_id)
            if item_id is None or (catalog_row and kept is not None):
                found.catalog_rows.append({"line": number, **record})
                continue
            if kept is not None and kept.get("stage") == "catalog" and "error" in kept:
                found.catalog_rows.append({"line": found.lines[item_id], **kept})
                all_lines[item_id] = []
            all_lines.setdefault(item_id, []).append(number)
            found.records[item_id] = record
            found.lines[item_id] = number
    found.duplicates = {i: lines for i, lines in all_lines.items() if len(lines) > 1}
    return found


def _not_a_record(record: Any) -> str | None:
    """Why a parsed line is not one of predict's records (None: it is one)."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    item_id = record.get("item_id")
    if "error" in record:
        if item_id is None and record.get("stage") == "catalog":
            return None
        if not isinstance(item_id, str) or not item_id:
            return "an error record without an item_id"
        return None
    if not isinstance(item_id, str) or not item_id:
        return "no item_id"
    if not isinstance(record.get("attributes"), dict):
        return "neither attributes (a JSON object) nor an error: not a record of `croptune predict`"
    return None


@dataclass
class References:
    """The reference attributes predictions are scored against, and the items left out."""

    source: Path
    items: dict[str, dict[str, Any]]  # item_id -> reference attributes, in source order
    left_out: dict[str, str] = field(default_factory=dict)  # item_id -> why it is not scored
    schema: Any = None  # the run's attribute schema (None: the built-in one)
    split: str | None = None


def load_references(
    source: Path, split: str | None = None, columns: dict[str, str] | None = None
) -> References:
    """Reference attributes of a catalog file (its `attributes`) or a run folder (final labels).

    split: only the items of this split of the run's recorded split (a run folder only).
    columns: croptune field -> the catalog's own column name.
    """
    from toolkit.catalog import load_catalog
    from toolkit.schema import AttributeSchema
    from toolkit.store import STORE_FILE, RunStore

    source = Path(source)
    if source.is_dir():
        if not (source / STORE_FILE).is_file():
            raise CroptuneError(
                f"reference {source} is a folder but not a croptune run (no {STORE_FILE}); "
                "pass a run folder or a catalog file"
            )
        with RunStore(source, create=False) as store:
            recorded = store.get_meta("schema_json")
            schema = AttributeSchema.model_validate_json(recorded) if recorded else None
            split_counts = store.split_counts() if split is not None else {}
            if split is not None and not split_counts:
                raise CroptuneError(
                    f"run {source} has no recorded split (`croptune dataset build` records "
                    "one); leave out --split to score every item both sides have"
                )
            if split is not None and split not in split_counts:
                raise CroptuneError(
                    f"run {source} has no split {split!r}; its recorded split has "
                    f"{', '.join(sorted(split_counts))}"
                )
            references = References(source=source, items={}, schema=schema, split=split)
            for item_id in store.item_ids():
                attributes = store.final_attributes(item_id)
                item_split = store.recorded_split(item_id) if split is not None else None
                _add_reference(references, item_id, attributes, item_split)
        return references
    if not source.is_file():
        raise CroptuneError(
            f"reference {source} does not exist; pass a catalog file or a run folder"
        )
    if split is not None:
        raise CroptuneError(
            f"--split needs a run folder as the reference; catalog {source} records no split"
        )
    # Only the attributes are read: where the photos lie does not matter here.
    catalog = load_catalog(source, allow_outside=True, columns=columns)
    references = References(source=source, items={})
    for entry in catalog.items:
        _add_reference(references, entry.item_id, entry.attributes, None)
    return references


def _add_reference(
    references: References, item_id: str, attributes: Any, item_split: str | None
) -> None:
    if not attributes:
        references.left_out[item_id] = "no reference attributes"
    elif references.split is not None and item_split != references.split:
        references.left_out[item_id] = (
            f"in split {item_split}" if item_split else "in no recorded split"
        )
    else:
        references.items[item_id] = attributes


def evaluate_predictions(
    name: str, predictions: PredictionRecords, references: References
) -> EvaluationResult:
    """Score predict's records against references, every mismatch counted in `coverage`.

    A reference item without a record (missing) or with an error record (failed) predicts
    nothing, as an unparseable answer: it costs recall. Records of items outside the
    references are not scored: extra, or left out by the reference (no attributes, another
    split). Raises when no reference item has a record.
    """
    records = predictions.records
    if not references.items:
        raise CroptuneError(
            f"reference {references.source} has no item with reference attributes"
            + (f" in split {references.split!r}" if references.split else "")
            + f"; nothing to score {predictions.path} against"
        )
    if not records.keys() & references.items.keys():
        raise CroptuneError(
            f"nothing to score: no item of predictions {predictions.path} "
            f"({len(records)} item(s)) is among the {len(references.items)} reference item(s) "
            f"of {references.source}; are they predictions of this catalog?"
        )
    answers, parsed, valid = [], [], []
    for item_id, reference in references.items.items():
        record = records.get(item_id)
        answer = _record_answer(record)
        answers.append({"item_id": item_id, **answer, "reference": reference})
        parsed.append(answer["parsed"])
        valid.append(answer["json_valid"])
    scores = score_answers(parsed, list(references.items.values()), valid, references.schema)
    failed = [a for a in answers if a.get("stage")]
    not_scored: dict[str, list[str]] = {}
    for item_id in records:
        if item_id not in references.items:
            why = references.left_out.get(item_id, "not in the reference")
            not_scored.setdefault(why, []).append(item_id)
    coverage = {
        "predictions": str(predictions.path),
        "reference": str(references.source),
        "reference_items": len(references.items),
        "predicted": sum(1 for a in answers if a["error"] is None),
        "failed": len(failed),
        "failed_by_stage": _counts(a["stage"] for a in failed),
        "failed_items": [a["item_id"] for a in failed],
        "missing": sum(1 for a in answers if a["error"] == NO_PREDICTION),
        "missing_items": [a["item_id"] for a in answers if a["error"] == NO_PREDICTION],
        "extra": len(not_scored.get("not in the reference", [])),
        "extra_items": not_scored.get("not in the reference", []),
        "not_scored": {k: v for k, v in not_scored.items() if k != "not in the reference"},
        "duplicates": len(predictions.duplicates),
        "duplicate_items": predictions.duplicates,
        "bad_lines": predictions.bad_lines,
        "catalog_rows": len(predictions.catalog_rows),
        "stopped": sum(1 for a in answers if a.get("stopped")),
    }
    result = EvaluationResult(
        model=name,
        kind=PREDICTIONS,
        split=references.split or "all",
        scores=scores,
        answers=answers,
        coverage=coverage,
    )
    result.errors = item_errors(result, references.schema)
    return result


def _record_answer(record: dict[str, Any] | None) -> dict[str, Any]:
    """One record as an answer entry: what it predicts, its validity, why it has nothing."""
    if record is None:
        return {"answer": None, "parsed": None, "json_valid": False, "error": NO_PREDICTION,
                "seconds": None, "cached": False}  # fmt: skip
    stopped = {"stopped": record["stopped"]} if record.get("stopped") else {}
    if "error" in record:
        return {"answer": record.get("answer"), "parsed": None, "json_valid": False,
                "error": str(record["error"]), "stage": str(record.get("stage") or "unknown"),
                **stopped, "seconds": None, "cached": False}  # fmt: skip
    seconds = record.get("seconds")
    total = (
        round(sum(v for v in seconds.values() if isinstance(v, int | float)), 4)
        if isinstance(seconds, dict)
        else None
    )
    attributes = record["attributes"]
    return {"answer": json.dumps(attributes, ensure_ascii=False), "parsed": attributes,
            "json_valid": bool(record.get("json_valid", True)), "error": None, **stopped,
            "seconds": total, "cached": False}  # fmt: skip


def _counts(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def _ids(ids: Sequence[str], shown: int = 5) -> str:
    listed = ", ".join(ids[:shown])
    return listed + (f", ... ({len(ids) - shown} more)" if len(ids) > shown else "")


def coverage_text(coverage: dict[str, Any]) -> str:
    """A predictions row's match with its reference in one line (console and metrics.md)."""
    parts = [
        f"{coverage['predicted']} of {coverage['reference_items']} reference item(s) predicted"
    ]
    if coverage["failed"]:
        stages = ", ".join(f"{s}: {n}" for s, n in coverage["failed_by_stage"].items())
        parts.append(f"{coverage['failed']} failed ({stages}; {_ids(coverage['failed_items'])})")
    if coverage["missing"]:
        parts.append(
            f"{coverage['missing']} missing: no prediction ({_ids(coverage['missing_items'])})"
        )
    if coverage["extra"]:
        parts.append(
            f"{coverage['extra']} extra, not in the reference, not scored "
            f"({_ids(coverage['extra_items'])})"
        )
    for why, ids in coverage["not_scored"].items():
        parts.append(f"{len(ids)} not scored: {why} ({_ids(ids)})")
    if coverage["duplicates"]:
        dups = list(coverage["duplicate_items"].items())
        shown = ", ".join(f"{i} (lines {', '.join(map(str, n))})" for i, n in dups[:5])
        parts.append(f"{coverage['duplicates']} duplicate item id(s), the last line wins: {shown}")
    if coverage["bad_lines"]:
        lines = ", ".join(str(b["line"]) for b in coverage["bad_lines"][:10])
        parts.append(f"{len(coverage['bad_lines'])} unreadable line(s), skipped: line {lines}")
    if coverage["catalog_rows"]:
        parts.append(
            f"{coverage['catalog_rows']} catalog row error(s) that are no item's outcome "
            "(no item_id, or a duplicate catalog row)"
        )
    return "; ".join(parts)
