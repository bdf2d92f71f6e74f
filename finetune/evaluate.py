"""Evaluate a student on a dataset split: generate answers, parse them, score fields."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import CroptuneError
from toolkit.metrics import FieldScores, score_answers

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Scores, raw answers and timing of one model on one split."""

    model: str
    split: str
    scores: FieldScores
    seconds: float
    answers: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready metrics (no answers)."""
        n = self.scores.examples
        return {
            "model": self.model,
            "split": self.split,
            **self.scores.as_dict(),
            "seconds": round(self.seconds, 3),
            "seconds_per_example": round(self.seconds / n, 4) if n else None,
            "examples_per_second": round(n / self.seconds, 4) if self.seconds else None,
        }


def parse_answer(text: str) -> tuple[Any, bool]:
    """(parsed object or None, whether it was valid JSON once a code fence is removed).

    Invalid answers are repaired where safe (truncation), but then count as invalid.
    """
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.strip("`").removeprefix("json").strip()
    try:
        return json.loads(stripped), True
    except json.JSONDecodeError:
        pass
    from json_repair import repair_json

    try:
        value = repair_json(stripped, return_objects=True)
    except Exception:  # json_repair raises assorted errors on pathological input
        return None, False
    return (value if isinstance(value, dict) else None), False


def evaluate_model(
    model: str,
    dataset_dir: Path,
    split: str = "test",
    adapter: Path | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 4,
    limit: int | None = None,
) -> EvaluationResult:
    """Generate with a student (base, or base + adapter) on a split and score its answers."""
    from datasets import load_from_disk

    from finetune.infer import generate_answers, load_student

    dataset = load_from_disk(str(dataset_dir))
    if split not in dataset:
        raise CroptuneError(f"dataset {dataset_dir} has no split {split!r}; it has {list(dataset)}")
    rows = dataset[split]
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    if len(rows) == 0:
        raise CroptuneError(f"split {split!r} of {dataset_dir} is empty")
    student, processor = load_student(model, adapter)
    examples = [(row["images"], row["prompt"]) for row in rows]
    started = time.perf_counter()
    texts = generate_answers(student, processor, examples, max_new_tokens, batch_size)
    seconds = time.perf_counter() - started
    references = [json.loads(row["completion"][0]["content"][0]["text"]) for row in rows]
    parsed = [parse_answer(text) for text in texts]
    scores = score_answers([p for p, _ in parsed], references, [ok for _, ok in parsed])
    answers = [
        {"item_id": row["item_id"], "answer": text, "parsed": value, "reference": ref}
        for row, text, (value, _), ref in zip(rows, texts, parsed, references, strict=True)
    ]
    name = str(adapter) if adapter else model
    return EvaluationResult(
        model=name, split=split, scores=scores, seconds=seconds, answers=answers
    )


def write_evaluation(results: list[EvaluationResult], out_dir: Path) -> Path:
    """metrics.json, a markdown comparison table and per-item answers in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(
        json.dumps([r.as_dict() for r in results], indent=2, ensure_ascii=False)
    )
    lines = [
        "| model | split | examples | JSON valid | precision | recall | F1 | s/example |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        d = r.as_dict()
        micro = d["micro"]
        lines.append(
            f"| {r.model} | {r.split} | {d['examples']} | {d['json_valid_rate']:.2f} | "
            f"{micro['precision']:.3f} | {micro['recall']:.3f} | {micro['f1']:.3f} | "
            f"{d['seconds_per_example']} |"
        )
    (out_dir / "metrics.md").write_text("\n".join(lines) + "\n")
    with (out_dir / "answers.jsonl").open("w", encoding="utf-8") as handle:
        for r in results:
            for answer in r.answers:
                handle.write(json.dumps({"model": r.model, **answer}, ensure_ascii=False) + "\n")
    return out_dir / "metrics.json"
