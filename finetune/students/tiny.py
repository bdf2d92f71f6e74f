"""The built-in croptune:tiny* students: their names, build versions and the build-once cache.

resolve_student turns a model value into something transformers loads; for a tiny name it
builds the student (tiny_gemma3.py, tiny_qwen.py) once into the croptune cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetune.students.tiny_gemma3 import build_tiny_gemma3, build_tiny_scratch_gemma3
from finetune.students.tiny_qwen import build_tiny_qwen25vl
from finetune.students.tiny_reader import build_tiny_reader, reader_corpus_lines
from finetune.students.vocab import corpus_lines, qwen_corpus_lines, scratch_corpus_lines
from toolkit.errors import CroptuneError

logger = logging.getLogger(__name__)

TINY_MODEL = "croptune:tiny"
TINY_QWEN_MODEL = "croptune:tiny-qwen"
TINY_SCRATCH_MODEL = "croptune:tiny-scratch"
TINY_READER_MODEL = "croptune:tiny-reader"
# Bump when a tiny builder changes what it writes: cached builds are keyed by it.
# v4: newline-run tokens and the published vision weight names, so vLLM loads the tiny Gemma 3.
TINY_BUILDER_VERSION = 4
# Bump when build_tiny_scratch_gemma3 changes what it writes (only its cache is rebuilt).
TINY_SCRATCH_VERSION = 2
# Bump when build_tiny_reader or its pretraining (finetune.students.reading) changes.
TINY_READER_VERSION = 1
_COMPLETE_MARKER = ".croptune-complete"


def default_cache_dir() -> Path:
    """The croptune cache folder: $CROPTUNE_CACHE or ~/.cache/croptune."""
    return Path(os.environ.get("CROPTUNE_CACHE") or Path.home() / ".cache" / "croptune")


@dataclass(frozen=True)
class _TinyStudent:
    folder: str  # cache folder name prefix
    build: Callable[[Path, int], Path]
    corpus: Callable[[], list[str]]  # the tokenizer's training lines: part of the cache key


def _tiny_students() -> dict[str, _TinyStudent]:
    return {
        TINY_MODEL: _TinyStudent("tiny-gemma3", build_tiny_gemma3, corpus_lines),
        TINY_QWEN_MODEL: _TinyStudent("tiny-qwen25vl", build_tiny_qwen25vl, qwen_corpus_lines),
        # The folder name carries the scratch builder's own version: bump it alone.
        TINY_SCRATCH_MODEL: _TinyStudent(
            f"tiny-scratch-gemma3-s{TINY_SCRATCH_VERSION}",
            build_tiny_scratch_gemma3,
            scratch_corpus_lines,
        ),
        TINY_READER_MODEL: _TinyStudent(
            f"tiny-reader-gemma3-r{TINY_READER_VERSION}", build_tiny_reader, reader_corpus_lines
        ),
    }


def resolve_student(model: str, cache_dir: Path | None = None) -> str:
    """A loadable model path or hub id; builds a tiny student once for 'croptune:tiny...'."""
    tiny = _tiny_students().get(model)
    if tiny is None:
        if model.startswith("croptune:"):
            raise CroptuneError(
                f"unknown built-in student {model!r}; choose one of: {', '.join(_tiny_students())}"
            )
        return model
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    digest = hashlib.sha256("\n".join(tiny.corpus()).encode()).hexdigest()[:10]
    target = cache_dir / "students" / f"{tiny.folder}-v{TINY_BUILDER_VERSION}-{digest}"
    return str(_build_once(target, tiny.build))


def _build_once(target: Path, build: Callable[[Path, int], Path]) -> Path:
    """target, built by build(folder, seed=0) unless a complete build is already there."""
    if (target / _COMPLETE_MARKER).is_file():
        return target
    # Build beside the target and rename, so a crash never leaves a folder that looks usable.
    staging = target.with_name(f"{target.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    build(staging, 0)
    (staging / _COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        # Another process finished first; use its build if complete.
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / _COMPLETE_MARKER).is_file():
            raise
        return target
    logger.info("built %s (once: later runs reuse it)", target)
    return target
