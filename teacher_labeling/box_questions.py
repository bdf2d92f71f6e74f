"""Asking a teacher for the boxes on one photo, the one way labeling and predict both use.

`box_request` builds the question with its own cache key (`Teacher.boxes_request`: model,
prompt, the original's pixel hash, the convention and, for qwen2.5-vl, the processor's pixel
limits that fix the sent size). `ask_boxes` sends the photo resized to that size and returns
the teacher's answer; `read_boxes` turns an answer (asked now or cached) into clean boxes in
pixels of the oriented original.
"""

from __future__ import annotations

import asyncio

from PIL import Image

from teacher_labeling.parse import parse_boxes
from teacher_labeling.teachers import Teacher, TeacherAnswer, TeacherRequest
from toolkit.boxes import Box, clean_boxes
from toolkit.images import resized
from toolkit.store import ItemRow


def box_request(
    teacher: Teacher, item: ItemRow, index: int, image_hash: str, original_size: tuple[int, int]
) -> TeacherRequest:
    """The question for the boxes on photo `index`, keyed before any pixel is decoded."""
    return teacher.boxes_request(item, index, None, image_hash, tuple(original_size))  # type: ignore[arg-type]


def sent_photo(request: TeacherRequest, original: Image.Image) -> Image.Image:
    """The oriented original as the request sends it (resized to its sent size)."""
    return resized(original, request.sent_size or original.size)


async def ask_boxes(
    teacher: Teacher, request: TeacherRequest, item: ItemRow, original: Image.Image
) -> TeacherAnswer:
    """The teacher's answer to a box request, its photo sent at the request's size
    (resized off the event loop; raises TeacherError or TeacherStopped)."""
    request.images = [await asyncio.to_thread(sent_photo, request, original)]
    return await teacher.answer(request, item)


def read_boxes(teacher: Teacher, request: TeacherRequest, text: str) -> tuple[list[Box], list[str]]:
    """The boxes of an answer in pixels of the oriented original, clipped, with notes on what
    was dropped, moved or clipped (raises AnswerParseError for an unusable answer)."""
    index, original = request.image, request.original_size
    assert index is not None and original is not None, "a box request knows its photo"
    sent = request.sent_size or original
    boxes, notes = parse_boxes(text, index, teacher.config.coords, sent, original)
    boxes, problems = clean_boxes(boxes, {index: original}, report_clipped=True)
    return boxes, notes + problems
