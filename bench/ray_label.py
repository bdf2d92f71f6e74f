"""Labeling on Ray vs croptune's single-process engine, on one machine, side by side.

The same loopback teacher (its own process, a fixed latency per request) answers both; every
request carries a real-size photo (a distinct 1600x1200 JPEG), resized for a Qwen2.5-VL boxes
teacher as in production. Measured in one run, alternating:

- single: `label_items`, this process's async engine (max_concurrency C);
- ray: `label_on_ray` on a local Ray with --ray-cpus CPUs: request files, image preparation
  as Ray tasks, HTTP actors (replicas x C/replicas in flight), answer shards imported by the
  driver. Timed with the Ray already running (as on a cluster) and, once, with `ray.init`.

    python bench/ray_label.py                            # 600 requests, C 8, 2 Ray CPUs
    python bench/ray_label.py --requests 2000 --replicas 2
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

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


def timed_run(template: Path, workdir: Path, n: int, label: object) -> float:
    """Seconds one engine takes to label the template's first n items (a fresh copy)."""
    run = workdir / f"run-{time.monotonic_ns()}"
    shutil.copytree(template, run)
    with RunStore(run) as store:
        started = time.perf_counter()
        summary = label(store)  # type: ignore[operator]
        elapsed = time.perf_counter() - started
    assert summary.asked == n and summary.failed == 0, summary
    shutil.rmtree(run)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight, in all")
    parser.add_argument("--replicas", type=int, default=1, help="Ray HTTP actors")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each engine (best kept)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    # Data
    workdir = Path(tempfile.mkdtemp(prefix="croptune-bench-ray-"))
    paths = make_photos(workdir / "photos", args.requests)
    template = ingested(paths, workdir)
    server, base_url = start_server(args.latency_ms)
    n, per_replica = args.requests, max(1, args.concurrency // args.replicas)
    config = RayConfig(
        num_cpus=args.ray_cpus,
        replicas=args.replicas,
        batch_size=args.batch_size,
        rows_per_shard=64,
        poll_s=0.5,
    )

    def single(store: RunStore) -> object:
        return label_items(store, [teacher(base_url, args.concurrency)], limit=n)

    def on_ray(store: RunStore) -> object:
        return label_on_ray(store, [teacher(base_url, per_replica)], config, limit=n)

    try:
        cold = timed_run(template, workdir, n, on_ray)  # starts (and stops) its own Ray
        ray.init(
            num_cpus=args.ray_cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        times: dict[str, list[float]] = {"single": [], "ray": []}
        for repeat in range(args.repeats):
            order = ["single", "ray"] if repeat % 2 == 0 else ["ray", "single"]
            for name in order:
                times[name].append(
                    timed_run(template, workdir, n, single if name == "single" else on_ray)
                )
        ray.shutdown()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    best = {name: min(t) for name, t in times.items()}
    bound = args.concurrency / (args.latency_ms / 1000)
    print(
        f"{n} requests (1600x1200 JPEGs, Qwen max_pixels {MAX_PIXELS:,}), latency "
        f"{args.latency_ms} ms, {args.concurrency} in flight (ray: {args.replicas} actor(s) x "
        f"{per_replica}), {args.ray_cpus} Ray CPUs, batch {args.batch_size}, {os.cpu_count()} "
        f"cores, best of {args.repeats}"
    )
    print("engine | seconds | req/s | of bound | vs single")
    for name, seconds in (
        ("single-process", best["single"]),
        ("ray (running)", best["ray"]),
        ("ray (with ray.init)", cold),
    ):
        print(
            f"{name} | {seconds:.1f} | {n / seconds:.1f} | {n / seconds / bound:.2f} | "
            f"{best['single'] / seconds:.2f}x"
        )


if __name__ == "__main__":
    main()
