"""The label and relabel stages: ask every teacher about every item, store each answer as it arrives.

Requests are keyed before any pixel is decoded, so a re-run of finished work decodes and
sends nothing. Items stream from the store through a bounded window (the teachers' request
slots plus a few items being decoded ahead); each teacher's own engine bounds its requests
in flight and its rate. Photos are decoded, resized and encoded by an `ImagePool` (worker
processes on long runs), so the event loop only waits on the network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from teacher_labeling.box_questions import box_request, read_boxes
from teacher_labeling.client import (
    EncodedImage,
    EncodedImages,
    Encoding,
    encoding_of,
)
from teacher_labeling.cost import Price, Spend
from teacher_labeling.image_pool import ImageJob, ImagePool
from teacher_labeling.parse import AnswerParseError, parse_attributes
from teacher_labeling.prompts import relabel_prompt
from teacher_labeling.teachers import (
    FusionConfig,
    OpenAITeacher,
    Teacher,
    TeacherError,
    TeacherRequest,
)
from toolkit.boxes import Box
from toolkit.crops import FUSED_SOURCE
from toolkit.images import ImageLoadError
from toolkit.messages import cause_of
from toolkit.progress import ProgressBar
from toolkit.store import CropRow, ImageRow, ItemRow, RunStore

if TYPE_CHECKING:
    from teacher_labeling.engine import ReplicaStats
    from teacher_labeling.fusion import AgreementStats

logger = logging.getLogger(__name__)

MAX_WORKERS = 256


@dataclass
class LabelSummary:
    """Counts of one label run: requests asked, answered from the cache, failed; spend."""

    items: int = 0
    asked: int = 0
    cached: int = 0
    failed: int = 0
    labels: int = 0
    boxes: int = 0
    errors: list[str] = field(default_factory=list)
    # Failures by cause -> the items they happened to (the console's summary of `errors`).
    failures: dict[str, list[str]] = field(default_factory=dict)
    # What was dropped, moved or clipped from answers, by cause -> the items it happened to.
    warnings: dict[str, list[str]] = field(default_factory=dict)
    stopped: dict[str, str] = field(default_factory=dict)
    spend: dict[str, Spend] = field(default_factory=dict)
    agreement: AgreementStats | None = None
    # Teachers served by more than one replica: each replica's counts.
    replicas: dict[str, list[ReplicaStats]] = field(default_factory=dict)

    @property
    def usd(self) -> float:
        """Money spent by all teachers in this run."""
        return sum(s.usd for s in self.spend.values())

    def warn(self, teacher: str, note: str, item_id: str) -> None:
        """Count one note under its cause."""
        self.warnings.setdefault(cause_of(teacher, note), []).append(item_id)

    def fail(self, item_id: str, teacher: str | None, message: str) -> None:
        """Count one failed request: in the total, the error list and under its cause."""
        self.failed += 1
        where = f"item {item_id}" + (f" ({teacher})" if teacher else "")
        self.errors.append(f"{where}: {message}")
        self.failures.setdefault(cause_of(teacher, message), []).append(item_id)

    @property
    def produced_nothing(self) -> bool:
        """Every request failed: no label, no box, nothing from the cache."""
        return self.failed > 0 and not (self.labels or self.boxes or self.cached)


@dataclass
class UnsentRequest:
    """A request to send, before its pixels are decoded."""

    teacher: Teacher
    request: TeacherRequest
    image_indices: list[int]  # originals the request shows (crops come after them)
    crops: list[CropRow] = field(default_factory=list)
    cached: dict[str, Any] | None = None  # an answer given to another item: reuse, not ask


class _LabelRun:
    """Shared state of one label run."""

    def __init__(
        self,
        store: RunStore,
        teachers: list[Teacher],
        prices: dict[str, Price],
        fusion: FusionConfig,
        generation: int,
        bar: ProgressBar,
    ) -> None:
        self.store = store
        self.teachers = teachers
        self.prices = {t.name: t.price(prices) for t in teachers}
        self.fusion = fusion
        self.generation = generation
        self.bar = bar
        self.summary = LabelSummary(spend={t.name: Spend() for t in teachers})
        # Requests being asked now, so a second item with the same question waits for the
        # first one's answer instead of asking again.
        self.in_flight: dict[str, asyncio.Future] = {}
        # Images being encoded now, by (pixel hash, size, encoding): a second item showing
        # the same photo at the same size waits for that encoding instead of making its own.
        self.encoding: dict[tuple[str, tuple[int, int], Encoding], asyncio.Future] = {}

    def active(self, teacher: Teacher) -> bool:
        return teacher.name not in self.summary.stopped

    def error(self, item_id: str, teacher: str | None, image: int | None, message: str) -> None:
        self.summary.fail(item_id, teacher, message)
        self.store.log_event("label", message, "error", item_id, teacher, image)
        logger.debug("item %s (%s): %s", item_id, teacher, message)  # the CLI groups them


def label_items(
    store: RunStore,
    teachers: list[Teacher],
    limit: int | None = None,
    progress: bool = False,
    prices: dict[str, Price] | None = None,
    fusion: FusionConfig | None = None,
    relabel: bool = False,
    images: ImagePool | None = None,
) -> LabelSummary:
    """Label (or relabel) the store's items with every teacher; finished requests are never asked again.

    images: where photos are decoded and encoded (default: a fresh `ImagePool()`, closed at
    the end; a given one is left open for its owner).
    """
    if relabel:
        teachers = [t for t in teachers if t.does_attributes]
    items = store.items(limit=limit)  # streamed: read a page at a time as workers free up
    total = store.count_items() if limit is None else min(limit, store.count_items())
    description = "relabel" if relabel else "label"
    pool = images if images is not None else ImagePool()
    try:
        with ProgressBar(description, total, progress, money=True) as bar:
            run = _LabelRun(
                store, teachers, prices or {}, fusion or FusionConfig(), int(relabel), bar
            )
            asyncio.run(_label_all(run, items, relabel, pool))
    finally:
        if images is None:
            pool.close()
    run.summary.replicas = {t.name: r for t in teachers if len(r := t.replica_stats()) > 1}
    if not relabel and len([t for t in teachers if t.does_boxes]) >= 2:
        run.summary.agreement = _agreement(store, teachers, run.fusion)
    return run.summary


async def _label_all(
    run: _LabelRun, items: Iterable[ItemRow], relabel: bool, images: ImagePool
) -> None:
    """Every item through a window of workers; teachers closed after.

    The window is the teachers' request slots plus `images.ahead` items: those wait for a
    slot with their photos ready, so a slot that frees is used at once. Items are taken
    from the store as workers free up: never all of them at once.
    """
    slots = max(1, min(MAX_WORKERS, sum(t.config.max_concurrency for t in run.teachers)))
    queue = iter(items)

    async def worker() -> None:
        for item in queue:  # one shared iterator: each item goes to exactly one worker
            await _label_item(run, item, relabel, images)
            run.summary.items += 1
            run.bar.advance(spend=run.summary.usd)

    try:
        await asyncio.gather(*(worker() for _ in range(slots + images.ahead)))
    finally:
        for teacher in run.teachers:
            await teacher.close()


async def _label_item(run: _LabelRun, item: ItemRow, relabel: bool, images: ImagePool) -> None:
    """All of one item's pending requests, sent concurrently."""
    pending = _pending_requests(run, item, relabel)
    if not pending:
        return
    for p in pending:
        if p.cached is not None:
            _store_answer(run, item, p, p.cached["text"], p.cached["usage"])
    owned, followed = _claim(run, [p for p in pending if p.cached is None])
    try:
        asked = [p for p, _ in owned]
        shown = await _prepare(run, item, asked, images) if asked else []
        await asyncio.gather(
            *(_ask(run, item, p, answer, sent)
              for (p, answer), sent in zip(owned, shown, strict=True) if sent),
            *(_follow(run, item, p, answer) for p, answer in followed),
        )  # fmt: skip
    finally:
        for p, answer in owned:  # not asked (a photo unreadable) or cancelled: none will come
            _release(run, p, answer, None)
    box_teachers = [t for t in run.teachers if t.does_boxes]
    if not relabel and len(box_teachers) >= 2:
        _fuse_item(run, item, box_teachers)


def _pending_requests(
    run: _LabelRun, item: ItemRow, relabel: bool, count: bool = True
) -> list[UnsentRequest]:
    """The item's requests not answered yet, keyed from the stored image hashes alone.

    count: add the answered ones and those answered for another item to `cached`.
    """
    active = [t for t in run.teachers if run.active(t)]
    todo = []
    for p in item_requests(run.store, item, active, relabel):
        key = p.request.cache_key
        if run.store.has_result(item.item_id, key):
            run.summary.cached += count
            continue
        p.cached = run.store.cached_response(key)
        if p.cached is not None:
            run.summary.cached += count
        todo.append(p)
    return todo


def item_requests(
    store: RunStore, item: ItemRow, teachers: list[Teacher], relabel: bool
) -> list[UnsentRequest]:
    """Every request the teachers are asked about an item (answered or not), keyed."""
    rows = [r for r in store.images(item.item_id) if r.usable]
    if not rows:
        return []
    hashes = [r.sha256 or "" for r in rows]
    sizes = {r.index: (r.width or 0, r.height or 0) for r in rows}
    crops = _current_crops(store, item.item_id) if relabel else []
    requests: list[UnsentRequest] = []
    for teacher in teachers:
        if teacher.does_attributes:
            request = teacher.attributes_request(item, [], hashes + [c.sha256 for c in crops])
            if crops:
                request.prompt = relabel_prompt(request.prompt, len(rows), len(crops))
            requests.append(UnsentRequest(teacher, request, [r.index for r in rows], crops))
        if teacher.does_boxes and not relabel:
            for row in rows:
                request = box_request(teacher, item, row.index, row.sha256 or "", sizes[row.index])
                requests.append(UnsentRequest(teacher, request, [row.index]))
    return requests


def _current_crops(store: RunStore, item_id: str) -> list[CropRow]:
    config_hash = store.get_meta("crop_config_hash")
    crops = store.crops(item_id, config_hash) if config_hash else []
    return [c for c in crops if c.duplicate_of is None]  # pHash duplicates add nothing


@dataclass(frozen=True)
class SentImage:
    """One image a request shows, as it is sent."""

    source: int | str  # an original's index, or a crop's sha256
    image_hash: str  # the pixel hash its data URLs are cached under
    size: tuple[int, int]
    encoding: Encoding | None  # None: the teacher reads the pixels in this process

    @property
    def encoded_as(self) -> tuple[str, tuple[int, int], Encoding] | None:
        """What its data URL is cached under (None: pixels, not cached)."""
        return None if self.encoding is None else (self.image_hash, self.size, self.encoding)


def _sends_data_urls(teacher: Teacher) -> tuple[EncodedImages, Encoding] | None:
    """The encoding cache and encoding of a teacher that sends data URLs (None: it reads pixels)."""
    if isinstance(teacher, OpenAITeacher):
        return teacher._encoded, encoding_of(teacher.config)
    return None


def sent_images(
    pending: UnsentRequest, rows: dict[int, ImageRow], encoding: Encoding | None
) -> list[SentImage]:
    """What a request shows: its originals (a box request's at its sent size), then its crops."""
    request = pending.request
    shown = []
    for index in pending.image_indices:
        row = rows[index]
        size = (request.sent_size if request.image is not None else None) or row.size
        shown.append(SentImage(index, row.sha256 or "", size, encoding))
    for crop in pending.crops:
        x1, y1, x2, y2 = crop.region
        shown.append(SentImage(crop.sha256, crop.sha256, (x2 - x1, y2 - y1), encoding))
    return shown


async def _prepare(
    run: _LabelRun, item: ItemRow, to_ask: list[UnsentRequest], images: ImagePool
) -> list[list[Image.Image] | None]:
    """Each request's images as sent, or None where one of them cannot be read (reported).

    A data URL its teacher's cache holds is used as it is (no decode, no resize); the rest
    is one job per photo, decoded once per scale and encoded once per size it is sent at.
    """
    rows = {r.index: r for r in run.store.images(item.item_id)}
    crops = {c.sha256: c for p in to_ask for c in p.crops}
    wanted: list[list[SentImage]] = []
    caches: dict[SentImage, list[EncodedImages]] = {}  # where each encoded image is kept
    for p in to_ask:
        sends = _sends_data_urls(p.teacher)
        wanted.append(sent_images(p, rows, sends[1] if sends else None))
        if sends is not None:
            for shown in wanted[-1]:
                caches.setdefault(shown, []).append(sends[0])
    ready: dict[SentImage, Image.Image] = {}
    jobs: dict[int | str, list[SentImage]] = {}
    elsewhere: dict[SentImage, asyncio.Future] = {}  # being encoded for another item now
    loop = asyncio.get_running_loop()
    for shown in dict.fromkeys(s for request in wanted for s in request):
        key = shown.encoded_as
        url = caches[shown][0].get(*key) if key is not None else None
        if url is not None and key is not None:
            ready[shown] = EncodedImage(shown.size, url, key[2])
        elif key is not None and key in run.encoding:
            elsewhere[shown] = run.encoding[key]
        else:
            if key is not None:
                run.encoding[key] = loop.create_future()
            jobs.setdefault(shown.source, []).append(shown)

    async def prepare(source: int | str, todo: list[SentImage], announced: bool = True) -> None:
        """One photo's job; its encodings handed to the items waiting for them."""
        done: dict[SentImage, Image.Image] = {}
        try:
            job = ImageJob(
                rows[source] if isinstance(source, int) else str(run.store.run_dir / crops[source].path),
                tuple(s.size for s in todo),
                tuple(s.encoding for s in todo),
                draft=images.draft,
            )  # fmt: skip
            try:
                prepared = await images.run(job)
            except ImageLoadError as exc:
                if isinstance(source, int):
                    run.error(item.item_id, None, source, f"image {source}: {exc}")
                else:
                    crop = crops[source]
                    run.error(item.item_id, None, crop.image, f"crop {crop.path}: {exc}")
                return
            done = dict(zip(todo, prepared, strict=True))
            ready.update(done)
            for shown, image in done.items():
                if isinstance(image, EncodedImage):
                    for cache in caches[shown]:
                        cache.put(shown.image_hash, shown.size, image.encoding, image.data_url)
        finally:
            # Waiting items get the encoding, or None (unreadable here, or cancelled): then
            # they try themselves.
            for shown in todo if announced else []:
                key = shown.encoded_as
                if key is not None:
                    run.encoding.pop(key).set_result(done.get(shown))

    async def wait_for(shown: SentImage, encoding: asyncio.Future) -> None:
        """Another item's encoding of the same photo at the same size, or this item's own."""
        image = await encoding
        if image is None:
            await prepare(shown.source, [shown], announced=False)
        else:
            ready[shown] = image

    await asyncio.gather(
        *(prepare(source, todo) for source, todo in jobs.items()),
        *(wait_for(shown, encoding) for shown, encoding in elsewhere.items()),
    )
    return [[ready[s] for s in request] if all(s in ready for s in request) else None
            for request in wanted]  # fmt: skip


_Claims = list[tuple[UnsentRequest, asyncio.Future]]


def _claim(run: _LabelRun, to_ask: list[UnsentRequest]) -> tuple[_Claims, _Claims]:
    """(the requests this item asks, those another item is asking already), each with the
    future of its answer. A question is claimed before its photos are decoded, so the same
    question for a later item (the same photo in two listings) waits for the first one's
    answer and decodes nothing."""
    loop = asyncio.get_running_loop()
    owned: _Claims = []
    followed: _Claims = []
    for p in to_ask:
        key = p.request.cache_key
        if key in run.in_flight:
            followed.append((p, run.in_flight[key]))
        else:
            run.in_flight[key] = loop.create_future()
            owned.append((p, run.in_flight[key]))
    return owned, followed


def _release(
    run: _LabelRun, pending: UnsentRequest, claim: asyncio.Future, answer: dict[str, Any] | None
) -> None:
    """Hand a claimed question's answer (None: none came) to the items waiting for it."""
    key = pending.request.cache_key
    if run.in_flight.get(key) is claim:  # (a failed question may be claimed anew since)
        del run.in_flight[key]
    if not claim.done():
        claim.set_result(answer)


async def _ask(
    run: _LabelRun,
    item: ItemRow,
    pending: UnsentRequest,
    claim: asyncio.Future,
    images: list[Image.Image],
) -> None:
    """Send one claimed request, parse and store the answer, and hand it to waiting items."""
    answer = None
    try:
        answer = await _send(run, item, pending, images)
        if answer is not None:
            _store_answer(run, item, pending, answer["text"], answer["usage"])
    finally:
        _release(run, pending, claim, answer)


async def _follow(
    run: _LabelRun, item: ItemRow, pending: UnsentRequest, answered: asyncio.Future
) -> None:
    """Store the answer another item is getting for the same question (nothing if it failed)."""
    answer = await answered
    if answer is not None:
        run.summary.cached += 1
        _store_answer(run, item, pending, answer["text"], answer["usage"])


async def _send(
    run: _LabelRun, item: ItemRow, pending: UnsentRequest, images: list[Image.Image]
) -> dict[str, Any] | None:
    """The teacher's answer to one request (its images as sent), or None when it failed
    (recorded) or was stopped."""
    from teacher_labeling.engine import TeacherStopped

    teacher, request = pending.teacher, pending.request
    if not run.active(teacher):
        return None
    request.images = images
    try:
        answer = await teacher.answer(request, item)
    except TeacherStopped as exc:
        _stop(run, teacher.name, str(exc))
        return None
    except TeacherError as exc:
        run.store.record_failure(
            request.cache_key, teacher.name, request.model, item.item_id, request.image, str(exc)
        )
        run.error(item.item_id, teacher.name, request.image, str(exc))
        return None
    _count_answer(run, teacher, answer.usage)
    return {"text": answer.text, "usage": answer.usage}


def _stop(run: _LabelRun, teacher: str, message: str) -> None:
    """Record that a teacher was stopped (its remaining requests are not sent); once per teacher."""
    if teacher not in run.summary.stopped:
        run.summary.stopped[teacher] = message
        run.store.log_event("label", message, "error", None, teacher)
        logger.error("%s", message)


def _count_answer(run: _LabelRun, teacher: Teacher, usage: dict[str, Any]) -> None:
    """Count one answer the teacher gave (asked, not cached) and what it cost."""
    run.summary.asked += 1
    run.summary.spend[teacher.name].add(
        run.prices[teacher.name],
        int(usage.get("prompt_tokens", 0)),
        int(usage.get("completion_tokens", 0)),
    )


def _store_answer(
    run: _LabelRun, item: ItemRow, pending: UnsentRequest, text: str, usage: dict
) -> None:
    """Parse an answer and store it with its labels or boxes; an unusable one as a failure."""
    teacher, request = pending.teacher, pending.request
    index = request.image  # None: the whole-item attributes question
    attributes: dict[str, Any] | None = None
    boxes: list[Box] | None = None
    try:
        if index is None:
            attributes, notes = parse_attributes(text, teacher.schema)
        else:
            boxes, notes = read_boxes(teacher, request, text)
    except AnswerParseError as exc:
        run.store.record_failure(
            request.cache_key, teacher.name, request.model, item.item_id, index, str(exc), text
        )
        what = "attributes" if index is None else "boxes"
        run.error(item.item_id, teacher.name, index, f"{what}: {exc}")
        return
    for note in notes:
        run.store.log_event("label", note, "warning", item.item_id, teacher.name, index)
        run.summary.warn(teacher.name, note, item.item_id)
    ids = run.store.record_answer(
        request.cache_key, teacher.name, request.model, item.item_id, index, text, usage,
        labels=attributes, boxes=boxes,
        # attributes are versioned by relabel generation; boxes are asked once
        generation=run.generation if index is None else 0,
    )  # fmt: skip
    if index is None:
        run.summary.labels += 1
    else:
        run.summary.boxes += len(ids)


def _fused(store: RunStore, item_id: str, names: list[str], fusion: FusionConfig) -> list[Any]:
    """The item's box teachers' current boxes, fused per image (FusedBox results)."""
    from teacher_labeling.fusion import fuse_boxes

    by_image: dict[int, list[Box]] = {}
    for _, box in store.boxes(item_id):
        if box.source in names:
            by_image.setdefault(box.image, []).append(box)
    return [
        result
        for image in sorted(by_image)
        for result in fuse_boxes(by_image[image], names, fusion.iou_threshold, fusion.policy)
    ]


def _fuse_item(run: _LabelRun, item: ItemRow, box_teachers: list[Teacher]) -> None:
    """Replace the item's fused boxes with a fusion of its box teachers' current boxes."""
    names = [t.name for t in box_teachers]
    fused = [result.box for result in _fused(run.store, item.item_id, names, run.fusion)]
    run.store.set_boxes(item.item_id, FUSED_SOURCE, fused)


def _agreement(store: RunStore, teachers: list[Teacher], fusion: FusionConfig) -> AgreementStats:
    """Agreement statistics of the box teachers over the whole run."""
    from teacher_labeling.fusion import agreement_stats

    names = [t.name for t in teachers if t.does_boxes]
    return agreement_stats(
        result for item in store.items() for result in _fused(store, item.item_id, names, fusion)
    )


@dataclass
class PendingRequests:
    """What a label run would send: requests, estimated tokens and cost per teacher."""

    items: int = 0
    per_teacher: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    usd: dict[str, float | None] = field(default_factory=dict)  # None: price unknown
    cached: int = 0


def pending_requests(
    store: RunStore,
    teachers: list[Teacher],
    limit: int | None = None,
    prices: dict[str, Price] | None = None,
    relabel: bool = False,
) -> PendingRequests:
    """Count, and price, the requests a label run would send, without sending any (--dry-run)."""
    from teacher_labeling.cost import request_cost

    bar = ProgressBar("dry run", 0, False)
    run = _LabelRun(store, teachers, prices or {}, FusionConfig(), int(relabel), bar)
    result = PendingRequests()
    seen: set[str] = set()
    for item in store.items(limit=limit):
        result.items += 1
        sizes = {r.index: (r.width or 0, r.height or 0) for r in store.images(item.item_id)}
        for p in _pending_requests(run, item, relabel):
            if p.cached is not None or p.request.cache_key in seen:
                continue  # answered already, or asked once for several items
            seen.add(p.request.cache_key)
            shown = [sizes[i] for i in p.image_indices] + [
                (c.region[2] - c.region[0], c.region[3] - c.region[1]) for c in p.crops
            ]
            if p.request.sent_size is not None:
                shown = [p.request.sent_size]
            prompt, completion = p.teacher.estimate_tokens(p.request, shown)
            name = p.teacher.name
            result.per_teacher[name] = result.per_teacher.get(name, 0) + 1
            total_in, total_out = result.tokens.get(name, (0, 0))
            result.tokens[name] = (total_in + prompt, total_out + completion)
            price, so_far = run.prices[name], result.usd.get(name, 0.0)
            result.usd[name] = (
                None
                if price is None or so_far is None
                else so_far + request_cost(price, prompt, completion)
            )
    result.cached = run.summary.cached
    return result
