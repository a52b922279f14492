"""The only module that imports deepspeed: the data-parallel world and the ZeRO-wrapped model.

* :func:`init_world` joins one torch.distributed world (gloo on CPU, NCCL on GPU) from explicit
  rank / world size / rendezvous address / local rank (:mod:`learner.device`) -- Ray actors call
  it themselves (stack.md, "DeepSpeed on CPU"); several learners in one process share the world.
* :func:`zero3_init`: under ZeRO-3 the model is built partitioned: transformers' ``from_pretrained``
  sees an ``HfDeepSpeedConfig`` and constructs the model inside ``deepspeed.zero.Init``, loading
  each module's weights gathered and re-partitioned, so no rank ever holds the whole model (LoRA
  matrices and the value head, built afterwards, are partitioned by ``deepspeed.initialize``).
* :class:`ZeroEngine` wraps a :class:`~learner.model.PolicyModel` with ``deepspeed.initialize``:
  ZeRO stage 2 or 3, fp32 or bf16, a client torch optimizer and LR schedule, gradient clipping,
  and caller-owned gradient accumulation (``managed_gradient_accumulation: false``: each
  ``backward`` accumulates, each ``step`` is one optimizer update, so a minibatch may have any
  number of micro batches). ZeRO-3 needs ``stage3_param_persistence_threshold: 0`` or the small
  LoRA matrices are never partitioned.
* Gathering for export: every rank enters ``GatheredParameters(lora_params, modifier_rank=None)``
  (ZeRO-3), then reads the PEFT state dict; ranks that skip it hang the others.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import deepspeed
import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
import torch.distributed as dist
from peft import get_peft_model_state_dict

from learner.config import LearnerConfig
from learner.ds_config import ds_config
from learner.model import PolicyModel
from learner.optim import make_optimizer, make_scheduler, param_groups

__all__ = ["init_world", "ds_config", "zero3_init", "ZeroEngine"]

# DeepSpeed 0.19 still calls these torch.distributed names; torch 2.13 warns on every call.
warnings.filterwarnings("ignore", message=r".*(all_gather_into_tensor|reduce_scatter_tensor).*", category=FutureWarning)


def init_world(rank: int, world_size: int, master_addr: str, master_port: int, backend: str,
               local_rank: int) -> None:
    """Join (or check) the default process group of ``world_size`` ranks at ``master_addr:port``;
    ``local_rank`` is this rank's device index among the devices its process sees (DeepSpeed
    calls ``set_device(LOCAL_RANK)``; see :mod:`learner.device`)."""
    if dist.is_initialized():
        if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
            raise RuntimeError(f"process already in a world as rank {dist.get_rank()}/{dist.get_world_size()}, "
                               f"asked for {rank}/{world_size}")
        return
    # DeepSpeed reads these from the environment (LOCAL_RANK for the device); set them explicitly.
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                               init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=world_size)


@contextlib.contextmanager
def zero3_init(config: LearnerConfig, world_size: int) -> Iterator[None]:
    """Inside this block (ZeRO-3 only; a no-op otherwise) ``from_pretrained`` builds models
    partitioned over the world: an ``HfDeepSpeedConfig`` of :func:`ds_config` is alive, so
    transformers wraps construction in ``deepspeed.zero.Init`` and loads weights per module
    (``is_deepspeed_zero3_enabled``). transformers holds the config by weak reference only; this
    block keeps it alive and unregisters it on exit (several learners may share a process)."""
    if config.zero_stage != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    hf_config = HfDeepSpeedConfig(ds_config(config, world_size))
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del hf_config


def checkpoint_globals() -> list[type]:
    """The classes, besides tensors, containers and primitives, that DeepSpeed 0.19 pickles into the
    ZeRO-2/3 checkpoint files of this project's learners (the loss scaler, the stage enum, ZeRO-2's
    parameter slice addresses): found by loading ours with ``weights_only=True``. Each is rebuilt from
    plain values only (an enum from its value, the others by attribute assignment)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with torch's restricted unpickler
    (``weights_only=True``) and the :func:`checkpoint_globals` allow-list instead of DeepSpeed's
    ``weights_only=False``: a checkpoint directory from elsewhere cannot run code on load. Every file
    ``load_checkpoint`` reads for our layout (model states, ZeRO optimizer partitions) goes through
    ``checkpoint_engine.load``; a file naming another class fails to load, naming it."""

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(checkpoint_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


class ZeroEngine:
    """A PolicyModel under DeepSpeed ZeRO: forward, backward, step, gather, checkpoint, collectives."""

    def __init__(self, model: PolicyModel, config: LearnerConfig, world_size: int) -> None:
        self.config = config
        groups = param_groups(model, config.optim)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            model_parameters=groups,
            optimizer=lambda params: make_optimizer(params, config.optim),
            lr_scheduler=lambda opt: make_scheduler(opt, config.optim),
            config=ds_config(config, world_size),
        )

    @property
    def module(self) -> PolicyModel:
        return self.engine.module

    @property
    def rank(self) -> int:
        return dist.get_rank()

    @property
    def world_size(self) -> int:
        return dist.get_world_size()

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def forward(self, **kwargs) -> tuple:
        """The module's forward with tensor inputs moved to the engine's device; its (B, T) outputs
        come back on the CPU (autograd follows the copy; the (B, T, V) logits never leave the device)."""
        moved = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        return tuple(None if x is None else x.cpu() for x in self.engine(**moved))

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients of ``loss`` (already scaled by the caller; no 1/GAS scaling here)."""
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        """One optimizer + schedule step over the accumulated gradients; returns the global grad norm
        (before clipping). A non-finite norm makes DeepSpeed skip the step (see :meth:`step_applied`)."""
        self.engine.step()
        return self._grad_norm()

    def step_applied(self) -> bool:
        """Whether the last :meth:`step` (or :meth:`step_off_schedule`) changed the weights. ZeRO-2
        and ZeRO-3 (fp32 and bf16, ``check_grad_overflow`` on, DeepSpeed's default) check the
        all-reduced gradient norm before the update: when it is not finite they zero the gradients
        and skip the optimizer and the LR scheduler (the skip is counted in
        ``engine.skipped_steps``). The same answer on every rank (the norm is global)."""
        return bool(self.engine.was_step_applied())

    def step_off_schedule(self, peak_scale: float = 1.0) -> float:
        """One optimizer step at ``peak_scale`` x each group's PEAK rate (``initial_lr``), leaving the
        LR schedule where it was (SFT steps must not use up the RL warm-up or decay); returns the
        global grad norm (before clipping)."""
        groups = self.optimizer.param_groups
        scheduled = [g["lr"] for g in groups]
        for g in groups:
            g["lr"] = g.get("initial_lr", g["lr"]) * peak_scale
        scheduler, self.engine.lr_scheduler = self.engine.lr_scheduler, None  # DeepSpeed skips it
        try:
            self.engine.step()
        finally:
            self.engine.lr_scheduler = scheduler
            for g, lr in zip(groups, scheduled):
                g["lr"] = lr
        return self._grad_norm()

    def _grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ---- gathered state (every rank must call) -------------------------------------------------

    def _gathered(self, params: list[torch.nn.Parameter]):
        if self.config.zero_stage == 3:
            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        return contextlib.nullcontext()

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """Full PEFT adapter state dict (checkpoint names, ``base_model.model.`` prefix), on every rank."""
        peft_model = self.module.peft_model
        params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        with self._gathered(params):
            return {k: v.detach().clone().contiguous().cpu() for k, v in get_peft_model_state_dict(peft_model).items()}

    def value_head_state(self) -> dict[str, torch.Tensor]:
        """Full value-head state dict (empty without a value head), on every rank."""
        head = self.module.value_head
        if head is None:
            return {}
        with self._gathered(list(head.parameters())):
            return {k: v.detach().clone().cpu() for k, v in head.state_dict().items()}

    # ---- checkpoints -----------------------------------------------------------------------------

    def save(self, directory: str | Path, tag: str, client_state: dict) -> None:
        """Trainable weights, optimizer (per-rank partitions) and scheduler state (all ranks call)."""
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state,
                                    exclude_frozen_parameters=True)

    def load(self, directory: str | Path, tag: str) -> dict:
        """Inverse of :meth:`save`; returns the client state. Every file is unpickled with
        ``weights_only=True`` (:class:`SafeCheckpointEngine`): a checkpoint cannot run code."""
        if type(self.engine.checkpoint_engine) is TorchCheckpointEngine:  # the one our ds_config selects
            self.engine.checkpoint_engine = SafeCheckpointEngine(self.engine._config)
        _, client = self.engine.load_checkpoint(str(directory), tag=tag, load_module_strict=False)
        if client is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        return client

    # ---- collectives -----------------------------------------------------------------------------

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (returns a new tensor; float64 for exactness of scalar sums)."""
        if self.world_size == 1:
            return x.clone()
        y = x.to(self.device, copy=True)  # NCCL reduces device tensors only
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y.cpu()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()
