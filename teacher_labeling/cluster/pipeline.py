"""The Ray Data pipeline of one engine group: request files -> prepared images -> answers.

    request files -> blocks of batch_size (object store) -> map_batches(prepare_batch)  CPU tasks
      -> http: map_batches(AskTeachers, concurrency=replicas)  async actors, croptune's client
      -> vllm: ray.data.llm vLLMEngineProcessorConfig           engine replicas on GPUs
    -> rows of answer shards (stages.SHARD_COLUMNS)

Building it puts the request blocks in Ray's object store; Ray runs the rest when the
driver writes the shards.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teacher_labeling.cluster.config import RayConfig
from teacher_labeling.cluster.stages import (
    AskTeachers,
    prepare_batch,
    vllm_request,
    vllm_shard_row,
)
from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from ray.data import Dataset
    from ray.data.llm import vLLMEngineProcessorConfig

    from teacher_labeling.teachers import Teacher

# An HTTP actor mostly waits on the network: a quarter of a CPU leaves the rest to preparation.
HTTP_ACTOR_CPUS = 0.25
# Batches an HTTP actor takes at once: its teachers' engines bound the requests in flight, and
# the next batch's requests start while the last ones of a batch are still out.
HTTP_ACTOR_BATCHES = 4
# The vLLM rows made from and back into croptune's: light.
LIGHT_CPUS = 0.1
# vLLM's CPU build (gpus_per_replica 0): the engine and Ray Data's LLM stages (chat
# template, tokenize, images, detokenize; one actor each) at fractions of a CPU, so that a
# small Ray (2 CPUs) can hold them all: at 1 CPU apiece the engine never gets scheduled and
# the run waits forever (measured).
CPU_ENGINE_CPUS = 0.5
CPU_STAGE_CPUS = 0.1


def answer_dataset(
    requests: Path, teachers: list[Teacher], config: RayConfig, group: str
) -> Dataset:
    """The lazy Dataset of one group's answer-shard rows (group "http" or "vllm-<teacher>")."""
    import ray.data

    prepared = ray.data.from_arrow_refs(request_blocks(requests, config.batch_size)).map_batches(
        prepare_batch, batch_size=config.batch_size, num_cpus=config.prepare_cpus
    )
    payload = teachers_payload(teachers, config)
    if group == "http":
        return prepared.map_batches(
            AskTeachers,
            fn_constructor_kwargs={"teachers": payload},
            batch_size=config.batch_size,
            compute=ray.data.ActorPoolStrategy(
                size=config.replicas, max_concurrent_calls_per_actor=HTTP_ACTOR_BATCHES
            ),
            num_cpus=HTTP_ACTOR_CPUS,
        )
    from ray.data.llm import build_processor

    (teacher,) = teachers
    processor = build_processor(
        vllm_processor_config(teacher, config),
        preprocess=functools.partial(vllm_request, teachers=payload),
        postprocess=vllm_shard_row,
        preprocess_map_kwargs={"num_cpus": LIGHT_CPUS},
        postprocess_map_kwargs={"num_cpus": LIGHT_CPUS},
    )
    return processor(prepared)


def request_blocks(requests: Path, batch_size: int) -> list[Any]:
    """The request files as blocks of batch_size rows in Ray's object store: workers on any
    node fetch them through Ray (no shared file system), Ray spills them to disk past its
    memory, and the driver reads one file at a time and keeps only the references.

    Blocks of one batch each: a map task's outputs are merged into one block per input block,
    so a bigger block would reach the shard writer at once (and be lost at once in a crash).
    Ray Data's read_parquet is not used: its planning and footer-reading tasks cost seconds
    before the first request (measured: docs/benchmarks.md).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    return [
        ray.put(pa.Table.from_batches([batch]))
        for path in sorted(requests.glob("*.parquet"))
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size)
    ]


def vllm_processor_config(teacher: Teacher, config: RayConfig) -> vLLMEngineProcessorConfig:
    """Ray Data's vLLM engine processor for a teacher: its weights, engine kwargs and replicas."""
    from ray.data.llm import vLLMEngineProcessorConfig

    settings = teacher.config
    options: dict[str, Any] = {}
    if config.python is not None:
        options["runtime_env"] = {"py_executable": config.python}
    engine_kwargs = dict(settings.engine_kwargs)
    gpus = int(engine_kwargs.get("tensor_parallel_size", 1)) * int(
        engine_kwargs.get("pipeline_parallel_size", 1)
    )
    stage: dict[str, Any] = {"enabled": True}
    if config.gpus_per_replica == 0:  # vLLM's CPU build: no GPU asked
        options["placement_group_config"] = {"bundles": [{"CPU": CPU_ENGINE_CPUS}]}
        stage["num_cpus"] = CPU_STAGE_CPUS
    elif config.gpus_per_replica not in (None, gpus):
        raise CroptuneError(
            f"ray.gpus_per_replica is {config.gpus_per_replica} but teacher {settings.name!r} "
            f"runs on {gpus} GPU(s) per replica (tensor_parallel_size x pipeline_parallel_size "
            "in its engine_kwargs): set one to match the other"
        )
    if config.accelerator_type is not None:
        options["accelerator_type"] = config.accelerator_type
    return vLLMEngineProcessorConfig(
        model_source=settings.model_source or settings.model,
        engine_kwargs=engine_kwargs,
        concurrency=config.replicas,
        batch_size=config.batch_size,
        prepare_multimodal_stage=stage,
        chat_template_stage=stage,
        tokenize_stage=stage,
        detokenize_stage=stage,
        **options,
    )


def teachers_payload(teachers: list[Teacher], config: RayConfig) -> bytes:
    """The teachers' configs and schema as the workers rebuild them (the names of key
    variables, never keys); each HTTP replica gets its share of the rate limits."""
    share = config.replicas
    configs = [
        t.config.model_copy(
            update={
                "requests_per_minute": max(1, t.config.requests_per_minute // share),
                "tokens_per_minute": max(1, t.config.tokens_per_minute // share),
            }
        )
        for t in teachers
    ]
    return pickle.dumps((configs, teachers[0].schema))
