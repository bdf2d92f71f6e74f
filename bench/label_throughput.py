"""Labeling throughput: croptune's engine vs a bare AsyncOpenAI loop vs a naive sequential loop.

A loopback OpenAI-compatible server (its own process) answers every request after a fixed
latency. Every request carries a real-size photo (1600x1200 JPEG on disk), resized for a
Qwen2.5-VL boxes teacher as in production. All three clients do the same per-request work
(read, orient, resize, encode, send); croptune also hashes, checks its cache and writes its
store. Printed side by side in one run, as requests/s and as a fraction of the bound
(concurrency / latency).

    python bench/label_throughput.py                 # 500 requests at 1, 8, 32, 64
    python bench/label_throughput.py --requests 100 --concurrency 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from teacher_labeling.client import EncodedImages  # noqa: E402
from teacher_labeling.conventions import sent_size  # noqa: E402
from teacher_labeling.labeling import label_items  # noqa: E402
from teacher_labeling.teachers import OpenAITeacher, TeacherConfig  # noqa: E402
from toolkit.catalog import ingest_catalog, load_catalog  # noqa: E402
from toolkit.images import encode_jpeg  # noqa: E402
from toolkit.schema import load_schema  # noqa: E402
from toolkit.store import RunStore  # noqa: E402

PROMPT = "Locate every region with printed text. Answer a JSON list of boxes."
MAX_PIXELS = 1_003_520  # a production-like Qwen limit: 1600x1200 photos are sent at ~1.0 MP


# Data
def make_photos(folder: Path, n: int) -> list[Path]:
    """n distinct 1600x1200 product-like JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = rng.integers(0, 255, size=(75, 100, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((1600, 1200), Image.Resampling.BICUBIC)
        ImageDraw.Draw(image).text((40 + i % 900, 40 + i % 700), f"item {i}", fill=(255, 255, 255))
        path = folder / f"{i}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def start_server(latency_ms: int) -> tuple[subprocess.Popen, str]:
    """The loopback server in its own process (so its CPU is not the clients')."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai", "--port", "0", "--latency-ms", str(latency_ms),
         "--script", "fixed-empty-list"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    port = int(process.stdout.readline().split()[1])
    return process, f"http://127.0.0.1:{port}/v1"


# The request every client sends: the photo, oriented, resized like croptune's qwen teacher.
def payload(path: Path) -> list[dict]:
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    size = sent_size("qwen2.5-vl", *image.size, 3136, MAX_PIXELS)
    data = encode_jpeg(image.resize(size, Image.Resampling.BICUBIC), 90)
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": PROMPT}]}]  # fmt: skip


# Clients
def naive_sequential(base_url: str, paths: list[Path]) -> float:
    """How autodistill-style labelers work: one request after another."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="x", max_retries=0)
    started = time.perf_counter()
    for path in paths:
        client.chat.completions.create(model="m", messages=payload(path), max_tokens=64)
    return time.perf_counter() - started


def bare_async(base_url: str, paths: list[Path], concurrency: int) -> float:
    """asyncio + AsyncOpenAI + a semaphore: what one writes by hand."""
    from openai import AsyncOpenAI

    async def run() -> float:
        client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        slots = asyncio.Semaphore(concurrency)

        async def one(path: Path) -> None:
            async with slots:
                messages = await asyncio.to_thread(payload, path)
                await client.chat.completions.create(model="m", messages=messages, max_tokens=64)

        started = time.perf_counter()
        await asyncio.gather(*(one(p) for p in paths))
        elapsed = time.perf_counter() - started
        await client.close()
        return elapsed

    return asyncio.run(run())


def croptune_engine(
    base_url: str, paths: list[Path], concurrency: int, workdir: Path
) -> tuple[float, int]:
    """croptune's label stage (ingest done before timing): cache, limits, retries, store."""
    catalog = workdir / f"catalog-{concurrency}.jsonl"
    catalog.write_text(
        "".join(f'{{"item_id": "I{i}", "images": ["{p}"]}}\n' for i, p in enumerate(paths))
    )
    store = RunStore(workdir / f"run-{concurrency}")
    ingest_catalog(load_catalog(catalog, allow_outside=True), store)
    config = TeacherConfig(
        name="qwen", role="boxes", base_url=base_url, model="m", coords="qwen2.5-vl",
        max_pixels=MAX_PIXELS, max_concurrency=concurrency, requests_per_minute=1_000_000,
        tokens_per_minute=1_000_000_000,  # limits off: this measures the engine, not a quota
        max_tokens=64,
    )  # fmt: skip
    teacher = OpenAITeacher(config, load_schema())
    teacher._encoded = EncodedImages()  # a cold cache per run: earlier runs sent the same photos
    started = time.perf_counter()
    summary = label_items(store, [teacher])
    elapsed = time.perf_counter() - started
    assert summary.asked == len(paths) and summary.failed == 0, summary
    encoded = teacher._encoded.encoded
    store.close()
    return elapsed, encoded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--latency-ms", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    workdir = Path(tempfile.mkdtemp(prefix="croptune-bench-"))
    paths = make_photos(workdir / "photos", args.requests)
    server, base_url = start_server(args.latency_ms)
    latency = args.latency_ms / 1000
    try:
        rows = []
        sequential = naive_sequential(base_url, paths)
        for concurrency in args.concurrency:
            bare = bare_async(base_url, paths, concurrency)
            ours, encoded = croptune_engine(base_url, paths, concurrency, workdir)
            rows.append((concurrency, ours, bare, encoded))
    finally:
        server.terminate()
        server.wait()

    n = args.requests
    print(
        f"{n} requests of a 1600x1200 photo (sent at <= {MAX_PIXELS:,} px), server latency {args.latency_ms} ms, {os.cpu_count()} cores"
    )
    print(
        f"naive sequential loop: {n / sequential:7.1f} req/s ({n / sequential / (1 / latency):.2f} of the concurrency-1 bound)"
    )
    print(
        "concurrency | bound req/s | croptune req/s | bare loop req/s | croptune/bare | croptune/bound | bare/bound | images encoded"
    )
    for concurrency, ours, bare, encoded in rows:
        bound = concurrency / latency
        print(
            f"{concurrency:11d} | {bound:11.1f} | {n / ours:14.1f} | {n / bare:15.1f} | "
            f"{bare / ours:13.2f} | {n / ours / bound:14.2f} | {n / bare / bound:10.2f} | {encoded:5d} of {n}"
        )


if __name__ == "__main__":
    main()
