"""Labeling on Ray vs croptune's single-process engine, on one machine, side by side.

The same loopback teacher (its own process, a fixed latency per request) answers both; every
request carries a real-size photo (a distinct 1600x1200 JPEG), resized for a Qwen2.5-VL boxes
teacher as in production. Measured in one run, alternating, at two sizes (their difference
gives each engine's rate without its fixed cost: Ray's job start, actors, the last shard):

- single: `label_items`, this process's async engine (max_concurrency C);
- ray: `label_on_ray` on a local Ray with --ray-cpus CPUs: request files, image preparation
  as Ray tasks, HTTP actors (replicas x C/replicas in flight), answer shards imported by the
  driver. Timed with the Ray already running (as on a cluster) and, once, with `ray.init`.

    python bench/ray_label.py                            # 200 and 800 requests, C 8, 2 CPUs
    python bench/ray_label.py --requests 500 2000 --replicas 2
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from label_throughput import MAX_PIXELS, ingested, make_photos, start_server  # noqa: E402

from teacher_labeling.cluster.config import RayConfig  # noqa: E402
from teacher_labeling.cluster.run import label_on_ray  # noqa: E402
from teacher_labeling.labeling import label_items  # noqa: E402
from teacher_labeling.teachers import OpenAITeacher, TeacherConfig  # noqa: E402
from toolkit.schema import load_schema  # noqa: E402
from toolkit.store import RunStore  # noqa: E402


def teacher(base_url: str, concurrency: int) -> OpenAITeacher:
    """The boxes teacher both engines ask (rate limits off: this measures the engines)."""
    config = TeacherConfig(
        name="qwen", role="boxes", base_url=base_url, model="m", coords="qwen2.5-vl",
        max_pixels=MAX_PIXELS, max_concurrency=concurrency, requests_per_minute=1_000_000,
        tokens_per_minute=1_000_000_000, max_tokens=64,
    )  # fmt: skip
    return OpenAITeacher(config, load_schema())


def timed_run(template: Path, workdir: Path, n: int, label: Callable[[RunStore], object]) -> float:
    """Seconds one engine takes to label the template's first n items (a fresh copy)."""
    run = workdir / f"run-{time.monotonic_ns()}"
    shutil.copytree(template, run)
    with RunStore(run) as store:
        started = time.perf_counter()
        summary: Any = label(store)
        elapsed = time.perf_counter() - started
    assert summary.asked == n and summary.failed == 0, summary
    shutil.rmtree(run)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=int,
        nargs=2,
        default=[200, 800],
        help="two run sizes: their difference gives each engine's rate without its fixed cost",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight, in all")
    parser.add_argument("--replicas", type=int, default=1, help="Ray HTTP actors")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=RayConfig().batch_size)
    parser.add_argument("--prepare-cpus", type=float, default=RayConfig().prepare_cpus)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each engine (best kept)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    # Data
    small, large = sorted(args.requests)
    workdir = Path(tempfile.mkdtemp(prefix="croptune-bench-ray-"))
    paths = make_photos(workdir / "photos", large)
    template = ingested(paths, workdir)
    server, base_url = start_server(args.latency_ms)
    per_replica = max(1, args.concurrency // args.replicas)
    config = RayConfig(
        num_cpus=args.ray_cpus,
        replicas=args.replicas,
        batch_size=args.batch_size,
        prepare_cpus=args.prepare_cpus,
        rows_per_shard=64,
        poll_s=0.5,
    )

    def single(n: int) -> Callable[[RunStore], object]:
        return lambda store: label_items(store, [teacher(base_url, args.concurrency)], limit=n)

    def on_ray(n: int) -> Callable[[RunStore], object]:
        return lambda store: label_on_ray(store, [teacher(base_url, per_replica)], config, limit=n)

    engines = {"single": single, "ray": on_ray}
    try:
        cold = timed_run(template, workdir, small, on_ray(small))  # starts and stops its Ray
        ray.init(
            num_cpus=args.ray_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        times: dict[tuple[str, int], list[float]] = {}
        for repeat in range(args.repeats):
            # single, ray, then ray, single: drift in the machine's load falls on both alike
            for name in list(engines)[:: 1 if repeat % 2 == 0 else -1]:
                for n in (small, large):
                    seconds = timed_run(template, workdir, n, engines[name](n))
                    times.setdefault((name, n), []).append(seconds)
        ray.shutdown()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    best = {key: min(t) for key, t in times.items()}
    bound = args.concurrency / (args.latency_ms / 1000)
    print(
        f"1600x1200 JPEGs (Qwen max_pixels {MAX_PIXELS:,}), latency {args.latency_ms} ms, "
        f"{args.concurrency} in flight (ray: {args.replicas} actor(s) x {per_replica}), "
        f"{args.ray_cpus} Ray CPUs, batch {args.batch_size}, {args.prepare_cpus} CPU per "
        f"preparation task, {os.cpu_count()} cores, best of "
        f"{args.repeats}; bound {bound:.0f} req/s"
    )
    print(
        f"engine | s at {small} | s at {large} | req/s at {large} | vs single | "
        f"marginal req/s ({small}->{large}) | vs single | fixed s"
    )
    rates = {}
    for name in engines:
        t_small, t_large = best[(name, small)], best[(name, large)]
        marginal = (large - small) / (t_large - t_small)
        rates[name] = (large / t_large, marginal)
        fixed = t_small - small / marginal
        print(
            f"{name} | {t_small:.1f} | {t_large:.1f} | {large / t_large:.1f} | "
            f"{large / t_large / (large / best[('single', large)]):.2f}x | {marginal:.1f} | "
            f"{marginal / rates['single'][1]:.2f}x | {fixed:.1f}"
        )
    print(f"ray with its own ray.init, {small} requests: {cold:.1f} s")


if __name__ == "__main__":
    main()
