"""Evaluate models on a dataset split: answer, parse, score fields, time, compare.

result.py EvaluationResult (one row: scores, answers, errors, latency); parse.py an answer's
text as a JSON object; data.py a dataset split (rows, schema, references, examples);
backends.py a backend's answers or a teacher's labels scored on a split; predictions.py
`croptune predict` output files scored against a catalog or run; tables.py the comparison
table and the files written (metrics.json, metrics.md, errors.jsonl, answers.jsonl).
Metric definitions: toolkit/metrics.py and docs/evaluation.md.

Re-exported here, as each has several callers: EvaluationResult, evaluate_backend, load_split.
"""

from finetune.evaluate.backends import evaluate_backend
from finetune.evaluate.data import load_split
from finetune.evaluate.result import EvaluationResult

__all__ = ["EvaluationResult", "evaluate_backend", "load_split"]
