"""Adapter checks (rollout.engine.adapters) and the checksum count of a load, left truncation (rollout.engine.truncate) and the
engine config (rollout.engine.config): pure Python, no vLLM."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pydantic
import pytest
from safetensors.numpy import save_file

import rollout.adapter_artifact as artifact_module
from cluster.adapter_store import materialize
from rollout.adapter_artifact import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterArtifact, file_sha256
from rollout.engine.adapters import base_linear_modules, check_adapter, module_key, tensor_shapes
from rollout.engine.base import AdapterRejected
from rollout.engine.config import EngineConfig, llm_kwargs, vllm_environment
from rollout.engine.truncate import ChatTokens, truncate_left, vision_runs

pytestmark = pytest.mark.unit

# A fake base model: 2 decoder layers (hidden 6, MLP 10) and a vision block (dim 4, fused qkv 12).
BASE = {
    "model.language_model.layers.0.self_attn.q_proj.weight": (6, 6),
    "model.language_model.layers.0.mlp.up_proj.weight": (10, 6),
    "model.language_model.layers.1.self_attn.q_proj.weight": (6, 6),
    "model.language_model.layers.1.input_layernorm.weight": (6,),
    "model.visual.blocks.0.attn.qkv.weight": (12, 4),
    "lm_head.weight": (50, 6),
}


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    d = tmp_path / "base"
    d.mkdir()
    save_file({k: np.zeros(s, np.float32) for k, s in BASE.items()}, str(d / "model.safetensors"))
    return d


def write_adapter(d: Path, r: int = 8, modules: dict[str, tuple[int, int]] | None = None, **config) -> Path:
    """A PEFT-layout adapter: lora_A (r, in), lora_B (out, r) per module (PEFT key names)."""
    modules = modules if modules is not None else {"model.language_model.layers.0.self_attn.q_proj": (6, 6)}
    d.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for m, (out_f, in_f) in modules.items():
        tensors[f"base_model.model.{m}.lora_A.weight"] = np.ones((r, in_f), np.float32)
        tensors[f"base_model.model.{m}.lora_B.weight"] = np.ones((out_f, r), np.float32)
    save_file(tensors, str(d / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj"], **config}
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    return d


# ---- safetensors header ------------------------------------------------------------------------


def test_tensor_shapes_reads_hand_built_file(tmp_path: Path) -> None:
    # Two F32 tensors: a (2, 3) = 24 bytes at [0, 24), b (4,) = 16 bytes at [24, 40).
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [24, 40]}}
    raw = json.dumps(header).encode()
    f = tmp_path / "x.safetensors"
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(40))
    assert tensor_shapes(f) == {"a": (2, 3), "b": (4,)}
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(39))  # one byte short
    with pytest.raises(ValueError, match="truncated"):
        tensor_shapes(f)
    f.write_bytes(struct.pack("<Q", len(raw) + 100) + raw)  # header length past the end
    with pytest.raises(ValueError, match="runs past the end"):
        tensor_shapes(f)


def test_tensor_shapes_rejects_overlapping_ranges(tmp_path: Path) -> None:
    # b claims 16 bytes but a (24 bytes) ends at 24 and b starts at 20: not contiguous.
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [20, 36]}}
    raw = json.dumps(header).encode()
    f = tmp_path / "x.safetensors"
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(36))
    with pytest.raises(ValueError, match="tensor b occupies"):
        tensor_shapes(f)


def test_module_key_aligns_checkpoint_and_peft_names() -> None:
    assert module_key("model.language_model.layers.3.mlp.up_proj") == (False, "layers.3.mlp.up_proj")
    assert module_key("model.layers.3.mlp.up_proj") == (False, "layers.3.mlp.up_proj")
    assert module_key("model.visual.blocks.0.attn.qkv") == (True, "blocks.0.attn.qkv")
    assert module_key("lm_head") == (False, "lm_head")


def test_base_linear_modules_keeps_2d_weights(base_dir: Path) -> None:
    mods = base_linear_modules(base_dir)
    assert mods[(False, "layers.0.mlp.up_proj")] == (10, 6)
    assert mods[(True, "blocks.0.attn.qkv")] == (12, 4)
    assert (False, "layers.1.input_layernorm") not in mods  # 1-D: not a linear layer
    assert len(mods) == 5


# ---- check_adapter -----------------------------------------------------------------------------


def test_valid_adapter_passes(tmp_path: Path, base_dir: Path) -> None:
    a = write_adapter(tmp_path / "a", r=8, modules={
        "model.language_model.layers.0.self_attn.q_proj": (6, 6),
        "model.language_model.layers.0.mlp.up_proj": (10, 6),
    })
    sha = hashlib.sha256((a / "adapter_model.safetensors").read_bytes()).hexdigest()
    info = check_adapter(a, 8, base_linear_modules(base_dir), expected_sha256=sha)
    assert info.rank == 8 and info.alpha == 16.0 and info.sha256 == sha
    assert info.modules == ("model.language_model.layers.0.mlp.up_proj", "model.language_model.layers.0.self_attn.q_proj")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "adapter_config.json").unlink(), "adapter_config.json is missing"),
        (lambda d: (d / "adapter_config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "adapter_config.json").write_text('{"lora_alpha": 2}'), "no integer rank"),
        (lambda d: (d / "adapter_model.safetensors").unlink(), "adapter_model.safetensors is missing"),
        (lambda d: (d / "adapter_model.safetensors").write_bytes((d / "adapter_model.safetensors").read_bytes()[:-7]),
         "truncated"),
    ],
)
def test_broken_files_are_rejected(tmp_path: Path, base_dir: Path, mutate, message: str) -> None:
    a = write_adapter(tmp_path / "a")
    mutate(a)
    with pytest.raises(AdapterRejected, match=message):
        check_adapter(a, 8, base_linear_modules(base_dir))


def test_wrong_checksum_is_rejected(tmp_path: Path, base_dir: Path) -> None:
    a = write_adapter(tmp_path / "a")
    with pytest.raises(AdapterRejected, match="sha256"):
        check_adapter(a, 8, base_linear_modules(base_dir), expected_sha256="0" * 64)
    assert file_sha256(a / "adapter_model.safetensors") == hashlib.sha256(
        (a / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_checksum_is_computed_once_per_load(tmp_path: Path, base_dir: Path, monkeypatch) -> None:
    # A worker's load path: materialize (verify the arrived bytes, write the directory), then each
    # engine's check of the directory the ref names. Every sha256 the artifact module computes is
    # counted: one per materialize, none in the engines, none when a node's directory is reused.
    d = write_adapter(tmp_path / "src")
    art = AdapterArtifact.build("policy", 1, "tiny", {n: (d / n).read_bytes() for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)})
    base, calls = base_linear_modules(base_dir), []

    class CountingHashlib:
        @staticmethod
        def sha256(*data: bytes):
            calls.append(1)
            return hashlib.sha256(*data)

    monkeypatch.setattr(artifact_module, "hashlib", CountingHashlib)
    ref = materialize(art, tmp_path / "node")
    for _ in range(2):  # two engines of one worker serve the adapter
        assert check_adapter(ref.path, 8, base, ref.sha256).rank == 8
    assert len(calls) == 1
    assert materialize(art, tmp_path / "node") == ref  # a second worker of the node reuses the directory
    assert len(calls) == 2


def test_over_rank_is_rejected_from_config_and_from_tensors(tmp_path: Path, base_dir: Path) -> None:
    base = base_linear_modules(base_dir)
    with pytest.raises(AdapterRejected, match="rank 16 > max_lora_rank 8"):
        check_adapter(write_adapter(tmp_path / "a", r=16), 8, base)
    with pytest.raises(AdapterRejected, match="rank 32 > max_lora_rank 8"):
        check_adapter(write_adapter(tmp_path / "b", r=4, rank_pattern={"q_proj": 32}), 8, base)
    # Config claims r=8, tensors have rank 16: the tensors are what vLLM would load.
    lying = write_adapter(tmp_path / "c", r=16)
    (lying / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    with pytest.raises(AdapterRejected, match="q_proj: rank 16 > max_lora_rank 8"):
        check_adapter(lying, 8, base)


def test_unsupported_features_are_rejected(tmp_path: Path, base_dir: Path) -> None:
    base = base_linear_modules(base_dir)
    with pytest.raises(AdapterRejected, match="DoRA"):
        check_adapter(write_adapter(tmp_path / "a", use_dora=True), 8, base)
    with pytest.raises(AdapterRejected, match="modules_to_save"):
        check_adapter(write_adapter(tmp_path / "b", modules_to_save=["lm_head"]), 8, base)


def test_modules_must_exist_and_fit_the_base_model(tmp_path: Path, base_dir: Path) -> None:
    base = base_linear_modules(base_dir)
    with pytest.raises(AdapterRejected, match="layers.0.self_attn.k_proj: no such linear module"):
        check_adapter(write_adapter(tmp_path / "a", modules={"model.layers.0.self_attn.k_proj": (6, 6)}), 8, base)
    with pytest.raises(AdapterRejected, match="adapter maps 6 -> 7 but the base layer maps 6 -> 10"):
        check_adapter(write_adapter(tmp_path / "b", modules={"model.layers.0.mlp.up_proj": (7, 6)}), 8, base)


def test_vision_modules_need_tower_lora(tmp_path: Path, base_dir: Path) -> None:
    a = write_adapter(tmp_path / "a", modules={"model.visual.blocks.0.attn.qkv": (12, 4)})
    base = base_linear_modules(base_dir)
    with pytest.raises(AdapterRejected, match="vision-tower LoRA would be ignored"):
        check_adapter(a, 8, base)
    assert check_adapter(a, 8, base, vision_lora=True).modules == ("model.visual.blocks.0.attn.qkv",)


# ---- truncate_left -----------------------------------------------------------------------------

S, VS, VE, PAD = 1, 4, 5, 6  # <|im_start|>, <|vision_start|>, <|vision_end|>, <|image_pad|>
TOK = ChatTokens(message_start=S, vision_start=VS, vision_end=VE)
SYSTEM = [S, 10, 11]                        # positions 0-2
USER1 = [S, 12, VS, PAD, PAD, PAD, VE, 13]  # positions 3-10, image 0 at 5-9
REPLY1 = [S, 14, 15, 16]                    # positions 11-14
USER2 = [S, 17, VS, PAD, VE, 18]            # positions 15-20, image 1 at 17-19
HEADER = [S, 19]                            # positions 21-22
PROMPT = SYSTEM + USER1 + REPLY1 + USER2 + HEADER  # 23 tokens, 2 images


def test_vision_runs_finds_inclusive_ranges() -> None:
    assert vision_runs(PROMPT, TOK) == [(5, 9), (17, 19)]
    with pytest.raises(ValueError, match="never closed"):
        vision_runs([S, VS, PAD], TOK)


def test_fitting_prompt_is_unchanged() -> None:
    t = truncate_left(PROMPT, 23, TOK)
    assert t.ids == tuple(PROMPT) and t.kept_images == (0, 1) and t.dropped_tokens == 0


def test_drops_whole_oldest_messages() -> None:
    # max 20 -> must drop >= 3 tokens; first message start at >= 3 is 3 (USER1): drops SYSTEM only.
    t = truncate_left(PROMPT, 20, TOK)
    assert t.ids == tuple(USER1 + REPLY1 + USER2 + HEADER) and t.kept_images == (0, 1) and t.dropped_tokens == 3
    # max 19 -> must drop >= 4 tokens; next message start is 11: SYSTEM and USER1 (and image 0) go.
    t = truncate_left(PROMPT, 19, TOK)
    assert t.ids == tuple(REPLY1 + USER2 + HEADER) and t.kept_images == (1,) and t.dropped_tokens == 11


def test_keeps_the_system_message() -> None:
    # Prefix = SYSTEM (3 tokens); 15 left for the suffix of the 20 after it: cut at >= 8 -> 11.
    t = truncate_left(PROMPT, 18, TOK, keep_messages=1)
    assert t.ids == tuple(SYSTEM + REPLY1 + USER2 + HEADER) and t.kept_images == (1,) and t.dropped_tokens == 8
    assert len(t.ids) == 15


def test_no_boundary_fits_raises_unless_mid_message_allowed() -> None:
    # max 7 -> must cut at >= 16 but the last message start >= 16 is 21 (HEADER, 2 tokens): fits.
    assert truncate_left(PROMPT, 7, TOK).ids == tuple(HEADER)
    with pytest.raises(ValueError, match="no message boundary"):
        truncate_left([S, 10, 11, 12, 13, 14], 3, TOK)
    assert truncate_left([S, 10, 11, 12, 13, 14], 3, TOK, allow_mid_message=True).ids == (12, 13, 14)


def test_mid_message_cut_never_splits_an_image() -> None:
    one = [S, 12, VS, PAD, PAD, PAD, VE, 13, 14]  # image run at 2-6
    # max 5 -> cut at >= 4, inside the run (2, 6] -> moved to 7: keeps [13, 14] and no image.
    t = truncate_left(one, 5, TOK, allow_mid_message=True)
    assert t.ids == (13, 14) and t.kept_images == () and t.dropped_tokens == 7
    # max 7 -> cut at 2, exactly at vision_start: the whole run survives.
    t = truncate_left(one, 7, TOK, allow_mid_message=True)
    assert t.ids == (VS, PAD, PAD, PAD, VE, 13, 14) and t.kept_images == (0,)
    # Reference loop: for every max_len, the result's runs are whole and its images are the kept ones.
    for max_len in range(1, len(PROMPT) + 1):
        try:
            t = truncate_left(PROMPT, max_len, TOK, allow_mid_message=True)
        except ValueError:
            continue
        runs = vision_runs(t.ids, TOK)
        assert len(runs) == len(t.kept_images) and len(t.ids) <= max_len
        assert [t.ids[s:e + 1] for s, e in runs] == [tuple(PROMPT[s:e + 1]) for s, e in
                                                     (vision_runs(PROMPT, TOK)[k] for k in t.kept_images)]


def test_text_only_tokens() -> None:
    t = truncate_left([S, 10, S, 11, 12], 3, ChatTokens(message_start=S))
    assert t.ids == (S, 11, 12) and t.kept_images == ()


# ---- EngineConfig ------------------------------------------------------------------------------


def test_config_validates_and_maps_to_vllm() -> None:
    with pytest.raises(pydantic.ValidationError, match="max_lora_rank"):
        EngineConfig(max_lora_rank=12)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        EngineConfig(kv_cache=1)
    with pytest.raises(pydantic.ValidationError, match="tensor_parallel_size"):
        EngineConfig(tensor_parallel_size=2)
    cpu = EngineConfig(kv_cache_gib=0.5, max_loras=2)
    kw = llm_kwargs(cpu, "/m", multimodal=True)
    assert kw["kv_cache_memory_bytes"] == 1 << 29 and "gpu_memory_utilization" not in kw
    assert kw["max_loras"] == 3 and kw["max_cpu_loras"] == 3 and kw["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    gpu = EngineConfig(device="cuda", tensor_parallel_size=2, gpu_memory_utilization=0.4, enable_lora=False)
    kw = llm_kwargs(gpu, "/m", multimodal=False)
    assert kw["gpu_memory_utilization"] == 0.4 and kw["tensor_parallel_size"] == 2
    assert "kv_cache_memory_bytes" not in kw and "enable_lora" not in kw and "limit_mm_per_prompt" not in kw
    assert vllm_environment(cpu) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    mp = EngineConfig(in_process=False, omp_threads_bind="0-1", reserved_cpus=0)
    assert vllm_environment(mp) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
                                    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert EngineConfig.model_fields["kv_cache_gib"].description.startswith("CPU only")
