"""Score a split's answers: a backend's, answered now, or a teacher's stored labels.

Any answer backend (toolkit.protocols.AnswerBackend: a transformers model in-process, an
OpenAI-compatible endpoint) and any teacher's stored labels are scored the same way, so one
table compares them. Metric definitions: toolkit/metrics.py and docs/evaluation.md.
"""

from __future__ import annotations

import json
import time
from typing import Any

from finetune.evaluate.data import SplitExamples, split_references
from finetune.evaluate.parse import parse_answer
from finetune.evaluate.result import TEACHER, EvaluationResult, item_errors
from toolkit.answers import GeneratedAnswer
from toolkit.errors import CroptuneError
from toolkit.metrics import score_answers
from toolkit.protocols import AnswerBackend


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
    result.errors = item_errors(result, schema)
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
    result.errors = item_errors(result, schema)
    return result
