"""The `ray:` section of label.yaml: where the cluster is and how the teachers run on it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RayEngine = Literal["http", "vllm"]


class RayConfig(BaseModel):
    """How `label --engine ray` runs: the cluster, the model stage's replicas, the shards."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description="Ray cluster address (`auto`, `ray://head:10001`); omit to start a local "
        "Ray on this machine (the --ray-address flag overrides it)",
    )
    num_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray croptune starts (default: all cores)"
    )
    engines: dict[str, RayEngine] = Field(
        default_factory=dict,
        description="Teacher name -> how Ray runs it: http (workers send requests to the "
        "teacher's base_url, the default) or vllm (Ray Data runs vLLM engine replicas of "
        "the teacher's model_source on GPUs)",
    )
    replicas: int = Field(
        1,
        ge=1,
        description="Model-stage workers per teacher: HTTP actors (each with the teacher's "
        "max_concurrency; its rate limits are split between them) or vLLM engine replicas",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Requests per Ray Data batch (per preparation task, per HTTP actor call, "
        "per vLLM engine batch): larger means fewer tasks; a crash loses the batches in flight",
    )
    prepare_cpus: float = Field(
        0.5,
        gt=0,
        description="CPUs per image-preparation task (decode, orient, resize, encode): half a "
        "CPU keeps the cores busy beside Ray's own processes (on 2 cores: 25 requests/s "
        "at 0.5, 20.7 at 1.0, 16.4 at 0.25: docs/benchmarks.md)",
    )
    gpus_per_replica: int | None = Field(
        None,
        ge=0,
        description="vllm engine: GPUs per engine replica. Ray Data gives each replica "
        "tensor_parallel_size x pipeline_parallel_size GPUs (the teacher's engine_kwargs); "
        "a different number here is refused. 0 runs the replicas on CPUs (vLLM's CPU build)",
    )
    accelerator_type: str | None = Field(
        None, description="vllm engine: Ray accelerator type the replicas need, e.g. H100, L4"
    )
    python: str | None = Field(
        None,
        description="vllm engine: the Python executable of a vLLM environment on the workers "
        "(Ray runtime_env py_executable; it needs this Ray version); omit when the workers' "
        "own Python has vLLM",
    )
    shards: str | None = Field(
        None,
        description="Where answer shards are written: a folder or an fsspec URL (s3://, gs://) "
        "every worker can write and the driver read (default: ray-shards/ in the run folder)",
    )
    rows_per_shard: int = Field(
        256,
        ge=1,
        description="Answers per shard file at least (the last one may hold fewer): larger "
        "means fewer files; a crash loses the answers of shards not written yet",
    )
    poll_s: float = Field(
        2.0, gt=0, description="Seconds between the driver's looks for newly finished shards"
    )

    def engine_of(self, teacher: str) -> RayEngine:
        """How Ray runs a teacher: http unless `engines` says vllm."""
        return self.engines.get(teacher, "http")
