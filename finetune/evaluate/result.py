"""One evaluated row (EvaluationResult): its scores, per-item answers and errors, and timing."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from toolkit.metrics import FieldScores, field_errors

# Row kinds in metrics.json: who answered (PREDICTIONS: a `croptune predict` output file).
TRANSFORMERS, ENDPOINT, TEACHER = "transformers", "endpoint", "teacher"
PREDICTIONS = "predictions"


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


def item_errors(result: EvaluationResult, schema: Any) -> list[dict[str, Any]]:
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
