"""Optimizer, parameter groups and learning-rate schedule (pure torch; DeepSpeed wraps the result).

Only trainable parameters are optimised: the LoRA matrices (``lr``) and the value head
(``value_lr``, seed 003 used a separate, larger rate for it). The schedule is a multiplier of the
peak rate per optimizer step: linear warm-up, then constant, cosine or linear decay to
``min_lr_ratio`` (the shapes of transformers' ``get_cosine_schedule_with_warmup`` /
``get_linear_schedule_with_warmup``, plus a floor).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from learner.config import OptimConfig

__all__ = ["lr_multiplier", "param_groups", "make_optimizer", "make_scheduler"]


def lr_multiplier(step: int, cfg: OptimConfig) -> float:
    """Factor applied to the peak learning rate at optimizer step ``step`` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / (cfg.warmup_steps + 1)
    if cfg.schedule == "constant":
        return 1.0
    span = max(cfg.total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters split into the adapter group and the value-head group (if any)."""
    head, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith("value_head.") else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr, "name": "adapter"}]
    if head:
        groups.append({"params": head, "lr": cfg.value_lr or cfg.lr, "name": "value_head"})
    return groups


def make_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """torch AdamW (decoupled weight decay) or plain SGD over ``groups``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step :func:`lr_multiplier` schedule over every group's peak rate."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
