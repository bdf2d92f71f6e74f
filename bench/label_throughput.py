"""Labeling throughput: croptune's label stage vs a bare AsyncOpenAI loop vs a naive sequential loop.

A loopback OpenAI-compatible server (its own process) answers every request after a fixed
latency. Every request carries a real-size photo (a distinct 1600x1200 JPEG on disk),
resized for a Qwen2.5-VL boxes teacher as in production. All clients do the same
per-request work (read, orient, resize, encode, send); croptune also checks its cache,
limits its rate, parses and stores every answer. Measured side by side in one run, per
concurrency: the bare loop, croptune as it ran before the image pool ("before": decoding
in threads, no items decoded ahead, JPEGs decoded at full scale) and croptune with its
defaults ("after": worker processes, items decoded ahead of the request slots, JPEG draft
decoding where the sent size allows), as requests/s, as a fraction of the bound
(concurrency / latency) and as ratios.

    python bench/label_throughput.py                          # 1, 8, 32; sent at ~1 MP
    python bench/label_throughput.py --max-pixels 401408      # sent at ~0.4 MP: draft 1/2
    python bench/label_throughput.py --requests 200 --concurrency 8 32
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import shutil
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
from teacher_labeling.image_pool import ImagePool  # noqa: E402
from teacher_labeling.labeling import label_items  # noqa: E402
from teacher_labeling.teachers import OpenAITeacher, TeacherConfig  # noqa: E402
from toolkit.catalog import ingest_catalog, load_catalog  # noqa: E402
from toolkit.images import encode_jpeg  # noqa: E402
from toolkit.schema import load_schema  # noqa: E402
from toolkit.store import RunStore  # noqa: E402

PROMPT = "Locate every region with printed text. Answer a JSON list of boxes."
# A production-like Qwen limit (1280 * 28 * 28): 1600x1200 photos are sent at 1148x840. That
# is more than half the photo's sides, so JPEG draft decoding cannot help; --max-pixels
# 401408 (512 * 28 * 28) sends them at 728x546, decoded at 1/2 scale.
MAX_PIXELS = 1_003_520


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
def payload(path: Path, max_pixels: int) -> list[dict]:
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    size = sent_size("qwen2.5-vl", *image.size, 3136, max_pixels)
    data = encode_jpeg(image.resize(size, Image.Resampling.BICUBIC), 90)
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": PROMPT}]}]  # fmt: skip


# Clients
def naive_sequential(base_url: str, paths: list[Path], max_pixels: int) -> float:
    """How autodistill-style labelers work: one request after another."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="x", max_retries=0)
    started = time.perf_counter()
    for path in paths:
        messages = payload(path, max_pixels)
        client.chat.completions.create(model="m", messages=messages, max_tokens=64)
    return time.perf_counter() - started


def bare_async(base_url: str, paths: list[Path], concurrency: int, max_pixels: int) -> float:
    """asyncio + AsyncOpenAI + a semaphore: what one writes by hand."""
    from openai import AsyncOpenAI

    async def run() -> float:
        client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        slots = asyncio.Semaphore(concurrency)

        async def one(path: Path) -> None:
            async with slots:
                messages = await asyncio.to_thread(payload, path, max_pixels)
                await client.chat.completions.create(model="m", messages=messages, max_tokens=64)

        started = time.perf_counter()
        await asyncio.gather(*(one(p) for p in paths))
        elapsed = time.perf_counter() - started
        await client.close()
        return elapsed

    return asyncio.run(run())


def ingested(paths: list[Path], workdir: Path) -> Path:
    """A run folder with the photos ingested (copied for each timed run: ingest is not timed)."""
    catalog = workdir / "catalog.jsonl"
    catalog.write_text(
        "".join(f'{{"item_id": "I{i}", "images": ["{p}"]}}\n' for i, p in enumerate(paths))
    )
    run = workdir / "ingested"
    with RunStore(run) as store:
        ingest_catalog(load_catalog(catalog, allow_outside=True), store)
    return run


def croptune_engine(
    base_url: str,
    template: Path,
    n: int,
    concurrency: int,
    max_pixels: int,
    images: ImagePool | None,
    workdir: Path,
) -> tuple[float, int, int]:
    """croptune's label stage on the first n items (images: None = its defaults): seconds,
    images encoded, photo jobs that ran in worker processes."""
    run = workdir / f"run-{concurrency}-{time.monotonic_ns()}"
    shutil.copytree(template, run)
    store = RunStore(run)
    config = TeacherConfig(
        name="qwen", role="boxes", base_url=base_url, model="m", coords="qwen2.5-vl",
        max_pixels=max_pixels, max_concurrency=concurrency, requests_per_minute=1_000_000,
        tokens_per_minute=1_000_000_000,  # limits off: this measures the engine, not a quota
        max_tokens=64,
    )  # fmt: skip
    teacher = OpenAITeacher(config, load_schema())
    teacher._encoded = EncodedImages()  # a cold cache per run: earlier runs sent the same photos
    pool = images if images is not None else ImagePool()  # the defaults, start-up included
    started = time.perf_counter()
    summary = label_items(store, [teacher], limit=n, images=pool)
    elapsed = time.perf_counter() - started
    pool.close()
    assert summary.asked == n and summary.failed == 0, summary
    store.close()
    shutil.rmtree(run)
    return elapsed, teacher._encoded.encoded, pool.in_processes


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (the image workers,
    reaped when a run closes its pool; not the server, which runs until the end)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=500, help="at most, per client and concurrency"
    )
    parser.add_argument(
        "--per-slot",
        type=int,
        default=40,
        help="requests per request slot (concurrency 1: 40, 8: 320), up to --requests",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS)
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of each client per concurrency, in alternating order (best kept)",
    )
    args = parser.parse_args()  # fmt: skip
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    workdir = Path(tempfile.mkdtemp(prefix="croptune-bench-"))
    paths = make_photos(workdir / "photos", args.requests)
    template = ingested(paths, workdir)
    server, base_url = start_server(args.latency_ms)
    latency = args.latency_ms / 1000
    max_pixels = args.max_pixels
    extra: dict[str, tuple[int, int]] = {}  # after: (images encoded, jobs in worker processes)

    def croptune(n: int, concurrency: int, images: ImagePool | None) -> None:
        _, encoded, in_processes = croptune_engine(
            base_url, template, n, concurrency, max_pixels, images, workdir
        )
        if images is None:
            extra[f"{concurrency}"] = (encoded, in_processes)

    clients = {
        "bare": lambda n, c: bare_async(base_url, paths[:n], c, max_pixels),
        # As labeling ran before the image pool: threads, no items ahead, full-scale decoding.
        "before": lambda n, c: croptune(n, c, ImagePool(workers=0, draft=False, ahead=0)),
        "after": lambda n, c: croptune(n, c, None),  # the defaults, pool start-up included
    }
    try:
        rows = []
        sequential_n = min(args.requests, args.per_slot)
        sequential = naive_sequential(base_url, paths[:sequential_n], max_pixels)
        for concurrency in args.concurrency:
            n = min(args.requests, args.per_slot * concurrency)
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
            for repeat in range(args.repeats):
                # bare, before, after, then after, before, bare: drift in the machine's load
                # (other jobs) falls on every client alike
                for name in list(clients)[:: 1 if repeat % 2 == 0 else -1]:
                    wall, cpu = time.perf_counter(), cpu_seconds()
                    clients[name](n, concurrency)
                    runs[name].append((time.perf_counter() - wall, cpu_seconds() - cpu))
            rows.append((concurrency, n, {name: min(r) for name, r in runs.items()}))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    sent = sent_size("qwen2.5-vl", 1600, 1200, 3136, max_pixels)
    print(
        f"1600x1200 photos sent at {sent[0]}x{sent[1]} (max_pixels {max_pixels:,}), server "
        f"latency {args.latency_ms} ms, {os.cpu_count()} cores, {ImagePool().workers} image "
        f"workers by default, best of {args.repeats} runs per client"
    )
    print(
        f"naive sequential loop: {sequential_n / sequential:.1f} req/s "
        f"({sequential_n / sequential * latency:.2f} of the concurrency-1 bound)"
    )
    print(
        "concurrency | requests | bound req/s | bare req/s | before req/s | after req/s | "
        "bare/bound | before/bound | after/bound | before/bare | after/bare | after/before | "
        "CPU ms/request bare, before, after | encoded | jobs in processes"
    )
    for concurrency, n, best in rows:
        bound = concurrency / latency
        (bare, bare_cpu), (old, old_cpu), (new, new_cpu) = (
            best["bare"],
            best["before"],
            best["after"],
        )
        encoded, in_processes = extra[f"{concurrency}"]
        print(
            f"{concurrency:11d} | {n:8d} | {bound:11.1f} | {n / bare:10.1f} | {n / old:12.1f} | "
            f"{n / new:11.1f} | {n / bare / bound:10.2f} | {n / old / bound:12.2f} | "
            f"{n / new / bound:11.2f} | {bare / old:11.2f} | {bare / new:10.2f} | "
            f"{old / new:12.2f} | {1000 * bare_cpu / n:6.1f} {1000 * old_cpu / n:6.1f} "
            f"{1000 * new_cpu / n:6.1f} | {encoded:4d} of {n} | {in_processes:4d}"
        )  # fmt: skip


if __name__ == "__main__":
    main()
