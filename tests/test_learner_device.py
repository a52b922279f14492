"""What LOCAL_RANK and torch.distributed backend a learner rank gets (learner.device, pure).

Inside a Ray actor with one GPU, Ray sets CUDA_VISIBLE_DEVICES to that GPU, so device 0 is the
actor's GPU for every rank (the global rank was used before: "invalid device ordinal" on rank 1).
"""

import subprocess
import sys

import pytest

from learner.config import LearnerConfig
from learner.device import RankDevice, gpus_shared, local_process_device, local_rank, noset_visible_devices, \
    rank_device, resolve_backend

pytestmark = pytest.mark.unit


def test_one_gpu_per_actor_ray_restricted_visible_devices_is_device_0_on_every_rank():
    # 4 ranks on a node with GPUs 0..3, one each: Ray sets CUDA_VISIBLE_DEVICES="<its gpu>".
    got = [local_rank(r, [r], str(r), noset_env=False) for r in range(4)]
    assert got == [0, 0, 0, 0]
    assert rank_device("auto", 3, [3], "3", False) == RankDevice(local_rank=0, backend="nccl")


def test_noset_visible_devices_uses_the_gpu_id_position():
    # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1: every GPU stays visible, the id is the index.
    assert local_rank(5, [3], None, noset_env=True) == 3
    # the node itself restricted to GPUs 2,3 (ids as Ray reports them): gpu 3 is visible device 1
    assert local_rank(1, ["3"], "2,3", noset_env=True) == 1
    with pytest.raises(ValueError, match="GPU 7 of rank 0 is not in CUDA_VISIBLE_DEVICES='2,3'"):
        local_rank(0, [7], "2,3", noset_env=True)


def test_two_ranks_sharing_one_gpu_both_use_device_0_over_gloo():
    # num_gpus=0.5 each, packed on one device: both actors get gpu id 0 and CUDA_VISIBLE_DEVICES="0".
    # NCCL refuses two ranks on one device ("Duplicate GPU detected"): "auto" picks gloo, "nccl" is refused.
    shared = gpus_shared([("node-a", ["0"]), ("node-a", ["0"])])
    assert shared is True
    assert [rank_device("auto", r, [0], "0", False, shares_gpu=shared) for r in (0, 1)] == [RankDevice(0, "gloo")] * 2
    with pytest.raises(ValueError, match="NCCL refuses two ranks on one device"):
        rank_device("nccl", 1, [0], "0", False, shares_gpu=shared)


def test_fractional_gpus_on_distinct_devices_are_not_shared():
    # same GPU id on two nodes, or two GPUs of one node, or one rank alone at 0.5 GPU: nccl is fine
    assert gpus_shared([("node-a", ["0"]), ("node-b", ["0"])]) is False
    assert gpus_shared([("node-a", ["0"]), ("node-a", ["1"])]) is False
    assert gpus_shared([("node-a", ["0"])]) is False
    assert gpus_shared([("node-a", []), ("node-a", [])]) is False  # CPU ranks
    assert rank_device("auto", 1, [1], "1", False, shares_gpu=False) == RankDevice(0, "nccl")


def test_cpu_rank_keeps_its_global_rank_and_gloo():
    # DeepSpeed's CPU accelerator reads LOCAL_RANK only as current_device(); unchanged from before.
    assert [rank_device("auto", r, [], None, False) for r in (0, 1)] == [RankDevice(0, "gloo"), RankDevice(1, "gloo")]
    assert local_process_device("auto", 1, cuda_device_count=0) == RankDevice(1, "gloo")
    assert local_process_device("auto", 1, cuda_device_count=2) == RankDevice(1, "nccl")


def test_backend_auto_and_explicit_choices():
    assert LearnerConfig().backend == "auto"
    assert (resolve_backend("auto", True), resolve_backend("auto", False)) == ("nccl", "gloo")
    assert (resolve_backend("gloo", True), resolve_backend("nccl", True)) == ("gloo", "nccl")
    with pytest.raises(ValueError, match="learner.backend = 'nccl' needs a GPU"):
        resolve_backend("nccl", False)
    with pytest.raises(ValueError, match="unknown backend 'mpi'"):
        resolve_backend("mpi", False)


def test_noset_env_is_read_as_ray_reads_it():
    assert [noset_visible_devices(v) for v in (None, "", "0", "1", "true", "True")] == [False, False, False, True, True, True]


def test_device_and_ds_config_modules_import_no_heavy_framework():
    code = ("import sys, learner.device, learner.ds_config, learner.config\n"
            "print(','.join(sorted(m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
