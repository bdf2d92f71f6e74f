"""The comparison of evaluated rows: table, markdown and the files of an evaluation folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.evaluate.predictions import coverage_text
from finetune.evaluate.result import EvaluationResult
from toolkit.files import atomic_write

# The paper's groups, in its order; other groups of a custom schema follow alphabetically.
GROUP_ORDER = ("identifiers", "attributes", "origin_production", "regulatory_safety")
# The judge's buckets (teacher_labeling.judge.BUCKETS), in the paper's order.
JUDGE_ORDER = ("verifiable_correct", "verifiable_incorrect", "unverifiable")
JUDGE_COLUMNS = {
    "verifiable_correct": "judge: correct",
    "verifiable_incorrect": "judge: incorrect",
    "unverifiable": "judge: unverifiable",
}


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
