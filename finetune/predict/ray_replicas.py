"""`predict --engine ray`: the student's answers from replicas of it on a Ray cluster.

Each replica is a Ray actor holding its own in-process backend (the bundle's model, on
`gpus_per_replica` GPUs of its own); each batch of examples is split between the replicas
and the answers come back in order. Decoding, boxes and crops run on Ray too, as Ray Data
actors (finetune.predict.on_ray); the work folder stays with the driver, so records, cache
keys and resuming are a single-process predict's: a killed predict on Ray resumes from its
work folder like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from toolkit.answers import Example, GeneratedAnswer
from toolkit.errors import CroptuneError
from toolkit.messages import innermost_message
from toolkit.protocols import AnswerBackend
from toolkit.ray_data import start_ray

logger = logging.getLogger(__name__)


class _Replica:
    """One Ray actor: a backend built in the actor's process, answering its share."""

    def __init__(self, factory: Callable[[], AnswerBackend]) -> None:
        self.backend = factory()

    def prepare(self) -> None:
        self.backend.prepare()

    def answer(self, examples: list[Example]) -> list[GeneratedAnswer]:
        return self.backend.answer(examples)

    def close(self) -> None:
        self.backend.close()


def split_evenly(examples: Sequence[Example], parts: int) -> list[list[Example]]:
    """Examples in `parts` contiguous chunks, sizes differing by one at most (first larger)."""
    size, extra = divmod(len(examples), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (index < extra)
        chunks.append(list(examples[start:end]))
        start = end
    return chunks


class RayReplicas:
    """An answer backend whose answers come from `replicas` copies of a backend on Ray.

    factory builds the backend (picklable: it runs in each actor, and once here, unloaded,
    for the name and the cache identity, which are the single-process backend's own).
    """

    def __init__(
        self,
        factory: Callable[[], AnswerBackend],
        replicas: int = 1,
        gpus_per_replica: float = 1.0,
        address: str | None = None,
    ) -> None:
        if replicas < 1:
            raise CroptuneError(f"--replicas must be at least 1, not {replicas}")
        self._factory, self.replicas, self.gpus = factory, replicas, gpus_per_replica
        self.address = address
        self._here = factory()  # not loaded: prepare() loads weights, and only on the actors
        self.name, self.kind = self._here.name, self._here.kind
        self._actors: list[Any] = []
        self._started = False

    def identity(self) -> dict[str, Any]:
        """The replicated backend's identity: answers are keyed as a single-process run's."""
        return self._here.identity()

    def check_ready(self) -> None:
        """What the replicated backend checks before any work."""
        self._here.check_ready()

    def prepare(self) -> None:
        """Start (or join) Ray and load the student on every replica."""
        import ray

        self._started = start_ray(self.address)
        remote = ray.remote(num_cpus=1, num_gpus=self.gpus)(_Replica)
        self._actors = [remote.remote(self._factory) for _ in range(self.replicas)]
        self._get([actor.prepare.remote() for actor in self._actors])
        logger.info("predict: %d replica(s) of %s ready on Ray", self.replicas, self.name)

    def answer(self, examples: Sequence[Example], progress: bool = False) -> list[GeneratedAnswer]:
        """One answer per example, in order; the examples split evenly between the replicas."""
        if not self._actors:
            raise CroptuneError("the Ray replicas are not started: prepare() first")
        chunks = split_evenly(examples, len(self._actors))
        futures = [a.answer.remote(c) for a, c in zip(self._actors, chunks, strict=True) if c]
        return [answer for part in self._get(futures) for answer in part]

    def close(self) -> None:
        """Stop the replicas (and the local Ray, if this backend started it)."""
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        self._here.close()
        if self._started:
            ray.shutdown()
            self._started = False

    def _get(self, futures: list[Any]) -> list[Any]:
        """Ray's results, or a CroptuneError saying which replica failed and why."""
        import ray
        from ray.exceptions import RayError

        try:
            return ray.get(futures)
        except RayError as exc:
            message = innermost_message(exc)
            raise CroptuneError(f"a Ray replica of {self.name!r} failed: {message}") from exc
