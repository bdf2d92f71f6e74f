"""ImagePool: where labeling decodes, resizes and encodes the photos it sends, off the event loop.

Worker processes (spawned) on long runs, threads before they are up and on short runs; a
job is one photo at each size it is sent at, decoded once per JPEG scale (draft mode).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType

from PIL import Image

from teacher_labeling.client import EncodedImage, Encoding, encode_data_url
from toolkit.catalog.ingest import load_ingested_resized
from toolkit.images import decode_resized, read_image_bytes
from toolkit.store import ImageRow

logger = logging.getLogger(__name__)

# A run that prepares fewer photos never starts worker processes: their start-up (~0.5 s
# each) would cost more than they save, and tests stay in one process.
POOL_AFTER_IMAGES = 32


def default_image_workers() -> int:
    """Worker processes an ImagePool uses by default: one per core, at most 4."""
    return min(os.cpu_count() or 1, 4)


@dataclass(frozen=True)
class ImageJob:
    """One photo to decode (once per JPEG scale) and hand back at each size it is sent at."""

    source: ImageRow | str  # an ingested original (checked against ingest), or a crop file
    sizes: tuple[tuple[int, int], ...]
    # Per size: the data URL in that encoding (an EncodedImage), or None: the pixels.
    encodings: tuple[Encoding | None, ...]
    draft: bool = True


def prepare_images(job: ImageJob) -> list[Image.Image]:
    """A job's photo at each of its sizes, encoded or as pixels (in a worker process or a thread)."""
    if isinstance(job.source, str):
        images = decode_resized(read_image_bytes(job.source), job.sizes, draft=job.draft)[0]
    else:
        images = load_ingested_resized(job.source, job.sizes, draft=job.draft)
    return [
        image
        if encoding is None
        else EncodedImage(image.size, encode_data_url(image, encoding), encoding)
        for image, encoding in zip(images, job.encodings, strict=True)
    ]


def _worker_started(parent: int) -> None:
    """In each worker process: Ctrl-C is the parent's to handle (ignored from the start when
    the parent's main thread started it), a parent killed without clean-up (SIGKILL) takes
    its workers with it, and freed memory is kept for the next photo."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()


# glibc's mallopt parameters (malloc.h) and the values a worker sets: blocks up to 32 MB
# (glibc's ceiling) come from the heap, and the heap is not trimmed below 512 MB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BLOCKS_BYTES, _KEEP_HEAP_BYTES = 32 * 2**20, 512 * 2**20


def keep_freed_memory() -> None:
    """Keep freed large blocks for reuse (glibc; elsewhere nothing changes).

    A worker allocates the same large buffers for every photo (a 1600x1200 decode is 7.7 MB,
    its resize 3.9 MB, its data URL 0.5 MB). By default glibc hands freed blocks of that
    size back to the system and faults them in again for the next photo: ~3,800 page faults
    and ~10 ms of system time per photo, measured; kept, ~110. A worker's heap then stays at
    its peak (tens of MB), which is what it needs for its next photo anyway.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return  # not glibc (macOS has no mallopt)
    mallopt(_M_MMAP_THRESHOLD, _KEEP_BLOCKS_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _KEEP_HEAP_BYTES)


def _worker_ready() -> int:
    """A no-op job: done once a worker process has started and imported this module."""
    return os.getpid()


class ImagePool:
    """Where labeling decodes, resizes and encodes the photos it sends, off the event loop.

    workers > 0: in that many spawned worker processes (default `default_image_workers()`),
    once the run has prepared `start_after` photos and the workers are up; until then in
    threads, so short runs and tests never wait for (or pay) their start-up. workers=0: in
    threads only. Photos whose pixels a teacher reads in this process (a local or reference
    teacher) are always prepared in a thread: sending pixels back would cost more than
    decoding them here. draft=False decodes every JPEG at full scale. ahead: items a label
    run decodes ahead of its request slots (0 and draft=False with workers=0 is how labeling
    ran before the pool: the "before" of bench/label_throughput.py). A pool whose worker
    dies is reported, and the run goes on in threads. Close it (or use it as a context
    manager): its workers stop with it, on Ctrl-C too.
    """

    def __init__(
        self,
        workers: int | None = None,
        draft: bool = True,
        start_after: int = POOL_AFTER_IMAGES,
        ahead: int | None = None,
    ) -> None:
        self.workers = default_image_workers() if workers is None else max(0, workers)
        self.draft = draft
        self.start_after = start_after
        # Items a label run keeps beyond its request slots, their photos decoding meanwhile
        # (default: one per worker, at least 2).
        self.ahead = max(2, self.workers or default_image_workers()) if ahead is None else ahead
        self.in_processes = 0  # jobs done in worker processes
        self.in_threads = 0  # jobs done in threads
        self._seen = 0
        self._executor: ProcessPoolExecutor | None = None
        self._starting: list[Future] = []
        self._broken = False

    async def run(self, job: ImageJob) -> list[Image.Image]:
        """The job's images (raises ImageLoadError for a photo that cannot be used)."""
        executor = self._executor_for(job)
        if executor is not None:
            try:
                images = await asyncio.wrap_future(executor.submit(prepare_images, job))
            except BrokenProcessPool as exc:
                self._break(exc)
            else:
                self.in_processes += 1
                return images
        self.in_threads += 1
        return await asyncio.to_thread(prepare_images, job)

    def _executor_for(self, job: ImageJob) -> ProcessPoolExecutor | None:
        """The worker processes, when they are up and the job's images travel back cheaply."""
        if self.workers == 0 or self._broken or None in job.encodings:
            return None
        self._seen += 1
        if self._executor is None:
            if self._seen <= self.start_after:
                return None
            self._start()
        if self._broken or not all(future.done() for future in self._starting):
            return None  # still starting (or could not): this job runs in a thread meanwhile
        if any(future.exception() is not None for future in self._starting):
            self._break(next(f.exception() for f in self._starting if f.exception()))
            return None
        return self._executor

    def start(self, wait: bool = False) -> None:
        """Start the worker processes now (not after `start_after` photos); wait: until they
        are up (a pool warmed up before a run, as a long-lived caller or a test wants)."""
        if self.workers == 0 or self._broken:
            return
        if self._executor is None:
            self._start()
        if wait:
            concurrent.futures.wait(self._starting)

    def _start(self) -> None:
        # spawn, not fork: the parent runs an event loop and threads; a forked copy of those
        # (held locks included) is not safe.
        self._executor = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_started,
            initargs=(os.getpid(),),
        )
        # One no-op per worker: each submit starts a worker, and jobs go there once all answer.
        # Workers are started with Ctrl-C ignored (an ignored signal stays ignored in the new
        # process, and Python then installs no handler): a Ctrl-C while they import would
        # print a traceback from each; the parent handles it and closes the pool.
        main = threading.current_thread() is threading.main_thread()
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            self._starting = [self._executor.submit(_worker_ready) for _ in range(self.workers)]
        except (OSError, RuntimeError, AssertionError) as exc:
            # e.g. a daemonic process (a worker of someone else's pool) may not have children
            self._break(exc)
        finally:
            if main:
                signal.signal(signal.SIGINT, interrupt)
        logger.debug("image pool: starting %d worker processes", self.workers)

    def _break(self, exc: BaseException | None) -> None:
        if not self._broken:
            self._broken = True
            logger.warning(
                "image worker processes failed (%s); decoding goes on in this process", exc
            )

    def close(self) -> None:
        """Stop the worker processes (jobs not started yet are dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> ImagePool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
