"""Which device a learner rank uses and which torch.distributed backend joins its world: pure
functions of what the rank's process was given, so the Ray edge (or a local launcher) reads the
environment once and passes the answers down (no environment reads deep inside).

Inside a Ray actor with GPUs, Ray sets ``CUDA_VISIBLE_DEVICES`` to the actor's own GPUs, so the
actor's first GPU is device 0 whatever its global rank; DeepSpeed calls
``set_device(LOCAL_RANK)`` and ``init_process_group(device_id=cuda:LOCAL_RANK)``, so ``LOCAL_RANK``
must be that index ("invalid device ordinal" for ranks >= 1 otherwise). With
``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` Ray leaves the variable alone and the index is the
position of ``ray.get_gpu_ids()[0]`` among the visible devices (as OpenRLHF does).

On CPU DeepSpeed 0.19.8's CPU accelerator reads ``LOCAL_RANK`` only as its ``current_device()``
(``set_device`` is a no-op), and the shm all-reduce turns on only when ``LOCAL_SIZE`` equals the
world size (``csrc/cpu/comm/shm_interface.cpp``); the learner leaves ``LOCAL_SIZE`` unset and keeps
``LOCAL_RANK`` = the global rank, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["RankDevice", "local_rank", "resolve_backend", "rank_device", "gpus_shared", "local_process_device",
           "noset_visible_devices"]

BACKENDS = ("auto", "gloo", "nccl")
"""Choices of ``LearnerConfig.backend``: "auto" = nccl when the rank has a GPU of its own, gloo
otherwise (see :func:`resolve_backend`)."""


@dataclass(frozen=True)
class RankDevice:
    """What one rank hands to ``init_world``: its ``LOCAL_RANK`` and its process-group backend."""

    local_rank: int
    """Index of the rank's device among the devices its process sees (CPU: the global rank)."""
    backend: str
    """"gloo" or "nccl" (never "auto")."""


def noset_visible_devices(value: str | None) -> bool:
    """True when ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`` holds ``value`` that Ray reads as
    set (Ray's ``env_bool``: "1" or "true", any case)."""
    return value is not None and value.strip().lower() in ("1", "true")


def local_rank(rank: int, gpu_ids: Sequence[int | str], cuda_visible_devices: str | None,
               noset_env: bool) -> int:
    """``LOCAL_RANK`` of global rank ``rank`` given its GPU ids (``ray.get_gpu_ids()``), the
    ``CUDA_VISIBLE_DEVICES`` of its process (None when unset) and whether Ray was told not to set
    that variable. No GPU: the global rank (CPU). Ray restricted the visible devices: 0 (the first
    visible device is the actor's first GPU; ranks sharing one GPU both get 0). Otherwise: the
    position of ``gpu_ids[0]`` in ``CUDA_VISIBLE_DEVICES``, or the id itself when it is unset."""
    if not gpu_ids:
        return rank
    if not noset_env:
        return 0
    first = str(gpu_ids[0]).strip()
    if cuda_visible_devices is None:
        return int(first)
    visible = [d.strip() for d in cuda_visible_devices.split(",") if d.strip()]
    if first not in visible:
        raise ValueError(f"GPU {first} of rank {rank} is not in CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}")
    return visible.index(first)


def resolve_backend(choice: str, has_gpu: bool, shares_gpu: bool = False) -> str:
    """The torch.distributed backend for ``choice``. "auto": nccl when the rank has a GPU of its
    own, gloo otherwise -- on the CPU, and when ranks share a GPU (fractional GPUs), since NCCL
    refuses two ranks of one communicator on one device ("Duplicate GPU detected", NCCL >= 2.5,
    NVIDIA/nccl#418). An explicit nccl in either of those cases is refused here, at start."""
    if choice not in BACKENDS:
        raise ValueError(f"unknown backend {choice!r}; known: {BACKENDS}")
    if choice == "auto":
        return "nccl" if has_gpu and not shares_gpu else "gloo"
    if choice == "nccl" and not has_gpu:
        raise ValueError("learner.backend = 'nccl' needs a GPU on every rank; this rank has none "
                         "(give the learner GPUs, or use 'auto' / 'gloo')")
    if choice == "nccl" and shares_gpu:
        raise ValueError("learner.backend = 'nccl' with learner ranks sharing a GPU (a fraction of one "
                         "each): NCCL refuses two ranks on one device; use 'auto' / 'gloo' or whole GPUs")
    return choice


def rank_device(backend: str, rank: int, gpu_ids: Sequence[int | str], cuda_visible_devices: str | None,
                noset_env: bool, shares_gpu: bool = False) -> RankDevice:
    """:func:`local_rank` and :func:`resolve_backend` together: a rank has a GPU iff ``gpu_ids``;
    ``shares_gpu``: some GPU of the group is held by two of its ranks (:func:`gpus_shared`)."""
    return RankDevice(local_rank(rank, gpu_ids, cuda_visible_devices, noset_env),
                      resolve_backend(backend, bool(gpu_ids), shares_gpu=bool(gpu_ids) and shares_gpu))


def gpus_shared(placements: Sequence[tuple[str, Sequence[int | str]]]) -> bool:
    """True when two ranks of one group hold the same GPU: ``placements`` is (node id, GPU ids) per
    rank (fractional GPUs packed onto one device). Every rank must then use the same non-NCCL
    backend, so the group decides this once, before any rank joins the world."""
    seen: set[tuple[str, str]] = set()
    for node, ids in placements:
        for g in ids:
            key = (node, str(g))
            if key in seen:
                return True
            seen.add(key)
    return False


def local_process_device(backend: str, rank: int, cuda_device_count: int) -> RankDevice:
    """The device of rank ``rank`` of a local (non-Ray) world whose processes all see the machine's
    ``cuda_device_count`` GPUs: GPU ``rank`` when there is one, the CPU otherwise; ``LOCAL_RANK`` is
    the rank either way."""
    return RankDevice(rank, resolve_backend(backend, rank < cuda_device_count))
