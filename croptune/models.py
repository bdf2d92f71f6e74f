"""The one dispatcher from a --model value to an answer backend (endpoint or in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import CroptuneError

if TYPE_CHECKING:
    from finetune.infer import TransformersBackend
    from teacher_labeling.endpoint import EndpointBackend


def open_model(
    value: str,
    cache_dir: Path | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    *,
    name: str | None = None,
    base_model: str | None = None,
) -> TransformersBackend | EndpointBackend:
    """The answer backend a --model value names: the one place a value becomes a model.

    An endpoint YAML (`*.yaml`: an OpenAI-compatible server, answers cached in cache_dir),
    else what finetune.models.student_weights finds in-process: a bundle (its `merged/`
    model if exported with --merge, else base + `adapter/`), an adapter folder (base +
    adapter), or a base model (hub id, local folder, croptune:tiny). name: the backend's
    name (default: the value); base_model: a bundle's or adapter's base loaded from here.
    """
    from finetune.models import open_student
    from teacher_labeling.endpoint import (
        ENDPOINT_SUFFIXES,
        EndpointBackend,
        is_endpoint_config,
        load_endpoint_config,
    )

    if is_endpoint_config(value):
        return EndpointBackend(load_endpoint_config(value), cache_dir, max_new_tokens)
    if value.lower().endswith(ENDPOINT_SUFFIXES) and not Path(value).exists():
        raise CroptuneError(f"endpoint config {value} does not exist")
    return open_student(
        value,
        name=name,
        base_model=base_model,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
