"""Pass-through vLLM engine arguments (``EngineConfig.vllm_args``) and the executor choice.

Unit tests check names against the installed vLLM's ``EngineArgs`` without importing vllm; the
integration test starts one real engine and reads the value back from vLLM's own config.
"""

from __future__ import annotations

import subprocess
import sys

import pydantic
import pytest

from cluster.config import RecipeError, build_recipe
from rollout.engine import config as engine_config
from rollout.engine.config import OWNED_VLLM_ARGS, EngineConfig, llm_kwargs, vllm_engine_arg_names


@pytest.mark.unit
def test_engine_arg_names_come_from_vllms_source_without_importing_it() -> None:
    code = ("import sys\nfrom rollout.engine.config import vllm_engine_arg_names as f\nnames = f()\n"
            "print(len(names), 'max_num_seqs' in names, 'enable_prefix_caching' in names, 'vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 100 and out[1:] == ["True", "True", "False"]
    names = vllm_engine_arg_names()
    assert "_api_process_count" not in names  # private fields are not user arguments
    assert set(OWNED_VLLM_ARGS) <= names  # every owned key is a real argument (no stale entry)


@pytest.mark.unit
def test_pass_through_key_reaches_llm_kwargs() -> None:
    config = EngineConfig(vllm_args={"max_num_seqs": 4, "enable_prefix_caching": False})
    kw = llm_kwargs(config, "/m", multimodal=False)
    assert kw["max_num_seqs"] == 4 and kw["enable_prefix_caching"] is False
    assert kw["max_model_len"] == 2048 and kw["enable_chunked_prefill"] is False  # typed ones untouched
    assert "vllm_args" not in kw


@pytest.mark.unit
@pytest.mark.parametrize("key, field", [("max_model_len", "max_model_len"), ("kv_cache_memory_bytes", "kv_cache_gib"),
                                        ("limit_mm_per_prompt", "max_images_per_prompt"),
                                        ("enable_chunked_prefill", "device")])
def test_owned_key_is_refused_naming_the_typed_field(key: str, field: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=rf"vllm_args\.{key}: set by the typed field {field}"):
        EngineConfig(vllm_args={key: 1})


@pytest.mark.unit
def test_misspelt_key_is_refused_at_recipe_load_with_its_dotted_path() -> None:
    tree = {"roles": {"policy": {"engine": {"vllm_args": {"max_num_seq": 4}}}}}
    with pytest.raises(RecipeError) as err:
        build_recipe(tree, "r.toml")
    msg = str(err.value)
    assert "roles.policy.engine.vllm_args" in msg
    assert "vllm_args.max_num_seq: not an argument of vLLM's EngineArgs (misspelt?)" in msg


@pytest.mark.unit
def test_names_unchecked_with_a_note_when_vllm_is_absent(monkeypatch, caplog) -> None:
    monkeypatch.setattr(engine_config, "_engine_args_file", lambda: None)
    vllm_engine_arg_names.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            config = EngineConfig(vllm_args={"max_num_seq": 4})
        assert config.vllm_args == {"max_num_seq": 4}
        assert "vLLM is not installed here" in caplog.text
        with pytest.raises(pydantic.ValidationError, match=r"vllm_args\.seed: set by the typed field seed"):
            EngineConfig(vllm_args={"seed": 1})
    finally:
        vllm_engine_arg_names.cache_clear()


@pytest.mark.unit
def test_executor_backend_follows_tensor_parallel_size() -> None:
    assert EngineConfig().executor_backend is None
    assert "distributed_executor_backend" not in llm_kwargs(EngineConfig(), "/m", False)
    tp2 = EngineConfig(device="cuda", tensor_parallel_size=2)
    assert tp2.executor_backend == "ray"
    assert llm_kwargs(tp2, "/m", False)["distributed_executor_backend"] == "ray"
    with pytest.raises(pydantic.ValidationError, match="current platform cpu does not support ray"):
        EngineConfig(tensor_parallel_size=2)


@pytest.mark.integration
def test_pass_through_reaches_a_real_engine(models_dir) -> None:
    """One cheap engine start (tiny text LM, no LoRA): vLLM's scheduler runs with max_num_seqs = 4."""
    from rollout.engine.vllm_engine import VLLMEngine

    config = EngineConfig(kv_cache_gib=0.125, max_model_len=256, enable_lora=False, vllm_args={"max_num_seqs": 4})
    engine = VLLMEngine(models_dir / "tiny-text-lm", config)
    assert engine.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs == 4
