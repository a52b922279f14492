"""ChatML in token space: build multi-turn prompts by concatenating token ids.

Qwen2-VL, Qwen2.5-VL and SmolLM2 all use ChatML (``<|im_start|>role\\n ... <|im_end|>\\n``). A turn's
generated ids are appended to the context as they were sampled, never decoded and re-encoded, so the
learner later scores exactly the sampled tokens (a frequent source of train/inference mismatch).
Images are written as ``<|vision_start|><|image_pad|><|vision_end|>``; the engine expands the single
pad token to the image's real token count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def expand_image_pads(ids: Sequence[int], pad_id: int | None, n: int) -> list[int]:
    """``ids`` with every image pad token repeated ``n`` times (what a VLM engine does to a prompt)."""
    return [x for t in ids for x in ([t] * n if t == pad_id else [t])]


@dataclass(frozen=True)
class ChatFormat:
    """Encodes ChatML segments with a tokenizer (anything with ``encode(text, add_special_tokens)``)."""

    tokenizer: object
    image_marker: str = "<|vision_start|><|image_pad|><|vision_end|>"

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def image_pad_id(self) -> int:
        return self._encode("<|image_pad|>")[0]

    @property
    def end_id(self) -> int:
        return self._encode("<|im_end|>")[0]

    def message(self, role: str, text: str, num_images: int = 0) -> list[int]:
        """``<|im_start|>role\\n[images]text<|im_end|>\\n`` as ids."""
        return self._encode(f"<|im_start|>{role}\n{self.image_marker * num_images}{text}<|im_end|>\n")

    def generation_prompt(self, role: str = "assistant") -> list[int]:
        """The header after which the model writes its reply."""
        return self._encode(f"<|im_start|>{role}\n")

    def close_reply(self, output_ids: tuple[int, ...] | list[int]) -> list[int]:
        """Ids to append after a sampled reply so the next message starts cleanly.

        A reply that stopped on ``<|im_end|>`` needs only the newline; one cut by the token budget
        also needs the end token.
        """
        if output_ids and output_ids[-1] == self.end_id:
            return self._encode("\n")
        return self._encode("<|im_end|>\n")

    def prompt(self, system: str | None, user: str, num_images: int = 0) -> list[int]:
        """A complete first prompt: optional system message, one user message, assistant header."""
        ids = self.message("system", system) if system else []
        return ids + self.message("user", user, num_images) + self.generation_prompt()
