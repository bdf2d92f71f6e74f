"""Evaluate models on a dataset split: answer, parse, score fields, time, compare.

Any answer backend (toolkit.protocols.AnswerBackend: a transformers model in-process, an
OpenAI-compatible endpoint) and any teacher's stored labels are scored the same way, so one
table compares them. Metric definitions: toolkit/metrics.py and docs/evaluation.md.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.answers import GeneratedAnswer
from toolkit.errors import CroptuneError
from toolkit.files import atomic_write
from toolkit.metrics import FieldScores, field_errors, score_answers
from toolkit.protocols import AnswerBackend
from toolkit.saved_dataset import load_saved_dataset

logger = logging.getLogger(__name__)

# Row kinds in metrics.json: who answered (PREDICTIONS: a `croptune predict` output file).
TRANSFORMERS, ENDPOINT, TEACHER = "transformers", "endpoint", "teacher"
PREDICTIONS = "predictions"
# The error of a reference item that a predictions file has no record for.
NO_PREDICTION = "no prediction"
# The paper's groups, in its order; other groups of a custom schema follow alphabetically.
GROUP_ORDER = ("identifiers", "attributes", "origin_production", "regulatory_safety")
# The judge's buckets (teacher_labeling.judge.BUCKETS), in the paper's order.
JUDGE_ORDER = ("verifiable_correct", "verifiable_incorrect", "unverifiable")
JUDGE_COLUMNS = {
    "verifiable_correct": "judge: correct",
    "verifiable_incorrect": "judge: incorrect",
    "unverifiable": "judge: unverifiable",
}


@dataclass
class EvaluationResult:
    """One model's (or teacher's) answers on one split: scores, per-item details, timing."""

    model: str
    kind: str
    split: str
    scores: FieldScores
    answers: list[dict[str, Any]]  # per item: item_id, answer, parsed, json_valid, error, ...
    wall_seconds: float | None = None  # answering time of this run (None: teacher labels)
    judge: dict[str, Any] | None = None  # bucket rates of the LLM judge, when asked for
    errors: list[dict[str, Any]] = field(default_factory=list)  # per item: field errors
    # A predictions file's match with its reference (missing, failed, extra, ...): see
    # evaluate_predictions; None for every other row.
    coverage: dict[str, Any] | None = None

    @property
    def asked(self) -> int:
        """Answers produced in this run (not taken from a cache)."""
        return sum(1 for a in self.answers if not a.get("cached") and a.get("seconds") is not None)

    @property
    def cached(self) -> int:
        """Answers taken from the cache of an earlier run."""
        return sum(1 for a in self.answers if a.get("cached"))

    @property
    def failed(self) -> int:
        """Examples without an answer (the request failed for good)."""
        return sum(1 for a in self.answers if a.get("error"))

    def latency(self) -> dict[str, Any] | None:
        """Seconds per example (mean, p50, p90) and examples per second; None for teachers."""
        if self.kind == TEACHER:
            return None
        stats = latency_stats([a["seconds"] for a in self.answers if a.get("seconds") is not None])
        # Throughput needs answers timed in this run: a cached answer took no time now.
        asked = self.asked
        stats["examples_per_second"] = (
            round(asked / self.wall_seconds, 4) if asked and self.wall_seconds else None
        )
        stats["wall_seconds"] = round(self.wall_seconds, 3) if self.wall_seconds else None
        return stats

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready metrics (one metrics.json entry; no per-item answers)."""
        latency = self.latency()
        return {
            "model": self.model,
            "kind": self.kind,
            "split": self.split,
            **self.scores.as_dict(),
            "latency": latency,
            "seconds_per_example": latency["mean"] if latency else None,
            "examples_per_second": latency["examples_per_second"] if latency else None,
            "answers": {"asked": self.asked, "cached": self.cached, "failed": self.failed},
            "judge": self.judge,
            **({"coverage": self.coverage} if self.coverage is not None else {}),
        }


def parse_answer(text: str) -> tuple[Any, bool]:
    """(parsed object or None, whether it was valid JSON once a code fence is removed).

    toolkit.answers.extract_json does the parsing; a repaired (truncated) answer counts as
    invalid and is kept only when it is an object; an unusable one is (None, False).
    """
    value, valid, _ = parse_answer_or_reason(text)
    return value, valid


def parse_answer_or_reason(text: str) -> tuple[Any, bool, str | None]:
    """(parsed object or None, valid as written, why nothing usable came out of it or None)."""
    from toolkit.answers import AnswerParseError, extract_json

    try:
        value, valid = extract_json(text)
    except AnswerParseError as exc:
        return None, False, str(exc)
    if valid or isinstance(value, dict):
        return value, valid, None
    return None, False, f"the repaired answer is a {type(value).__name__}, not a JSON object"


def latency_stats(seconds: list[float]) -> dict[str, Any]:
    """Mean, median and 90th percentile of per-example seconds (None when there are none)."""
    if not seconds:
        return {"mean": None, "p50": None, "p90": None, "timed": 0}
    ordered = sorted(seconds)
    p90 = (
        statistics.quantiles(ordered, n=10, method="inclusive")[8]
        if len(ordered) > 1
        else ordered[0]
    )
    return {
        "mean": round(statistics.fmean(ordered), 4),
        "p50": round(statistics.median(ordered), 4),
        "p90": round(p90, 4),
        "timed": len(ordered),
    }


def load_split(dataset_dir: Path, split: str = "test", limit: int | None = None) -> Any:
    """The rows of one split of a `croptune dataset build` folder (first `limit` rows)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise CroptuneError(
            f"dataset {dataset_dir} does not exist; build one with "
            "`croptune dataset build --run RUN --out DIR`"
        )
    dataset = load_saved_dataset(
        dataset_dir, f"{dataset_dir} is not a dataset folder written by `croptune dataset build`"
    )
    from datasets import DatasetDict

    if not isinstance(dataset, DatasetDict):
        raise CroptuneError(f"{dataset_dir} holds a single split; croptune expects a DatasetDict")
    if split not in dataset:
        raise CroptuneError(
            f"dataset {dataset_dir} has no split {split!r}; it has {', '.join(dataset)}"
        )
    rows = dataset[split]
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    if len(rows) == 0:
        raise CroptuneError(f"split {split!r} of {dataset_dir} is empty")
    return rows


def dataset_schema(dataset_dir: Path) -> Any:
    """The attribute schema the dataset was built with (None: the built-in one is assumed)."""
    from toolkit.schema import AttributeSchema

    facts = Path(dataset_dir) / "croptune_dataset.json"
    if not facts.is_file():
        return None
    schema = json.loads(facts.read_text(encoding="utf-8")).get("schema")
    return AttributeSchema.model_validate(schema) if schema else None


def split_references(rows: Any) -> tuple[list[str], list[Any]]:
    """(item ids, parsed reference answers) of a split, without decoding its images."""
    references = [json.loads(c[0]["content"][0]["text"]) for c in rows["completion"]]
    return list(rows["item_id"]), references


class SplitExamples(Sequence):
    """A split's (images, prompt) examples, decoded one row at a time (a split's images
    together may not fit in memory)."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        row = self.rows[index]
        return row["images"], row["prompt"]


def evaluate_backend(
    backend: AnswerBackend,
    rows: Any,
    split: str = "test",
    schema: Any = None,
    progress: bool = False,
) -> EvaluationResult:
    """Answer every row of a split with a backend and score the answers."""
    backend.prepare()  # loading weights is not answering time
    examples = SplitExamples(rows)
    started = time.perf_counter()
    generated = backend.answer(examples, progress=progress)
    wall = time.perf_counter() - started
    if len(generated) != len(examples):
        raise CroptuneError(
            f"model {backend.name!r} returned {len(generated)} answers for {len(examples)} examples"
        )
    item_ids, references = split_references(rows)
    return score_generated(
        backend.name, backend.kind, split, item_ids, generated, references, schema, wall
    )


def score_generated(
    name: str,
    kind: str,
    split: str,
    item_ids: list[str],
    generated: list[GeneratedAnswer],
    references: list[Any],
    schema: Any = None,
    wall_seconds: float | None = None,
) -> EvaluationResult:
    """Parse and score generated answers against their references."""
    parsed = [parse_answer(g.text) if not g.error else (None, False) for g in generated]
    scores = score_answers(
        [value for value, _ in parsed], references, [ok for _, ok in parsed], schema
    )
    answers = [
        {
            "item_id": item_id,
            "answer": g.text,
            "parsed": value,
            "json_valid": ok,
            "error": g.error,
            **({"stopped": g.stopped} if g.stopped else {}),
            "seconds": None if g.seconds is None else round(g.seconds, 4),
            "cached": g.cached,
            "reference": reference,
        }
        for item_id, g, (value, ok), reference in zip(
            item_ids, generated, parsed, references, strict=True
        )
    ]
    result = EvaluationResult(
        model=name,
        kind=kind,
        split=split,
        scores=scores,
        answers=answers,
        wall_seconds=wall_seconds,
    )
    result.errors = _item_errors(result, schema)
    return result


def evaluate_labels(
    name: str, labels: dict[str, Any], rows: Any, split: str = "test", schema: Any = None
) -> EvaluationResult:
    """Score a teacher's stored labels (item_id -> attributes) on a split's items."""
    item_ids, references = split_references(rows)
    predictions = [labels.get(item_id) for item_id in item_ids]
    scores = score_answers(predictions, references, [p is not None for p in predictions], schema)
    answers = [
        {
            "item_id": item_id,
            "answer": None if label is None else json.dumps(label, ensure_ascii=False),
            "parsed": label,
            "json_valid": label is not None,
            "error": None if label is not None else "no label from this teacher",
            "seconds": None,
            "cached": False,
            "reference": reference,
        }
        for item_id, label, reference in zip(item_ids, predictions, references, strict=True)
    ]
    result = EvaluationResult(model=name, kind=TEACHER, split=split, scores=scores, answers=answers)
    result.errors = _item_errors(result, schema)
    return result


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
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                found.bad_lines.append({"line": number, "error": f"not valid JSON: {exc}"})
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
            splits = store.recorded_splits() if split is not None else {}
            if split is not None and not splits:
                raise CroptuneError(
                    f"run {source} has no recorded split (`croptune dataset build` records "
                    "one); leave out --split to score every item both sides have"
                )
            if split is not None and split not in set(splits.values()):
                raise CroptuneError(
                    f"run {source} has no split {split!r}; its recorded split has "
                    f"{', '.join(sorted(set(splits.values())))}"
                )
            references = References(source=source, items={}, schema=schema, split=split)
            for item in store.items():
                attributes = store.final_attributes(item.item_id)
                _add_reference(references, item.item_id, attributes, splits.get(item.item_id))
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
    result.errors = _item_errors(result, references.schema)
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


def _item_errors(result: EvaluationResult, schema: Any) -> list[dict[str, Any]]:
    """Per item with anything to read: its field errors, and why it has no (valid) answer."""
    records = []
    for answer in result.answers:
        errors = field_errors(answer["parsed"], answer["reference"], schema)
        if errors or answer["error"] or not answer["json_valid"]:
            records.append(
                {
                    "model": result.model,
                    "item_id": answer["item_id"],
                    "json_valid": answer["json_valid"],
                    "error": answer["error"],
                    **({"stage": answer["stage"]} if answer.get("stage") else {}),
                    "fields": errors,
                }
            )
    return records


def _groups(results: list[EvaluationResult]) -> list[str]:
    present = {g for r in results for g in r.scores.groups}
    return [g for g in GROUP_ORDER if g in present] + sorted(present - set(GROUP_ORDER))


def _judge_keys(results: list[EvaluationResult]) -> list[str]:
    present = {k for r in results if r.judge for k in r.judge}
    return [k for k in JUDGE_ORDER if k in present]


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, int | float):
        return f"{value:.{digits}f}"
    return str(value)


def comparison_table(results: list[EvaluationResult]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the comparison table: one row per model, as in metrics.md."""
    groups, judge_keys = _groups(results), _judge_keys(results)
    header = ["model", "examples", "JSON valid", "P", "R", "F1"]
    header += [f"F1 {g}" for g in groups] + ["s/example", "examples/s"]
    header += [JUDGE_COLUMNS[k] for k in judge_keys]
    rows = []
    for result in results:
        metrics = result.as_dict()
        micro = metrics["micro"]
        row = [
            result.model,
            str(metrics["examples"]),
            _number(metrics["json_valid_rate"], 2),
            _number(micro["precision"]),
            _number(micro["recall"]),
            _number(micro["f1"]),
        ]
        row += [_number(metrics["groups"].get(g, {}).get("f1")) for g in groups]
        latency = metrics["latency"]
        if latency is None:
            row += ["—", "—"]
        else:
            eps = latency["examples_per_second"]
            row += [
                _number(latency["mean"]),
                _number(eps, 2) if eps is not None else ("cached" if result.cached else "—"),
            ]
        row += [_number((result.judge or {}).get(k), 2) for k in judge_keys]
        rows.append(row)
    return header, rows


def markdown_table(results: list[EvaluationResult]) -> str:
    """The comparison table as GitHub markdown."""
    header, rows = comparison_table(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_evaluation(results: list[EvaluationResult], out_dir: Path) -> Path:
    """metrics.json, metrics.md, errors.jsonl and answers.jsonl in out_dir; returns metrics.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "metrics.json") as handle:
        json.dump([r.as_dict() for r in results], handle, indent=2, ensure_ascii=False)
    split = results[0].split if results else ""
    notes = [
        f"Split `{split}`. P/R/F1: field-level, micro over all items "
        "(definitions: docs/evaluation.md). s/example: mean seconds per example; "
        "examples/s: throughput of this run (`cached`: every answer came from the cache).",
    ]
    notes += [f"`{r.model}`: {coverage_text(r.coverage)}." for r in results if r.coverage]
    if any(r.coverage for r in results):
        notes.append(
            "Predictions rows: s/example is the mean of each record's `seconds` summed (decode, "
            "boxes, crop, generate); missing and failed items predict nothing and cost recall."
        )
    if any(r.judge for r in results):
        notes.append(
            "judge: share of the predicted values the LLM judge found visible on the photos "
            "and correct / visible and wrong / not visible (unverifiable)."
        )
    with atomic_write(out_dir / "metrics.md") as handle:
        handle.write(markdown_table(results) + "\n" + "\n".join(notes) + "\n")
    with atomic_write(out_dir / "errors.jsonl") as handle:
        for result in results:
            for record in result.errors:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    with atomic_write(out_dir / "answers.jsonl") as handle:
        for result in results:
            for answer in result.answers:
                line = {"model": result.model, **answer}
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return out_dir / "metrics.json"
