"""`label --engine ray`: the driver. It keys the pending requests, hands them to Ray Data and
imports the answer shards the workers write, as they land.

    store -> pending requests (keyed, one per question) -> request files (Parquet)
      -> Ray Data: request blocks -> prepare images (CPU tasks) -> model stage -> answer shards
      -> the driver imports each finished shard -> followers and fusion -> LabelSummary

What a single-process run has holds here: the same cache keys (a finished request is never
sent again), one request per question however many items ask it, the same parsers and store
transactions (`shards.import_row` calls labeling's own `_store_answer`), and a crash losing
only the shards not written yet.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

from teacher_labeling.client import encoding_of
from teacher_labeling.cluster.config import RayConfig
from teacher_labeling.cluster.requests import RayRequest, RequestFiles, shown_image
from teacher_labeling.cluster.shards import ShardFolder, import_shards
from teacher_labeling.cost import Price
from teacher_labeling.labeling import (
    LabelSummary,
    UnsentRequest,
    _agreement,
    _fuse_item,
    _LabelRun,
    _pending_requests,
    _store_answer,
    label_items,
    sent_images,
)
from teacher_labeling.teachers import FusionConfig, OpenAITeacher, Teacher
from toolkit.errors import CroptuneError
from toolkit.messages import innermost_message
from toolkit.progress import ProgressBar
from toolkit.ray_data import quiet_ray_data, start_ray
from toolkit.store import ItemRow, RunStore

logger = logging.getLogger(__name__)

SHARDS = "ray-shards"
WRITE_CPUS = 0.1  # per shard-writing task
REQUESTS = "ray-requests"


def label_on_ray(
    store: RunStore,
    teachers: list[Teacher],
    config: RayConfig,
    limit: int | None = None,
    progress: bool = False,
    prices: dict[str, Price] | None = None,
    fusion: FusionConfig | None = None,
    relabel: bool = False,
) -> LabelSummary:
    """Label (or relabel) the store's items on a Ray cluster; finished requests are never asked again.

    Teachers behind an endpoint (kind openai) run on Ray; the reference and local teachers
    answer in this process first, as `label_items` does.
    """
    if relabel:
        teachers = [t for t in teachers if t.does_attributes]
    fusion = fusion or FusionConfig()
    remote: list[Teacher] = [t for t in teachers if isinstance(t, OpenAITeacher)]
    here = [t for t in teachers if not isinstance(t, OpenAITeacher)]
    summary = label_items(store, here, limit, progress, prices, fusion, relabel) if here else None
    off = ProgressBar("", 0, False)
    run = _LabelRun(store, remote, prices or {}, fusion, int(relabel), off)
    if remote:
        folder = ShardFolder(config.shards or str(store.run_dir / SHARDS))
        import_shards(run, folder, relabel)  # what an earlier, interrupted run left
        requests = store.run_dir / REQUESTS
        shutil.rmtree(requests, ignore_errors=True)
        counts = _write_requests(run, limit, relabel, requests, config)
        if sum(counts.values()):
            description = "relabel (ray)" if relabel else "label (ray)"
            with ProgressBar(description, sum(counts.values()), progress, True, "requests") as bar:
                run.bar = bar
                _run_on_ray(run, config, folder, requests, counts, relabel)
            run.bar = off
        _answer_followers(run, limit, relabel)
        shutil.rmtree(requests, ignore_errors=True)
    if summary is not None:
        _merge(run.summary, summary)
    box_teachers = [t for t in teachers if t.does_boxes]
    if not relabel and len(box_teachers) >= 2:
        for item in store.items(limit=limit):
            _fuse_item(run, item, box_teachers)
        run.summary.agreement = _agreement(store, teachers, fusion)
    return run.summary


def _write_requests(
    run: _LabelRun, limit: int | None, relabel: bool, folder: Path, config: RayConfig
) -> dict[str, int]:
    """Write each pending question once, into request files per engine group; rows by group.

    Groups: "http" (every HTTP teacher, one actor pool) and "vllm-<teacher>" (one engine
    processor each). An answer another item already got is stored here, as labeling does.
    """
    seen: set[str] = set()
    files = {g: RequestFiles(folder / g) for g in {_group(t, config) for t in run.teachers}}
    for item in run.store.items(limit=limit):
        run.summary.items += 1
        for p in _pending_requests(run, item, relabel):
            if p.cached is not None:
                _store_answer(run, item, p, p.cached["text"], p.cached["usage"])
            elif p.request.cache_key not in seen:  # else: another item asks it; answered after
                seen.add(p.request.cache_key)
                files[_group(p.teacher, config)].add(_ray_request(run, item, p).row())
    for f in files.values():
        f.close()
    return {group: f.rows for group, f in files.items()}


def _group(teacher: Teacher, config: RayConfig) -> str:
    engine = config.engine_of(teacher.name)
    return "http" if engine == "http" else f"vllm-{teacher.name}"


def _ray_request(run: _LabelRun, item: ItemRow, pending: UnsentRequest) -> RayRequest:
    """A pending request with one image job per image it shows."""
    rows = {r.index: r for r in run.store.images(item.item_id)}
    crops = {c.sha256: c for c in pending.crops}
    encoding = encoding_of(pending.teacher.config)
    shown = []
    for sent in sent_images(pending, rows, encoding):
        if isinstance(sent.source, int):
            source: Any = rows[sent.source]
            shown.append(
                shown_image(source, sent.size, encoding, f"image {sent.source}", sent.source)
            )
        else:
            crop = crops[sent.source]
            path = str(run.store.run_dir / crop.path)
            shown.append(shown_image(path, sent.size, encoding, f"crop {crop.path}", crop.image))
    return RayRequest(pending.request, shown, item)


def _run_on_ray(
    run: _LabelRun,
    config: RayConfig,
    folder: ShardFolder,
    requests: Path,
    counts: dict[str, int],
    relabel: bool,
) -> None:
    """Run each engine group's pipeline on Ray, importing shards as they land."""
    import ray

    started = start_ray(config.address, config.num_cpus)
    quiet_ray_data()  # (a Ray this process joined before, too)
    try:
        _check_worker_keys(run)
        for group, count in sorted(counts.items()):
            if count:
                _run_group(run, config, folder, requests / group, group, relabel)
    finally:
        if started:
            ray.shutdown()


def _run_group(
    run: _LabelRun,
    config: RayConfig,
    folder: ShardFolder,
    requests: Path,
    group: str,
    relabel: bool,
) -> None:
    """One group's Ray Data pipeline, written in a thread while this one imports its shards."""
    from teacher_labeling.cluster.pipeline import answer_dataset

    teachers = [t for t in run.teachers if _group(t, config) == group]
    dataset = answer_dataset(requests, teachers, config, group)
    failure: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            dataset.write_parquet(
                folder.url,
                min_rows_per_file=config.rows_per_shard,
                # A write is light: a CPU apiece would queue answers behind image preparation
                ray_remote_args={"num_cpus": WRITE_CPUS},
            )
        except BaseException as exc:  # handed to the driver's thread below
            failure.append(exc)
        finally:
            done.set()

    writer = threading.Thread(target=write, name=f"ray-{group}", daemon=True)
    writer.start()
    while not done.wait(config.poll_s):
        import_shards(run, folder, relabel)
    writer.join()
    import_shards(run, folder, relabel, final=True)
    if failure:
        raise CroptuneError(
            f"the Ray run of {group} failed: {innermost_message(failure[0])}"
        ) from failure[0]


def _check_worker_keys(run: _LabelRun) -> None:
    """Fail before any request when a Ray worker lacks a teacher's key variable.

    One worker is asked; every HTTP actor checks its own environment again as it starts.
    """
    import ray

    from teacher_labeling.cluster.stages import check_keys

    configs = [t.config for t in run.teachers if t.config.api_key_env]
    if not configs:
        return
    try:
        ray.get(ray.remote(num_cpus=0)(check_keys).remote(configs))
    except CroptuneError as exc:  # Ray's task error subclasses the worker's exception
        raise CroptuneError(innermost_message(exc)) from None


def _answer_followers(run: _LabelRun, limit: int | None, relabel: bool) -> None:
    """Items asking a question another item asked store its answer (as they would in-process)."""
    for item in run.store.items(limit=limit):
        for p in _pending_requests(run, item, relabel, count=False):
            if p.cached is not None:
                run.summary.cached += 1
                _store_answer(run, item, p, p.cached["text"], p.cached["usage"])


def _merge(into: LabelSummary, other: LabelSummary) -> None:
    """Add another run's counts (the in-process teachers') to a summary."""
    into.items = max(into.items, other.items)
    for name in ("asked", "cached", "failed", "labels", "boxes"):
        setattr(into, name, getattr(into, name) + getattr(other, name))
    into.errors += other.errors
    for cause, items in other.failures.items():
        into.failures.setdefault(cause, []).extend(items)
    for cause, items in other.warnings.items():
        into.warnings.setdefault(cause, []).extend(items)
    into.stopped.update(other.stopped)
    into.spend.update(other.spend)
    into.replicas.update(other.replicas)
