"""Evaluation speed: examples/s of the tiny student per dataset strategy, and the image tokens behind it.

Setup (not timed): the bundled example catalog (30 items) labeled offline by the reference
teacher, cropped and built into one dataset per strategy (originals, crops, originals+crops),
as bench/train_overhead.py does (the steps of `croptune demo`).

Timed: croptune's evaluation entry point (finetune.evaluate.evaluate_backend with the
in-process TransformersBackend, batched greedy generation) on the same rows per strategy. All
splits' rows are used, so each strategy answers the same items (a 30-item test split is too
small to time). Two budgets, because the random tiny student never stops by itself:

- prefill: max_new_tokens=1, i.e. the cost of reading the images and the prompt;
- generate: max_new_tokens=64, a short answer's worth of decoding on top.

Strategies are interleaved (originals, crops, originals+crops, originals, ...) after one untimed
warm-up each; the median of the repeats is reported, with the ratio to originals.

    python bench/eval_speed.py                  # ~2-4 minutes on 2 cores
    python bench/eval_speed.py --repeats 5 --batch-size 8
    python bench/eval_speed.py --workdir /tmp/esb   # keeps (and reuses) the built datasets
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from train_overhead import STRATEGIES, build_datasets, sandbox, token_stats  # noqa: E402

BUDGETS = {"prefill": 1, "generate": 64}


def all_rows(dataset: Path) -> Any:
    """Every row of every split of a dataset folder, as one Dataset."""
    from datasets import concatenate_datasets, load_from_disk

    splits = load_from_disk(str(dataset))
    return concatenate_datasets([splits[name] for name in splits])


def strategy_setup(
    workdir: Path | None, prefix: str
) -> tuple[Path, dict[str, Any], dict[str, dict[str, list[int]]]]:
    """A sandboxed, quiet work folder (a new temporary one unless given) and each strategy's
    dataset in it: (workdir, all rows per strategy, token stats per strategy)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    sandbox(workdir)
    logging.disable(logging.WARNING)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, workdir {workdir}")
    folders = build_datasets(workdir)
    rows = {strategy: all_rows(folder) for strategy, folder in folders.items()}
    tokens = {strategy: token_stats(folder) for strategy, folder in folders.items()}
    return workdir, rows, tokens


def time_strategy(rows: Any, max_new_tokens: int, batch_size: int) -> dict[str, float]:
    """One timed pass of croptune's evaluation over the rows: examples/s and s/example."""
    from finetune.evaluate import evaluate_backend
    from finetune.infer import TransformersBackend

    backend = TransformersBackend(
        "croptune:tiny", batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    backend.prepare()  # loading is not answering time (evaluate_backend says the same)
    started = time.perf_counter()
    result = evaluate_backend(backend, rows, split="all")
    seconds = time.perf_counter() - started
    backend.close()
    gc.collect()
    return {
        "examples_per_s": len(rows) / seconds,
        "seconds": seconds,
        "f1": result.scores.as_dict()["micro"]["f1"],
    }


def main() -> None:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    settings = parser.parse_args()

    workdir, rows, tokens = strategy_setup(settings.workdir, "croptune-eval-speed-")

    # Timing
    timings: dict[tuple[str, str], list[dict[str, float]]] = {}
    for budget, max_new in BUDGETS.items():
        for strategy in STRATEGIES:  # warm-up, untimed
            time_strategy(rows[strategy].select(range(4)), max_new, settings.batch_size)
        for _ in range(settings.repeats):
            for strategy in STRATEGIES:
                run = time_strategy(rows[strategy], max_new, settings.batch_size)
                timings.setdefault((budget, strategy), []).append(run)

    # Report
    print(
        f"\nrows per strategy: {len(rows['originals'])} (all splits), batch {settings.batch_size}"
    )
    print(
        "\n| strategy | images/example | image tokens/example | prompt tokens/example "
        "| prefill examples/s | vs originals | generate-64 examples/s | vs originals |"
    )
    print("|---|---|---|---|---|---|---|---|")
    base = {
        budget: statistics.median(r["examples_per_s"] for r in timings[(budget, "originals")])
        for budget in BUDGETS
    }
    for strategy in STRATEGIES:
        stats = tokens[strategy]
        speeds = {
            budget: statistics.median(r["examples_per_s"] for r in timings[(budget, strategy)])
            for budget in BUDGETS
        }
        print(
            f"| {strategy} | {statistics.mean(stats['images']):.1f} "
            f"| {statistics.mean(stats['image']):.0f} | {statistics.mean(stats['prompt']):.0f} "
            f"| {speeds['prefill']:.2f} | {speeds['prefill'] / base['prefill']:.2f}x "
            f"| {speeds['generate']:.2f} | {speeds['generate'] / base['generate']:.2f}x |"
        )
    spreads = [
        (max(s) - min(s)) / statistics.median(s)
        for runs in timings.values()
        for s in [[r["examples_per_s"] for r in runs]]
    ]
    print(f"\nlargest spread over repeats, (max-min)/median: {max(spreads):.2f}")


if __name__ == "__main__":
    main()
