"""A box teacher as `predict`'s box source (box_source: teacher).

The same question, cache key, sent size and answer reading as labeling a run
(`teacher_labeling.box_questions`): the photo is sent at the teacher's convention's size (a
smart_resize fixed point for qwen2.5-vl), the answer is read into clipped boxes in oriented
pixels. Answers are cached in predict's work store under the teacher cache key, so a
resumed predict asks nothing twice (and a run's labeling answers would be reused).

It implements toolkit.protocols.BoxSource (the core's: `finetune` and `teacher_labeling`
never import each other).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import ValidationError

from teacher_labeling.box_questions import ask_boxes, box_request, read_boxes
from teacher_labeling.teachers import (
    LabelConfig,
    OpenAITeacher,
    Teacher,
    TeacherConfig,
    TeacherError,
    build_teacher,
)
from toolkit.boxes import Box
from toolkit.config.load import prepare_config_data, read_yaml_config
from toolkit.errors import CroptuneError
from toolkit.protocols import ItemPhotos
from toolkit.schema import AttributeSchema, load_schema
from toolkit.store import ItemRow, RunStore

logger = logging.getLogger(__name__)


def box_teacher_config(value: dict[str, Any] | Path | str) -> TeacherConfig:
    """The one box teacher of a mapping or YAML file: a teacher config, or a label config
    whose `teachers:` hold exactly one with role boxes (or both)."""
    origin = "croptune.yaml box_teacher"
    data: Any = value
    if not isinstance(value, dict):
        path = Path(value)
        origin = str(path)
        data = read_yaml_config(path)
        # Keys checked (the closest one named) and a local model's folder resolved against
        # the file's folder, as every config croptune reads.
        kind = LabelConfig if "teachers" in data else TeacherConfig
        data = prepare_config_data(kind, data, path.resolve().parent, origin, stage="predict")
    if not isinstance(data, dict):
        raise CroptuneError(f"teacher config {origin} must hold a mapping")
    entries = data.get("teachers") if "teachers" in data else [data]
    try:
        configs = [TeacherConfig.model_validate(entry) for entry in entries or []]
    except ValidationError as exc:
        raise CroptuneError(f"teacher config {origin} is not valid:\n{exc}") from exc
    boxers = [c for c in configs if c.role in ("boxes", "both")]
    if len(boxers) != 1:
        names = ", ".join(c.name for c in boxers) or "none"
        raise CroptuneError(
            f"teacher config {origin} must name exactly one box teacher (role: boxes or both); "
            f"it has {len(boxers)} ({names})"
        )
    return boxers[0].model_copy(update={"role": "boxes"})


class TeacherBoxes:
    """Boxes of new photos asked from a box teacher (any OpenAI-compatible server, or the
    catalog's own reference boxes with `kind: reference`)."""

    def __init__(
        self,
        config: TeacherConfig,
        schema: AttributeSchema | None = None,
        client: Any = None,
    ) -> None:
        schema = schema or load_schema()
        self.config = config
        self.name = config.name
        self.teacher: Teacher = (
            OpenAITeacher(config, schema, client=client)
            if client is not None
            else build_teacher(config, schema)
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self.asked = 0

    def key(self) -> str:
        """The teacher's identity as far as its boxes go (model, server, convention, sizes)."""
        c = self.config
        return "teacher:" + json.dumps(
            [c.kind, c.model, c.endpoint_url, c.coords, c.min_pixels, c.max_pixels, c.temperature,
             c.max_tokens, c.image_format, c.jpeg_quality]
        )  # fmt: skip

    def prepare(self) -> None:
        """Fail before the first item when the key variable is missing."""
        self.teacher.check_ready()

    def boxes(self, photos: ItemPhotos) -> list[Box]:
        """The teacher's boxes on every photo of an item (asked concurrently, cached)."""
        if self._loop is None:
            # One loop for the whole run: the teacher's HTTP client and limiters live in it.
            self._loop = asyncio.new_event_loop()
        per_image = self._loop.run_until_complete(self._item_boxes(photos))
        boxes: list[Box] = []
        for result in per_image:
            if isinstance(result, BaseException):
                raise result
            boxes += result
        return boxes

    async def _item_boxes(self, photos: ItemPhotos) -> list[list[Box] | BaseException]:
        item, images, hashes, store = photos.item, photos.images, photos.hashes, photos.store
        return await asyncio.gather(
            *(
                self._image_boxes(item, index, images[index], hashes[index], store)
                for index in sorted(images)
            ),
            return_exceptions=True,  # every photo's request finishes (and is cached)
        )

    async def _image_boxes(
        self, item: ItemRow, index: int, image: Image.Image, image_hash: str, store: RunStore
    ) -> list[Box]:
        config = self.config
        request = box_request(self.teacher, item, index, image_hash, image.size)
        key = request.cache_key
        cached = store.cached_response(key)
        if cached is not None:
            text, usage = cached["text"], None
        else:
            try:
                answer = await ask_boxes(self.teacher, request, item, image)
            except TeacherError as exc:
                raise TeacherError(f"image {index}: {exc}") from exc
            self.asked += 1
            text, usage = answer.text, answer.usage
        boxes, notes = read_boxes(self.teacher, request, text)
        for note in notes:
            store.log_event("predict", note, "warning", item.item_id, self.name, index)
        if usage is not None:  # cached once it parsed: an unusable answer is asked again
            store.record_answer(key, self.name, config.model, item.item_id, index, text, usage)
        return [
            Box(b.image, *b.xyxy, label=b.label, source=self.name, score=b.score) for b in boxes
        ]

    def close(self) -> None:
        """Close the teacher's connections and the event loop."""
        if self._loop is not None:
            self._loop.run_until_complete(self.teacher.close())
            self._loop.close()
            self._loop = None
