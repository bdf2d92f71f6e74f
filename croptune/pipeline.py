"""Stage orchestration behind the CLI: each stage (label, relabel, crop, dataset, predict,
evaluate) a function over a run folder."""

from __future__ import annotations

import functools
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from croptune.models import open_model
from toolkit.catalog import IngestSummary, ingest_catalog, load_catalog
from toolkit.config import dump_config
from toolkit.crops import CropConfig, CropSummary, crop_run
from toolkit.dataset import DatasetConfig, build_dataset
from toolkit.dataset.build import DatasetSummary
from toolkit.errors import CroptuneError
from toolkit.files import json_lines
from toolkit.schema import AttributeSchema, load_schema
from toolkit.store import RunStore

# How label, relabel and predict run: in this process (async), or on a Ray cluster.
EngineName = Literal["async", "ray"]

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from finetune.evaluate import EvaluationResult
    from finetune.predict import PredictSummary
    from teacher_labeling.judge import JudgeConfig
    from teacher_labeling.labeling import LabelSummary, PendingRequests
    from teacher_labeling.teachers import LabelConfig, Teacher
    from toolkit.protocols import AnswerBackend, BoxSource

logger = logging.getLogger(__name__)


def save_resolved_config(config: BaseModel, path: Path) -> None:
    """Write a stage's resolved config (paths absolute) as YAML next to what it produced."""
    path.write_text(dump_config(config), encoding="utf-8")


def run_schema(store: RunStore) -> AttributeSchema:
    """The attribute schema the run was labeled with."""
    recorded = store.get_meta("schema_json")
    if recorded is None:
        raise CroptuneError(f"run {store.run_dir} has not been labeled yet; run `croptune label`")
    return AttributeSchema.model_validate_json(recorded)


@contextmanager
def _ingested(
    catalog_path: Path,
    config: LabelConfig,
    run_dir: Path,
    limit: int | None,
    progress: bool,
    engine: EngineName = "async",
) -> Iterator[tuple[RunStore, list[Teacher], IngestSummary]]:
    """The run's store with the catalog ingested, and the teachers, checked, that label it."""
    # --dry-run checks too: an estimate for a teacher that cannot answer is no estimate.
    teachers = _teachers(config, engine)
    catalog = load_catalog(
        catalog_path,
        allow_outside=config.allow_outside_paths,
        box_convention=config.box_convention,
        columns=config.columns,
    )
    with RunStore(run_dir) as store:
        store.set_meta("schema_json", load_schema(config.schema_).model_dump_json())
        store.set_meta("catalog", str(catalog_path.resolve()))
        save_resolved_config(config, run_dir / "label_config.yaml")
        yield (
            store,
            teachers,
            ingest_catalog(catalog, store, config.max_image_pixels, limit, progress),
        )


def run_label(
    catalog_path: Path,
    config: LabelConfig,
    run_dir: Path,
    limit: int | None = None,
    progress: bool = False,
    batch: bool = False,
    engine: EngineName = "async",
) -> tuple[IngestSummary, LabelSummary]:
    """Ingest a catalog into the run and label it with the configured teachers.

    engine: async (this process's request engine) or ray (a Ray cluster, `config.ray`).
    """
    from teacher_labeling.labeling import label_items

    with _ingested(catalog_path, config, run_dir, limit, progress, engine) as (
        store,
        teachers,
        ingest,
    ):
        if engine == "ray":
            from teacher_labeling.cluster.run import label_on_ray

            summary = label_on_ray(
                store, teachers, config.ray, limit, progress, config.prices, config.fusion
            )
            return ingest, summary
        if batch:
            from teacher_labeling.batch import label_with_batches

            summary = label_with_batches(
                store, teachers, limit, config.prices, progress, fusion=config.fusion
            )
            return ingest, summary
        summary = label_items(store, teachers, limit, progress, config.prices, config.fusion)
    return ingest, summary


def estimate_label(
    catalog_path: Path,
    config: LabelConfig,
    run_dir: Path,
    limit: int | None = None,
    progress: bool = False,
    engine: EngineName = "async",
) -> tuple[IngestSummary, PendingRequests]:
    """`label --dry-run`: ingest the catalog, then price the requests labeling would send."""
    from teacher_labeling.labeling import pending_requests

    with _ingested(catalog_path, config, run_dir, limit, progress, engine) as (
        store,
        teachers,
        ingest,
    ):
        return ingest, pending_requests(store, teachers, limit, config.prices)


@contextmanager
def _relabeling(
    run_dir: Path, config: LabelConfig, engine: EngineName = "async"
) -> Iterator[tuple[RunStore, list[Teacher]]]:
    """The cropped run's store and its attributes teachers, checked, for relabel."""
    teachers = [t for t in _teachers(config, engine) if t.does_attributes]
    if not teachers:
        raise CroptuneError("relabel needs an attributes teacher (role: attributes) in the config")
    with RunStore(run_dir, create=False) as store:
        if store.get_meta("crop_config_hash") is None:
            raise CroptuneError(
                f"run {run_dir} has no crops yet; run `croptune crop --run {run_dir}`"
            )
        yield store, teachers


def run_relabel(
    run_dir: Path, config: LabelConfig, progress: bool = False, engine: EngineName = "async"
) -> LabelSummary:
    """ "Better labels": the attributes teachers again, on originals + the run's crops."""
    from teacher_labeling.labeling import label_items

    with _relabeling(run_dir, config, engine) as (store, teachers):
        if engine == "ray":
            from teacher_labeling.cluster.run import label_on_ray

            return label_on_ray(
                store, teachers, config.ray, None, progress, config.prices, relabel=True
            )
        return label_items(store, teachers, None, progress, config.prices, relabel=True)


def estimate_relabel(
    run_dir: Path, config: LabelConfig, engine: EngineName = "async"
) -> PendingRequests:
    """`relabel --dry-run`: the requests relabel would send, priced."""
    from teacher_labeling.labeling import pending_requests

    with _relabeling(run_dir, config, engine) as (store, teachers):
        return pending_requests(store, teachers, None, config.prices, relabel=True)


def _teachers(config: LabelConfig, engine: EngineName = "async") -> list[Teacher]:
    """The configured teachers, checked (key, server, model) before any work starts."""
    from teacher_labeling.teachers import build_teacher

    schema = load_schema(config.schema_)
    teachers = [build_teacher(t, schema) for t in config.teachers]
    for teacher in teachers:
        if engine == "ray" and config.ray.engine_of(teacher.name) == "vllm":
            continue  # no endpoint to check: Ray Data runs the teacher's own vLLM engines
        teacher.check_ready()  # Teacher's hook: a no-op for the reference teacher
    return teachers


def run_crop(
    run_dir: Path, config: CropConfig, progress: bool = False, workers: int = 1
) -> CropSummary:
    """Cut the run's crops under a crop config."""
    with RunStore(run_dir, create=False) as store:
        summary = crop_run(store, config, progress, workers)
    save_resolved_config(config, run_dir / "crops" / f"crop_config-{config.config_hash()}.yaml")
    return summary


def run_dataset(
    run_dir: Path,
    out_dir: Path,
    config: DatasetConfig,
    progress: bool = False,
    resplit: bool = False,
    workers: int | None = 1,
) -> DatasetSummary:
    """Build the training dataset of a labeled (and cropped) run (resplit: split it again;
    workers: processes building examples, None: as many as pay off)."""
    with RunStore(run_dir, create=False) as store:
        schema = run_schema(store)
        summary = build_dataset(
            store, out_dir, schema, config, progress=progress, resplit=resplit, workers=workers
        )
    save_resolved_config(config, out_dir / "dataset_config.yaml")
    return summary


EVAL_CACHE_DIR = "cache"  # inside the evaluation folder: endpoint answers (a RunStore)


PREDICT_ANSWERS_DIR = "answers"  # inside predict's work folder: endpoint answers (a RunStore)


def run_predict(
    catalog_path: Path,
    bundle_dir: Path,
    out: Path,
    *,
    workdir: Path | None = None,
    box_source: str | None = None,
    teacher_config: Path | None = None,
    endpoint: str | None = None,
    model: str | None = None,
    api_key_env: str | None = None,
    base_model: str | None = None,
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    limit: int | None = None,
    allow_outside: bool = False,
    columns: dict[str, str] | None = None,
    progress: bool = False,
    engine: EngineName = "async",
    replicas: int = 1,
    gpus_per_replica: float = 1.0,
    ray_address: str | None = None,
    prepare_actors: int = 0,
    prepare_cpus: float = 1.0,
) -> PredictSummary:
    """Predict a catalog with a bundle: its box source (or box_source), its crops, its student.

    The student runs in-process (the bundle's merged/ model, or base + adapter/), or behind
    an OpenAI-compatible `endpoint` (a base URL with `model`, or an endpoint YAML). engine
    ray: decode, boxes and crops run as Ray Data actors (at most prepare_actors, of
    prepare_cpus each) and `replicas` copies of the in-process student answer each batch.
    """
    from finetune.predict import (
        DetectorBoxes,
        NoBoxes,
        default_workdir,
        load_bundle,
        predict_catalog,
    )
    from finetune.predict.on_ray import RayPrepare
    from toolkit.bundle import BOX_SOURCES

    bundle = load_bundle(bundle_dir)
    source = box_source or bundle.box_source
    if source not in BOX_SOURCES:
        raise CroptuneError(f"unknown box source {source!r}; use detector, teacher or none")
    if teacher_config is not None and source != "teacher":
        raise CroptuneError("--teacher-config is for --box-source teacher")
    if engine == "ray" and source == "teacher":
        raise CroptuneError(
            "--engine ray prepares items on Ray workers, which do not ask a box teacher; label "
            "the boxes with `croptune label --engine ray`, or predict with --box-source "
            "detector or none"
        )
    boxes: BoxSource = NoBoxes()
    if source == "detector":
        if bundle.detector_dir is None:
            raise CroptuneError(
                f"bundle {bundle_dir} ships no detector/; export it with --detector DIR, or "
                "pass --box-source teacher (with --teacher-config) or --box-source none"
            )
        boxes = DetectorBoxes(bundle.detector_dir)
    elif source == "teacher":
        from teacher_labeling.box_source import TeacherBoxes, box_teacher_config

        recorded = bundle.manifest.box_teacher
        teacher: dict[str, Any] | Path | str
        if teacher_config is not None:
            teacher = teacher_config
        elif recorded:
            teacher = recorded
        else:
            raise CroptuneError(
                "--box-source teacher needs --teacher-config FILE (a teacher config, or a label "
                "config with one box teacher), or a box_teacher: section in croptune.yaml"
            )
        boxes = TeacherBoxes(box_teacher_config(teacher), bundle.schema)
    workdir = workdir or default_workdir(out)
    if engine == "ray" and endpoint is not None:
        raise CroptuneError(
            "--engine ray runs replicas of the student on a Ray cluster; an --endpoint has "
            "replicas of its own (list them under base_url in an endpoint YAML)"
        )
    if engine != "ray" and (replicas != 1 or ray_address is not None or prepare_actors):
        raise CroptuneError("--replicas, --prepare-actors and --ray-address go with --engine ray")
    if endpoint is not None:
        from teacher_labeling.endpoint import (
            EndpointBackend,
            EndpointConfig,
            is_endpoint_config,
            load_endpoint_config,
        )

        if is_endpoint_config(endpoint):
            config = load_endpoint_config(endpoint)
        elif endpoint.lower().endswith((".yaml", ".yml")):
            raise CroptuneError(f"endpoint config {endpoint} does not exist")
        else:
            name = model or bundle.lora_name
            # PNG (EndpointConfig's default): the lossless pixels the student was trained on.
            config = EndpointConfig(
                name=name, model=name, base_url=endpoint, api_key_env=api_key_env
            )
        backend: AnswerBackend = EndpointBackend(
            config, workdir / PREDICT_ANSWERS_DIR, max_new_tokens or bundle.max_new_tokens
        )
        # Items in flight at once: the endpoint's own concurrency.
        batch_size = max(batch_size, min(config.max_concurrency, 32))
    else:
        if model is not None or api_key_env is not None:
            raise CroptuneError("--model and --api-key-env go with --endpoint URL")
        student = functools.partial(
            open_model,
            str(bundle.path),
            batch_size=batch_size,
            max_new_tokens=max_new_tokens or bundle.max_new_tokens,
            name=bundle.lora_name,
            base_model=base_model,
        )
        if engine == "ray":
            from finetune.predict.ray_replicas import RayReplicas

            backend = RayReplicas(student, replicas, gpus_per_replica, ray_address)
            batch_size *= replicas  # each replica answers batch_size of each call
        else:
            backend = student()
    try:
        return predict_catalog(
            bundle,
            catalog_path,
            out,
            backend,
            boxes,
            workdir=workdir,
            batch_size=batch_size,
            limit=limit,
            allow_outside=allow_outside,
            columns=columns,
            progress=progress,
            on_ray=RayPrepare(prepare_actors, prepare_cpus, ray_address)
            if engine == "ray"
            else None,
        )
    finally:
        backend.close()


def teacher_labels(source: Path, item_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each teacher's own answers for these items: {teacher: {item_id: attributes}}.

    source: a run folder (its store) or a `croptune labels export --format jsonl` file.
    """
    wanted = set(item_ids)
    per_teacher: dict[str, dict[str, Any]] = {}

    def add(item_id: str, labels: dict[str, Any]) -> None:
        for teacher, attributes in (labels or {}).items():
            per_teacher.setdefault(teacher, {})[item_id] = attributes

    if source.is_dir():
        with RunStore(source, create=False) as store:
            for item_id in item_ids:
                add(item_id, store.labels(item_id))
    elif source.is_file():
        with source.open(encoding="utf-8") as handle:
            for number, record in json_lines(handle):
                if isinstance(record, json.JSONDecodeError):
                    raise CroptuneError(
                        f"{source} line {number} is not JSON ({record}); pass a run folder or "
                        "the file of `croptune labels export --format jsonl`"
                    ) from record
                if record.get("item_id") in wanted:
                    add(record["item_id"], record.get("labels"))
    else:
        raise CroptuneError(
            f"teacher labels {source} do not exist; pass a run folder or the file of "
            "`croptune labels export --format jsonl`"
        )
    if not per_teacher:
        raise CroptuneError(
            f"{source} holds no teacher labels for the {len(item_ids)} items of this split"
        )
    return per_teacher


def _unique_names(backends: list[AnswerBackend]) -> None:
    """Two --model values with one name get numbered, so each row stays identifiable."""
    seen: dict[str, int] = {}
    for backend in backends:
        seen[backend.name] = seen.get(backend.name, 0) + 1
        if seen[backend.name] > 1:
            backend.name = f"{backend.name} ({seen[backend.name]})"


def run_evaluate(
    models: Sequence[str | AnswerBackend],
    dataset_dir: Path,
    out_dir: Path,
    split: str = "test",
    teacher_labels_from: Path | None = None,
    judge: Path | None = None,
    limit: int | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    progress: bool = False,
) -> list[EvaluationResult]:
    """Score every model (and teacher) on a split; write the comparison into out_dir.

    models: --model values (see open_model) or answer backends.
    """
    from finetune.evaluate import evaluate_backend, load_split
    from finetune.evaluate.backends import evaluate_labels
    from finetune.evaluate.data import dataset_schema
    from finetune.evaluate.tables import write_evaluation

    if not models and teacher_labels_from is None:
        raise CroptuneError("nothing to evaluate: pass --model (or --teacher-labels)")
    rows = load_split(dataset_dir, split, limit)
    schema = dataset_schema(dataset_dir)
    backends: list[AnswerBackend] = [
        open_model(m, out_dir / EVAL_CACHE_DIR, batch_size, max_new_tokens)
        if isinstance(m, str)
        else m
        for m in models
    ]
    _unique_names(backends)
    for backend in backends:
        backend.check_ready()  # a missing key fails now, not after the first model ran
    judge_config = _load_judge(judge) if judge is not None else None
    labels = (
        teacher_labels(teacher_labels_from, list(rows["item_id"]))
        if teacher_labels_from is not None
        else {}
    )
    results = []
    for backend in backends:
        logger.info("evaluating %s on %d %s examples", backend.name, len(rows), split)
        try:
            results.append(evaluate_backend(backend, rows, split, schema, progress))
        finally:
            backend.close()
    for teacher, answers in sorted(labels.items()):
        results.append(evaluate_labels(f"teacher:{teacher}", answers, rows, split, schema))
    if judge_config is not None:
        for result in results:
            result.judge = _judge_result(judge_config, result, rows, progress)
    write_evaluation(results, out_dir)
    return results


def run_score_predictions(
    predictions: Sequence[Path],
    reference: Path,
    out_dir: Path,
    names: Sequence[str] = (),
    split: str | None = None,
    columns: dict[str, str] | None = None,
) -> list[EvaluationResult]:
    """Score `croptune predict` output files against a catalog's or a run's attributes; write
    the comparison into out_dir (one row per file, named by names or the file's stem)."""
    from finetune.evaluate.predictions import (
        evaluate_predictions,
        load_references,
        read_predictions,
    )
    from finetune.evaluate.tables import write_evaluation

    if not predictions:
        raise CroptuneError("nothing to score: pass --predictions FILE")
    if names and len(names) != len(predictions):
        raise CroptuneError(
            f"{len(names)} --name for {len(predictions)} --predictions: give one name per "
            "file, in the same order, or none (each row is then named by its file's stem)"
        )
    references = load_references(reference, split, columns)
    row_names = list(names) or [Path(p).stem for p in predictions]
    seen: dict[str, int] = {}
    results = []
    for path, name in zip(predictions, row_names, strict=True):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} ({seen[name]})"  # two files with one stem: each row identifiable
        logger.info("scoring %s against %s", path, reference)
        results.append(evaluate_predictions(name, read_predictions(path), references))
    write_evaluation(results, out_dir)
    return results


def _load_judge(path: Path) -> JudgeConfig:
    """The judge config, its key variable checked before any model runs."""
    from teacher_labeling.engine import resolve_api_key
    from teacher_labeling.judge import load_judge_config

    config = load_judge_config(path)
    endpoint = config.endpoint
    resolve_api_key(endpoint.name, endpoint.api_key_env, endpoint.base_url)
    return config


JUDGE_CHUNK = 64  # items whose photos are decoded and held at once while judging


def _judge_result(
    config: JudgeConfig, result: EvaluationResult, rows: Any, progress: bool
) -> dict[str, Any]:
    """The judge's bucket rates for one model's answers (one request per item it predicted)."""
    from teacher_labeling.judge import JudgeItem, bucket_rates, judge_items_sync
    from toolkit.progress import ProgressBar

    judged = []
    with ProgressBar(f"judge ({result.model})", len(rows), progress) as bar:
        for start in range(0, len(rows), JUDGE_CHUNK):
            items = [
                JudgeItem(answer["item_id"], rows[index]["images"], answer["parsed"])
                for index, answer in enumerate(
                    result.answers[start : start + JUDGE_CHUNK], start=start
                )
            ]
            judged += judge_items_sync(config, items, on_result=lambda _: bar.advance())
    return bucket_rates(judged)
