"""Random-init Qwen2-VL, Qwen2.5-VL and Qwen2 text models written as Hugging Face directories.

The configs follow Qwen/Qwen2-VL-2B-Instruct and Qwen/Qwen2.5-VL-3B-Instruct (``config.json``)
with every width shrunk to a :mod:`deploy.offline_models.presets` preset; the weights are
transformers' own initialisation under a fixed torch seed, saved as float32 safetensors, so
rebuilding a preset with the same torch/transformers gives byte-identical files (tested; torch's
vectorised CPU samplers may differ across instruction sets, so compare hashes per machine kind).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from deploy.offline_models.presets import TextLmPreset, TextPreset, VisionPreset, VlmPreset


def _token_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    """The special ids a Qwen config names, read from the tokenizer."""
    ids = tok.convert_tokens_to_ids
    return {"bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>")}


def text_config(p: TextPreset, tok: PreTrainedTokenizerFast, mrope: bool) -> dict:
    """Keyword arguments of a Qwen2 decoder config for preset ``p`` (M-RoPE sections if ``mrope``)."""
    rope = {"rope_type": "default", "rope_theta": 1000000.0}
    if mrope:
        rope["mrope_section"] = p.mrope_section
    return dict(
        vocab_size=len(tok), hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_kv_heads, max_position_embeddings=p.max_position_embeddings,
        rms_norm_eps=1e-6, rope_parameters=rope, tie_word_embeddings=False, **_token_ids(tok),
    )


def vision_config(arch: str, v: VisionPreset, out_hidden: int) -> dict:
    """Vision tower config; Qwen2.5-VL names the widths differently and adds window attention."""
    common = dict(depth=v.depth, num_heads=v.num_heads, patch_size=v.patch_size, in_channels=3,
                  spatial_merge_size=v.spatial_merge_size, temporal_patch_size=v.temporal_patch_size)
    if arch == "qwen2_vl":
        return dict(common, embed_dim=v.embed_dim, hidden_size=out_hidden, mlp_ratio=v.mlp_dim // v.embed_dim)
    window = 4 * v.patch_size * v.spatial_merge_size  # Qwen2.5-VL: 112 px = 4 merged tokens a side
    return dict(common, hidden_size=v.embed_dim, intermediate_size=v.mlp_dim, out_hidden_size=out_hidden,
                window_size=window, fullatt_block_indexes=[v.depth - 1], tokens_per_second=2)


def vlm_config(p: VlmPreset, tok: PreTrainedTokenizerFast) -> Qwen2VLConfig | Qwen2_5_VLConfig:
    """The full VLM config: text + vision + the vision token ids of ``tok``."""
    cls = Qwen2VLConfig if p.arch == "qwen2_vl" else Qwen2_5_VLConfig
    ids = tok.convert_tokens_to_ids
    return cls(
        text_config=text_config(p.text, tok, mrope=True),
        vision_config=vision_config(p.arch, p.vision, p.text.hidden_size),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def vlm_processor(p: VlmPreset, tok: PreTrainedTokenizerFast) -> Qwen2VLProcessor | Qwen2_5_VLProcessor:
    """The architecture's processor around Qwen2-VL's image/video processors (Qwen2.5-VL uses the
    same ones) with the preset's pixel bounds."""
    v, img = p.vision, p.image
    shape = dict(patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                 temporal_patch_size=v.temporal_patch_size,
                 size={"shortest_edge": img.min_pixels, "longest_edge": img.max_pixels})
    cls = Qwen2VLProcessor if p.arch == "qwen2_vl" else Qwen2_5_VLProcessor
    return cls(image_processor=Qwen2VLImageProcessorPil(**shape), tokenizer=tok,
               video_processor=Qwen2VLVideoProcessor(**shape), chat_template=tok.chat_template)


LM_HEAD_STD = 0.25
"""Init std of the output projection. transformers' 0.02 leaves a random tiny model unable to
become confident under LoRA: the head stays frozen, the final RMSNorm output has norm
sqrt(hidden) (~10), so no hidden state can give any token a logit above ~2, i.e. p <= e^2/vocab
(~0.002). With 0.25 an aligned hidden state reaches logits of ~25 and random logits have std ~2.5:
the model can learn a task with LoRA in a few hundred CPU steps."""


def _init(cls: type[PreTrainedModel], config, seed: int) -> PreTrainedModel:
    """``cls(config)`` in float32 with the global torch RNG seeded (transformers' own init), then
    the output projection re-drawn with std :data:`LM_HEAD_STD`."""
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0.0, LM_HEAD_STD)
    return model


def _save(model: PreTrainedModel, tok: PreTrainedTokenizerFast, out: Path) -> None:
    model.generation_config = GenerationConfig(**_token_ids(tok))
    model.save_pretrained(out)


def build_vlm(p: VlmPreset, tok: PreTrainedTokenizerFast, out: Path) -> int:
    """Write a random-init VLM directory to ``out``; returns its parameter count."""
    cls = Qwen2VLForConditionalGeneration if p.arch == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    model = _init(cls, vlm_config(p, tok), p.seed)
    _save(model, tok, out)
    vlm_processor(p, tok).save_pretrained(out)
    return model.num_parameters()


def build_text_lm(p: TextLmPreset, tok: PreTrainedTokenizerFast, out: Path) -> int:
    """Write a random-init Qwen2 causal LM directory to ``out``; returns its parameter count."""
    model = _init(Qwen2ForCausalLM, Qwen2Config(**text_config(p.text, tok, mrope=False)), p.seed)
    _save(model, tok, out)
    tok.save_pretrained(out)
    return model.num_parameters()
