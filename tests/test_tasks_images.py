"""Task image size bounds (``data.min_pixels`` / ``data.max_pixels``): hand-computed sizes, bytes
left untouched inside the bounds, pixels preserved on a flat image, one resize per shared image."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from rollout.tasks import load_task_source
from rollout.tasks.images import bounded_size, resize_image_bytes, resize_task_images
from rollout.types import Task

pytestmark = pytest.mark.unit


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def test_bounded_size_hand_computed():
    # 64x64 = 4096 px up to 112*112 = 12544: factor sqrt(12544 / 4096) = 1.75 -> 112 x 112
    assert bounded_size(64, 64, 112 * 112, None) == (112, 112)
    # 200x100 = 20000 px down to 5000: factor 0.5 -> 100 x 50
    assert bounded_size(200, 100, None, 5000) == (100, 50)
    # 30x20 = 600 px up to 1000: factor sqrt(5/3) = 1.2910 -> ceil(38.73), ceil(25.82) = 39 x 26 (>= 1000)
    assert bounded_size(30, 20, 1000, None) == (39, 26)
    # inside the bounds, or unbounded: unchanged
    assert bounded_size(64, 64, 56 * 56, 112 * 112) == (64, 64)
    assert bounded_size(64, 64, None, None) == (64, 64)


def test_bounded_size_rejects_crossed_bounds():
    with pytest.raises(ValueError, match="min_pixels 200 > max_pixels 100"):
        bounded_size(10, 10, 200, 100)


def test_resize_keeps_bytes_inside_bounds_and_colour_when_scaled():
    data = png((64, 64), (200, 30, 40))
    assert resize_image_bytes(data, 1000, 5000) is data
    bigger = resize_image_bytes(data, 112 * 112, None)
    img = Image.open(io.BytesIO(bigger))
    assert img.size == (112, 112) and img.format == "PNG"
    assert img.getcolors() == [(112 * 112, (200, 30, 40))]  # a flat image stays exactly that colour


def test_resize_task_images_shares_one_result_per_image_and_skips_text_tasks():
    shared = png((64, 64), (0, 0, 255))
    tasks = [Task("a", "q", "blue", image=shared), Task("b", "q2", "blue", image=shared), Task("c", "text", "x")]
    out = resize_task_images(tasks, 112 * 112, None)
    assert [t.task_id for t in out] == ["a", "b", "c"]
    assert out[0].image is out[1].image and Image.open(io.BytesIO(out[0].image)).size == (112, 112)
    assert out[2] is tasks[2]
    assert resize_task_images(tasks, None, None) == tasks


def test_easy_vqa_images_scaled_to_sixteen_qwen2_vl_tokens():
    tasks = load_task_source("easy_vqa", split="test", limit=3).tasks
    out = resize_task_images(tasks, 112 * 112, None)
    sizes = {Image.open(io.BytesIO(t.image)).size for t in out}
    assert sizes == {(112, 112)}  # (112 / 28) ** 2 = 16 image tokens after Qwen2-VL's 2x2 merge
