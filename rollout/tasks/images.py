"""Image size bounds for task images, applied once at load time (EasyR1's ``data.min_pixels`` /
``data.max_pixels``).

A Qwen2-VL image becomes one token per 28x28 pixels (14-pixel patches merged 2x2), so the pixel
count decides how much the model can see: easy-VQA's 64x64 PNGs give 4 image tokens at the tiny
models' default processor bounds, 112x112 gives 16. Resizing the task's bytes here, before the
rollout engine and the learner ever see them, keeps both sides on the same pixels (the processors
then leave an image already within their own bounds at its size, up to rounding to 28 pixels).

Aspect ratio is kept; the result is re-encoded as PNG (lossless) and the task id is unchanged.
"""

from __future__ import annotations

import io
import math
from dataclasses import replace
from typing import Iterable

from PIL import Image

from rollout.types import Task

__all__ = ["bounded_size", "resize_image_bytes", "resize_task_images"]


def bounded_size(width: int, height: int, min_pixels: int | None, max_pixels: int | None) -> tuple[int, int]:
    """``(width, height)`` scaled by one factor so that ``width * height`` lies within the bounds
    (None: unbounded on that side); unchanged when already inside. Scaling up rounds up, scaling
    down rounds down, so the bound holds after rounding."""
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
    area = width * height
    if max_pixels is not None and area > max_pixels:
        f = math.sqrt(max_pixels / area)
        return max(1, math.floor(width * f)), max(1, math.floor(height * f))
    if min_pixels is not None and area < min_pixels:
        f = math.sqrt(min_pixels / area)
        return math.ceil(width * f), math.ceil(height * f)
    return width, height


def resize_image_bytes(data: bytes, min_pixels: int | None, max_pixels: int | None) -> bytes:
    """Encoded image -> the same bytes when already within bounds, else a bicubic-resized RGB PNG."""
    with Image.open(io.BytesIO(data)) as img:
        size = bounded_size(img.width, img.height, min_pixels, max_pixels)
        if size == (img.width, img.height):
            return data
        out = io.BytesIO()
        img.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(out, format="PNG")
        return out.getvalue()


def resize_task_images(tasks: Iterable[Task], min_pixels: int | None, max_pixels: int | None) -> list[Task]:
    """Every task with its image resized into the bounds; an image shared by several tasks (easy-VQA
    asks many questions about one picture) is resized once and the result shared."""
    if min_pixels is None and max_pixels is None:
        return list(tasks)
    cache: dict[bytes, bytes] = {}
    out = []
    for task in tasks:
        if task.image is None:
            out.append(task)
            continue
        if task.image not in cache:
            cache[task.image] = resize_image_bytes(task.image, min_pixels, max_pixels)
        out.append(replace(task, image=cache[task.image]))
    return out
