"""Serving speed: the tiny student served by a real vLLM (CPU build) vs in-process transformers.

Setup (not timed): the bundled example catalog (30 items) labeled offline by the reference
teacher, cropped and built into one dataset per strategy (originals, crops, originals+crops),
as bench/eval_speed.py does; a LoRA adapter (rank 8, random non-zero weights) on the tiny
Gemma 3; one vLLM server from .venv-vllm (`make vllm-env`) serving base + adapter as a bundle's
card says (`--enable-lora --lora-modules student=... --dtype float32`, no --enforce-eager).

Timed: croptune's evaluation entry point (finetune.evaluate.evaluate_backend) on all 30 rows
of each strategy, with
- transformers: TransformersBackend(base, adapter), batched greedy generation, batch 4, fp32;
- vllm: EndpointBackend on the server (PNG images, as predict sends them), 4 requests in
  flight, no answer cache.
Two budgets (the random student never stops by itself): prefill (1 new token) and generate-64.
Backends and strategies interleaved after an untimed warm-up; the median of the repeats.
Latency per example: the request's seconds (vllm) or its batch's seconds / batch size.
Image tokens per example as vLLM counts them: usage.prompt_tokens minus the same prompt's
tokens without its images, asked once per row (untimed).

    python bench/serve_vllm.py                  # ~5 minutes on 2 cores
    python bench/serve_vllm.py --repeats 3 --workdir /tmp/sv   # keeps the datasets
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from eval_speed import BUDGETS, strategy_setup  # noqa: E402
from train_overhead import STRATEGIES  # noqa: E402

BACKENDS = ("transformers", "vllm")
LORA_NAME = "student"
CONCURRENCY = 4


def make_adapter(folder: Path) -> Path:
    """A rank-8 LoRA on the tiny Gemma 3's language model, random non-zero weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from finetune.students import resolve_student
    from finetune.students.lora import LORA_TARGETS

    if (folder / "adapter_config.json").is_file():
        return folder
    torch.manual_seed(0)
    base = AutoModelForImageTextToText.from_pretrained(resolve_student("croptune:tiny"))
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=LORA_TARGETS["gemma3"]["language"].modules,
        init_lora_weights=False,
    )
    get_peft_model(base, config).save_pretrained(str(folder))
    return folder


def backend(kind: str, adapter: Path, base_url: str, max_new_tokens: int) -> Any:
    """croptune's answer backend of one kind."""
    if kind == "transformers":
        from finetune.infer import TransformersBackend

        return TransformersBackend(
            "croptune:tiny", adapter, batch_size=4, max_new_tokens=max_new_tokens
        )
    from teacher_labeling.endpoint import EndpointBackend, EndpointConfig

    config = EndpointConfig(
        model=LORA_NAME, base_url=base_url, max_concurrency=CONCURRENCY, timeout_s=300
    )
    return EndpointBackend(config, None, max_new_tokens)


def time_pass(kind: str, rows: Any, adapter: Path, base_url: str, max_new: int) -> dict[str, Any]:
    """One timed pass over the rows: examples/s and the per-example latencies."""
    from finetune.evaluate import evaluate_backend

    answerer = backend(kind, adapter, base_url, max_new)
    answerer.prepare()  # loading weights / checking the server is not answering time
    started = time.perf_counter()
    result = evaluate_backend(answerer, rows, split="all")
    seconds = time.perf_counter() - started
    answerer.close()
    latencies = [a["seconds"] for a in result.answers if a.get("seconds") is not None]
    return {"examples_per_s": len(rows) / seconds, "latencies": latencies}


def vllm_image_tokens(rows: Any, base_url: str) -> list[int]:
    """Per row: prompt tokens vLLM counts with the images minus without them."""
    import openai

    from teacher_labeling.endpoint import EndpointBackend, EndpointConfig

    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
    sender = EndpointBackend(EndpointConfig(model=LORA_NAME, base_url=base_url))
    counts = []
    for row in rows:
        images, messages = row["images"], row["prompt"]
        sent = sender.messages(sender.request(list(images), messages), messages)
        text_only = [
            {"role": m["role"], "content": [p for p in m["content"] if p["type"] == "text"]}
            for m in sent
        ]
        usage = [
            client.chat.completions.create(
                model=LORA_NAME, messages=m, max_tokens=1, temperature=0
            ).usage.prompt_tokens
            for m in (sent, text_only)
        ]
        counts.append(usage[0] - usage[1])
    return counts


def main() -> None:
    """Run the benchmark and print its tables."""
    from tests.vllm_server import VLLMServer, vllm_executable, vllm_missing

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    settings = parser.parse_args()
    if vllm_executable() is None:
        sys.exit(vllm_missing())

    from finetune.students import resolve_student

    workdir, rows, tokens = strategy_setup(settings.workdir, "croptune-serve-vllm-")
    adapter = make_adapter(workdir / "adapter")
    args = [
        "serve",
        resolve_student("croptune:tiny"),
        "--served-model-name",
        "croptune:tiny",
        "--enable-lora",
        "--lora-modules",
        f"{LORA_NAME}={adapter}",
        "--max-lora-rank",
        "8",
        "--limit-mm-per-prompt",
        '{"image": 9}',
        "--max-model-len",
        "4096",
        "--dtype",
        "float32",
    ]
    server = VLLMServer(args, cwd=workdir, log=workdir / "vllm.log", sandbox=workdir)
    started = time.perf_counter()
    server.start()
    print(f"vLLM answered /v1/models after {time.perf_counter() - started:.0f} s")
    try:
        image_tokens = {s: vllm_image_tokens(rows[s], server.base_url) for s in STRATEGIES}
        timings: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for budget, max_new in BUDGETS.items():
            for strategy in STRATEGIES:  # warm-up, untimed
                for kind in BACKENDS:
                    time_pass(
                        kind, rows[strategy].select(range(4)), adapter, server.base_url, max_new
                    )
            for _ in range(settings.repeats):
                for strategy in STRATEGIES:
                    for kind in BACKENDS:
                        run = time_pass(kind, rows[strategy], adapter, server.base_url, max_new)
                        timings.setdefault((budget, strategy, kind), []).append(run)
    finally:
        server.stop()

    # Report
    print(
        f"\nrows per strategy: {len(rows['originals'])} (all splits); vllm: {CONCURRENCY} "
        "requests in flight; transformers: batch 4"
    )
    print(
        "\n| strategy | images/example | image tokens/example (processor) "
        "| image tokens/example (vLLM usage) |"
    )
    print("|---|---|---|---|")
    for strategy in STRATEGIES:
        stats = tokens[strategy]
        print(
            f"| {strategy} | {statistics.mean(stats['images']):.1f} "
            f"| {statistics.mean(stats['image']):.0f} "
            f"| {statistics.mean(image_tokens[strategy]):.0f} |"
        )
    print(
        "\n| budget | strategy | transformers examples/s | vllm examples/s | vllm / transformers "
        "| transformers s/example p50 | vllm s/example p50 | vllm p90 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for budget in BUDGETS:
        for strategy in STRATEGIES:
            speed = {
                kind: statistics.median(
                    r["examples_per_s"] for r in timings[(budget, strategy, kind)]
                )
                for kind in BACKENDS
            }
            latency = {
                kind: sorted(x for r in timings[(budget, strategy, kind)] for x in r["latencies"])
                for kind in BACKENDS
            }
            p90 = latency["vllm"][int(0.9 * (len(latency["vllm"]) - 1))]
            print(
                f"| {budget} | {strategy} | {speed['transformers']:.2f} | {speed['vllm']:.2f} "
                f"| {speed['vllm'] / speed['transformers']:.2f}x "
                f"| {statistics.median(latency['transformers']):.3f} "
                f"| {statistics.median(latency['vllm']):.3f} | {p90:.3f} |"
            )
    spreads = [
        (max(s) - min(s)) / statistics.median(s)
        for runs in timings.values()
        for s in [[r["examples_per_s"] for r in runs]]
        if len(s) > 1
    ]
    if spreads:
        print(f"\nlargest spread over repeats, (max-min)/median: {max(spreads):.2f}")


if __name__ == "__main__":
    main()
