"""Model inputs of one micro batch: token ids, attention mask, and -- for VLMs -- pixel values.

Images travel as encoded bytes named by sha256 (``EpisodeBatch.images``); the rollout's
``prompt_ids`` already contain each image's expanded ``<|image_pad|>`` tokens, as the engine saw
them. Here each distinct image is run once through the model's own image processor
(``AutoProcessor.from_pretrained(model_dir).image_processor``) and cached by hash; a micro batch gets
``pixel_values`` (all its images' patches, in row then prompt order), ``image_grid_thw`` and the
``mm_token_type_ids`` transformers 5 requires for M-RoPE (1 on image tokens, 0 elsewhere). The
number of pad tokens of every image is checked against its grid.

Padding rows: every rank must run the same module calls in the same order (ZeRO-3 gathers each
module's parameters with a collective; ZeRO-2 reduces every trainable gradient), so

* a rank with no rows left for a micro-batch slot runs a dummy row, and
* on a VLM, a micro batch without any image gets a dummy one-image row, so the vision tower runs
  everywhere.

Dummy rows come after the real ones; the caller multiplies their outputs by 0.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from PIL import Image

__all__ = ["VisionSpec", "ImageEncoder", "ModelInputs", "make_inputs"]


@dataclass(frozen=True)
class VisionSpec:
    """Special token ids of a Qwen2-VL style model."""

    image_token_id: int
    vision_start_id: int
    vision_end_id: int

    @staticmethod
    def from_config(cfg) -> VisionSpec:
        return VisionSpec(cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id)


class ImageEncoder:
    """Encoded image bytes -> ``(pixel_values (P, D), grid_thw (3,))`` through the image processor,
    cached by content hash (a group of G samples shows the same image G times)."""

    def __init__(self, image_processor, spec: VisionSpec) -> None:
        self.processor = image_processor
        self.spec = spec
        self.merge = int(getattr(image_processor, "merge_size", 2))
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def encode(self, key: str, data: bytes | None = None, image: Image.Image | None = None):
        if key not in self._cache:
            img = image if image is not None else Image.open(io.BytesIO(data)).convert("RGB")
            out = self.processor(images=[img], return_tensors="pt")
            self._cache[key] = (out["pixel_values"], out["image_grid_thw"][0])
        return self._cache[key]

    def num_tokens(self, grid: torch.Tensor) -> int:
        """LLM tokens of one image: patches / merge_size^2."""
        return int(grid.prod()) // (self.merge ** 2)

    def dummy_row(self) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """``<|vision_start|> pad * k <|vision_end|>`` ids of a small grey image, with its pixels/grid."""
        pv, grid = self.encode("__dummy__", image=Image.new("RGB", (28, 28), (128, 128, 128)))
        s = self.spec
        return [s.vision_start_id] + [s.image_token_id] * self.num_tokens(grid) + [s.vision_end_id], pv, grid

    def clear(self) -> None:
        self._cache.clear()


@dataclass(frozen=True)
class ModelInputs:
    """Inputs of one forward; rows ``[0, num_real)`` are the requested rows, the rest dummies."""

    input_ids: torch.Tensor
    """(R, T) int64."""
    attention_mask: torch.Tensor
    """(R, T) int64 (1 on tokens)."""
    logits_from: int
    """First position whose logits are needed (earliest prompt end minus one)."""
    num_real: int
    """Rows that belong to the batch."""
    vision: Mapping[str, torch.Tensor]
    """``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids`` for VLMs; empty otherwise."""

    def forward_kwargs(self) -> dict:
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask,
                    logits_from=self.logits_from, **self.vision)


def _pad_rows(rows: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), T), dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def _images_of_rows(ids: torch.Tensor, hashes: Sequence[Sequence[str]], images: Mapping[str, bytes],
                    enc: ImageEncoder) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Encoded images in row/prompt order; checks each row's pad-token count against the grids."""
    out = []
    for i, hs in enumerate(hashes):
        encoded = [enc.encode(h, images[h]) for h in hs]
        want = sum(enc.num_tokens(g) for _, g in encoded)
        got = int((ids[i] == enc.spec.image_token_id).sum())
        if got != want:
            raise ValueError(f"row {i}: {got} image tokens in the prompt but its {len(hs)} image(s) need {want} "
                             "(prompt_ids must hold the expanded placeholders the engine saw)")
        out += encoded
    return out


def make_inputs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_lens: torch.Tensor,
    image_hashes: Sequence[Sequence[str]],
    images: Mapping[str, bytes],
    encoder: ImageEncoder | None,
    pad_id: int,
) -> ModelInputs:
    """Inputs for rows ``input_ids`` (R, T) right-padded (R may be 0), with dummy rows as the module
    doc says. ``prompt_lens`` (R,) fixes ``logits_from``."""
    rows = [input_ids[i, : int(attention_mask[i].sum())] for i in range(input_ids.shape[0])]
    hashes = [tuple(h) for h in image_hashes]
    encoded = _images_of_rows(input_ids, hashes, images, encoder) if encoder is not None else []
    if encoder is not None and not encoded:
        ids, pv, grid = encoder.dummy_row()
        rows.append(torch.tensor(ids, dtype=torch.int64))
        encoded = [(pv, grid)]
    if not rows:
        rows.append(torch.tensor([pad_id, pad_id], dtype=torch.int64))
    ids, mask = _pad_rows(rows, pad_id)
    logits_from = max(int(prompt_lens.min()) - 1, 0) if len(prompt_lens) else 0
    logits_from = min(logits_from, ids.shape[1] - 2)
    vision = {}
    if encoded:
        vision = {"pixel_values": torch.cat([p for p, _ in encoded]),
                  "image_grid_thw": torch.stack([g for _, g in encoded]),
                  "mm_token_type_ids": (ids == encoder.spec.image_token_id).to(torch.int64)}
    return ModelInputs(ids, mask, max(logits_from, 0), input_ids.shape[0], vision)
