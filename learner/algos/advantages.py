"""Advantage estimators as pure functions over padded tensors and group ids.

Conventions shared by every function here:

* ``mask`` (B, T) marks valid steps (bool or 0/1 float). A step is one token for token-level use,
  or one environment step for turn-level use (RL4VLM: row = episode, column = env step, the value
  predicted on the last prompt token of that step). Outputs are 0 at masked positions.
* ``scores`` (B,) is one outcome reward per sequence (the episode's scalar reward).
* ``group_ids`` (B,) says which samples share a prompt/task (GRPO's G samples of one question):
  any hashable values (ints, strings) in a list, numpy array or integer tensor; groups may have
  unequal sizes and need not be contiguous.
* Outputs are float32 for half/bfloat16 inputs (group statistics in bf16 are too coarse), else the
  input dtype; no gradient flows through an advantage.

Sources: GAE (Schulman et al. 2016, arXiv 1506.02438), GRPO (Shao et al. 2024, DeepSeekMath,
arXiv 2402.03300), Dr.GRPO (Liu et al. 2025, arXiv 2503.20783), RLOO (Ahmadian et al. 2024,
arXiv 2402.14740), REINFORCE++ (Hu 2025, arXiv 2501.03262); implementations compared against are
verl ``verl/trainer/ppo/core_algos.py`` and OpenRLHF ``openrlhf/trainer/ppo_utils/experience_maker.py``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from learner.algos.normalize import masked_whiten

__all__ = [
    "place_at_last_token",
    "gae",
    "discounted_returns",
    "group_index",
    "group_normalized_scores",
    "rloo_scores",
    "grpo_advantage",
    "dr_grpo_advantage",
    "rloo_advantage",
    "reinforce_pp_advantage",
    "reinforce_pp_baseline_advantage",
]

GroupIds = Sequence | np.ndarray | torch.Tensor


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def place_at_last_token(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) tensor holding ``scores[i]`` at row i's last valid position, 0 elsewhere.

    The usual way to turn an outcome reward into token-level rewards (verl puts the score on the
    last response token; OpenRLHF's ``compute_reward`` on the EOS position). Rows without a valid
    position get nothing.
    """
    m = mask.bool()
    T = m.shape[1]
    last = T - 1 - torch.flip(m, dims=[1]).to(torch.int64).argmax(dim=1)
    out = torch.zeros(m.shape, dtype=_work_dtype(scores), device=m.device)
    out[torch.arange(m.shape[0], device=m.device), last] = scores.to(out.dtype)
    return out * m


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    next_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation over (B, T) steps; returns ``(advantages, returns)``.

    For valid steps t < t' (t' the next valid step after t in the row):
    ``delta_t = r_t + gamma V_t' - V_t``, ``A_t = delta_t + gamma lam A_t'``, ``R_t = A_t + V_t``
    (Schulman et al. 2016, eq. 16). After the last valid step ``V = next_values`` (default 0: a
    terminated episode; pass V(s_T) for a truncated one) and ``A = 0``.

    Masked steps are skipped entirely: their rewards and values are ignored, they do not propagate,
    and they output 0. This covers right padding and also interior holes (tokens of another role or
    the environment between two policy turns are bridged, as verl's multi-turn GAE does), so the
    turn-level RL4VLM case is just ``mask`` marking which of the T columns are real env steps.
    ``rewards``/``values``: (B, T); ``next_values``: (B,) or None.
    """
    dt = _work_dtype(rewards)
    r, v, m = rewards.to(dt), values.to(dt), mask.bool()
    B, T = r.shape
    next_v = torch.zeros(B, dtype=dt, device=r.device) if next_values is None else next_values.to(dt)
    last_adv = torch.zeros(B, dtype=dt, device=r.device)
    adv = torch.zeros(B, T, dtype=dt, device=r.device)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_v - v[:, t]
        a_t = delta + gamma * lam * last_adv
        last_adv = torch.where(m[:, t], a_t, last_adv)
        next_v = torch.where(m[:, t], v[:, t], next_v)
        adv[:, t] = torch.where(m[:, t], a_t, torch.zeros_like(a_t))
    returns = torch.where(m, adv + v, torch.zeros_like(adv))
    return adv, returns


def discounted_returns(
    rewards: torch.Tensor, mask: torch.Tensor, gamma: float, next_values: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, T) discounted return-to-go ``G_t = r_t + gamma G_t'`` over valid steps (t' = next valid
    step; 0 at masked steps). Equals GAE with zero values and lam = 1; masked steps are skipped the
    same way. OpenRLHF ``get_cumulative_returns``; verl REINFORCE++ returns."""
    zeros = torch.zeros_like(rewards, dtype=_work_dtype(rewards))
    return gae(rewards, zeros, mask, gamma, 1.0, next_values)[0]


def group_index(group_ids: GroupIds) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids (B,) to dense int64 indices in [0, G) and the number of groups G."""
    ids = group_ids.cpu().numpy() if isinstance(group_ids, torch.Tensor) else np.asarray(group_ids)
    if ids.ndim != 1:
        raise ValueError(f"group_ids must be one-dimensional, got shape {ids.shape}")
    _, inverse = np.unique(ids, return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.int64), int(inverse.max(initial=-1)) + 1


def _group_sum(x: torch.Tensor, idx: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, idx, x)


def _group_moments(
    scores: torch.Tensor, group_ids: GroupIds, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (mean, std, size) of its group, each (B,). std is 0 for groups of size 1."""
    idx, G = group_index(group_ids)
    if idx.numel() != scores.numel():
        raise ValueError(f"group_ids has {idx.numel()} entries but scores has {scores.numel()}")
    idx = idx.to(scores.device)
    n = _group_sum(torch.ones_like(scores), idx, G)
    mean = _group_sum(scores, idx, G) / n
    ss = _group_sum((scores - mean[idx]) ** 2, idx, G)
    denom = (n - 1).clamp(min=1) if unbiased else n
    std = torch.where(n > 1, (ss / denom).sqrt(), torch.zeros_like(ss))
    return mean[idx], std[idx], n[idx]


@torch.no_grad()
def group_normalized_scores(
    scores: torch.Tensor,
    group_ids: GroupIds,
    norm_by_std: bool = True,
    unbiased_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """(B,) GRPO outcome advantage per sequence: ``(s - mean_g) / (std_g + eps)``.

    ``norm_by_std=False`` gives ``s - mean_g`` (Dr.GRPO; verl ``norm_adv_by_std_in_grpo``).
    ``unbiased_std=True`` uses the n-1 sample std (torch.std default, as verl); False the
    population std (TRL). Singleton groups get 0 (verl instead returns the raw score there).
    """
    s = scores.to(_work_dtype(scores))
    mean, std, _ = _group_moments(s, group_ids, unbiased_std)
    centered = s - mean
    return centered / (std + eps) if norm_by_std else centered


@torch.no_grad()
def rloo_scores(scores: torch.Tensor, group_ids: GroupIds) -> torch.Tensor:
    """(B,) REINFORCE leave-one-out advantage: ``s_i - mean_{j != i in group} s_j``.

    Equals ``n / (n - 1) * (s_i - mean_g)`` (verl ``compute_rloo_outcome_advantage``); singleton
    groups get 0. Ahmadian et al. 2024, eq. 8.
    """
    s = scores.to(_work_dtype(scores))
    mean, _, n = _group_moments(s, group_ids, unbiased=True)
    return torch.where(n > 1, (s - mean) * n / (n - 1).clamp(min=1), torch.zeros_like(s))


def _broadcast(seq_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return seq_adv[:, None] * mask.to(seq_adv.dtype)


def grpo_advantage(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_ids: GroupIds,
    norm_by_std: bool = True,
    unbiased_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """(B, T) GRPO outcome advantage (DeepSeekMath sec. 4.1.2): :func:`group_normalized_scores`
    of ``scores`` (B,) broadcast over the valid tokens of ``mask`` (B, T)."""
    return _broadcast(group_normalized_scores(scores, group_ids, norm_by_std, unbiased_std, eps), mask)


def dr_grpo_advantage(scores: torch.Tensor, mask: torch.Tensor, group_ids: GroupIds) -> torch.Tensor:
    """(B, T) Dr.GRPO advantage (Liu et al. 2025): ``s - mean_g`` with no std division, broadcast
    over ``mask``. Pair it with the "seq-mean-token-sum-norm" loss aggregation to also drop the
    1/|o_i| length normalisation, as that paper does."""
    return _broadcast(group_normalized_scores(scores, group_ids, norm_by_std=False), mask)


def rloo_advantage(scores: torch.Tensor, mask: torch.Tensor, group_ids: GroupIds) -> torch.Tensor:
    """(B, T) RLOO advantage: :func:`rloo_scores` broadcast over the valid tokens of ``mask``."""
    return _broadcast(rloo_scores(scores, group_ids), mask)


@torch.no_grad()
def reinforce_pp_advantage(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025): returns ``(advantages, returns)``, both (B, T).

    ``token_rewards`` (B, T) already holds the outcome reward on the last valid token and the
    per-token KL penalty ``-beta * kl_t`` on every token (OpenRLHF ``compute_reward``). Returns are
    the discounted return-to-go (:func:`discounted_returns`); advantages are those returns whitened
    over all valid tokens of the batch (mean 0, unbiased std 1), 0 at masked positions. "Global"
    means over this tensor: a data-parallel learner must gather before calling to whiten across ranks.
    """
    returns = discounted_returns(token_rewards, mask, gamma)
    return masked_whiten(returns, mask) * mask.to(returns.dtype), returns


def reinforce_pp_baseline_advantage(
    scores: torch.Tensor,
    mask: torch.Tensor,
    group_ids: GroupIds,
    token_rewards: torch.Tensor | None = None,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline (OpenRLHF ``reinforce_baseline``): returns ``(advantages, returns)``.

    Steps, as OpenRLHF orders them: subtract each group's mean score from ``scores`` (B,) (a
    singleton group's baseline is its own score, so it contributes 0); place the result on the last
    valid token; add the dense ``token_rewards`` (B, T) (e.g. the KL penalty) if given; take
    discounted returns; whiten over the whole batch. With gamma = 1 and no dense rewards this equals
    verl's ``compute_reinforce_plus_plus_baseline_outcome_advantage`` (up to its singleton rule).
    """
    centered = group_normalized_scores(scores, group_ids, norm_by_std=False)
    rewards = place_at_last_token(centered, mask)
    if token_rewards is not None:
        rewards = rewards + token_rewards.to(rewards.dtype) * mask.to(rewards.dtype)
    return reinforce_pp_advantage(rewards, mask, gamma)
