"""Rewards, advantages, returns and importance weights for one :class:`~learner.batch.RoleBatch`.

Computed once per train step on the WHOLE batch (every rank holds it, after the per-rank forward
results were summed across ranks), so group statistics and whitening are global and identical on
every rank, and a 2-rank world computes exactly what 1 rank would.

Two step levels (``AlgoConfig.advantage_level``):

* "turn" (RL4VLM): rows of the estimator are episodes, columns are the role's trainable turns; a
  turn's value is V(h) on its last prompt token; its reward is the episode outcome on the last
  turn ("outcome") or its own env reward ("per_turn"), minus ``kl_coef * sum_t KL_t`` over its
  tokens when the KL is in the reward. Every output token of a turn gets the turn's advantage.
* "token" (verl/OpenRLHF single-turn): rows are turns, columns are tokens; the value of output token
  t is V(h_{t-1}) (the state it was sampled from), KL penalties are per token.

Value predictions are placed on a ``value_mask`` over hidden-state positions (the last prompt token
for "turn", positions ``t - 1`` of output tokens for "token"), so one value-loss code path serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from learner.algos import (
    AdvantageConfig,
    AdvantageInputs,
    RunningMeanStd,
    compute_advantages,
    explained_variance,
    kl_penalty,
    masked_mean,
    rl4vlm_action_logprob,
    truncated_is_weights,
)
from learner.batch import RoleBatch, take_rows
from learner.config import AlgoConfig
from learner.metrics import AdvantageStats

__all__ = ["Experience", "compute_experience", "normalize_rewards", "value_positions", "shift_right", "shift_left"]


@dataclass(frozen=True, kw_only=True)
class Experience:
    """Training targets aligned row for row with a RoleBatch (B rows, T columns). No gradients.
    Built by name only (``kw_only``): ten tensors of like shapes are too easy to pass in the wrong order."""

    old_logprobs: torch.Tensor
    """(B, T) learner log pi_old(token t) under the adapter before this update (0 off loss_mask)."""
    ref_logprobs: torch.Tensor | None
    """(B, T) log pi_ref(token t) with the adapter disabled; None without a KL term."""
    advantages: torch.Tensor
    """(B, T) advantage of each output token (0 elsewhere)."""
    value_mask: torch.Tensor
    """(B, T) bool hidden-state positions whose value is trained (see module doc)."""
    old_values: torch.Tensor
    """(B, T) V_old at value_mask positions (0 elsewhere; 0 everywhere without a value head)."""
    returns: torch.Tensor
    """(B, T) value targets at value_mask positions."""
    is_weights: torch.Tensor | None
    """(B, T) truncated IS weights pi_learner / pi_sampler per token; None when TIS is off."""
    seq_old_logprobs: torch.Tensor | None
    """(B,) RL4VLM ``lambda * sum logp(CoT) + sum logp(action)`` under pi_old; None unless lambda_cot."""
    seq_advantages: torch.Tensor
    """(B,) the advantage of each row's turn (its first output token's advantage)."""
    seq_is_weights: torch.Tensor | None
    """(B,) turn-level truncated IS weight for the lambda-scaled ratio; None unless lambda_cot and TIS."""

    def select(self, rows: torch.Tensor, width: int) -> Experience:
        """The same rows as ``RoleBatch.select(rows)``, columns trimmed to ``width``."""
        out = {}
        for f in fields(self):
            x = getattr(self, f.name)
            out[f.name] = None if x is None else (take_rows(x, rows, width) if x.dim() == 2 else x[rows])
        return Experience(**out)


def shift_right(x: torch.Tensor) -> torch.Tensor:
    """``y[:, t] = x[:, t - 1]``, ``y[:, 0] = 0``: values of hidden positions -> the tokens they predict."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def shift_left(x: torch.Tensor) -> torch.Tensor:
    """``y[:, t] = x[:, t + 1]``, last column 0: token-aligned targets -> the hidden positions before them."""
    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)


def value_positions(batch: RoleBatch, level: str) -> torch.Tensor:
    """(B, T) bool positions whose hidden state gives a trained value (module doc)."""
    if level == "token":
        return shift_left(batch.loss_mask)
    m = torch.zeros_like(batch.loss_mask)
    m[torch.arange(batch.num_rows), (batch.prompt_lens - 1).clamp(min=0)] = True
    return m


def normalize_rewards(x: torch.Tensor, stats: RunningMeanStd, algo: AlgoConfig) -> tuple[torch.Tensor, RunningMeanStd]:
    """Scale-only running normalisation (gymnasium ``NormalizeReward``, seed 001) when enabled:
    update the running statistics with ``x``, then divide by their std (clip if configured)."""
    if not algo.normalize_rewards:
        return x, stats
    stats = stats.update(x)
    return stats.normalize(x, center=False, clip=algo.reward_clip).to(x.dtype), stats


def _turn_inputs(b: RoleBatch, scores: torch.Tensor, step_r: torch.Tensor, kl_row: torch.Tensor | None,
                 values: torch.Tensor | None, algo: AlgoConfig, next_values: torch.Tensor | None = None) -> AdvantageInputs:
    dense = b.to_steps(step_r) if algo.reward_placement == "per_turn" else torch.zeros(b.episodes.rewards.shape[0], b.episodes.max_steps)
    if kl_row is not None:
        dense = dense - algo.kl_coef * b.to_steps(kl_row)
    v = None
    if values is not None:
        v = b.to_steps(values[torch.arange(b.num_rows), (b.prompt_lens - 1).clamp(min=0)])
    outcome = scores if algo.reward_placement == "outcome" else None
    return AdvantageInputs(mask=b.episodes.step_mask(), scores=outcome, token_rewards=dense, values=v,
                           next_values=next_values if v is not None else None, group_ids=list(b.episodes.group_ids))


def _token_inputs(b: RoleBatch, scores: torch.Tensor, step_r: torch.Tensor, kl_tok: torch.Tensor | None,
                  values: torch.Tensor | None, algo: AlgoConfig) -> AdvantageInputs:
    row_scores = scores[b.episode_index] if algo.reward_placement == "outcome" else step_r
    dense = -algo.kl_coef * kl_tok if kl_tok is not None else None
    v = shift_right(values) if values is not None else None
    return AdvantageInputs(mask=b.loss_mask, scores=row_scores, token_rewards=dense, values=v,
                           group_ids=list(b.row_groups()))


def _advantages(b: RoleBatch, scores, step_r, kl_tok, values, algo: AlgoConfig,
                next_values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token advantages (B, T) on loss_mask, returns (B, T) on value positions)."""
    cfg = AdvantageConfig(gamma=algo.gamma, lam=algo.lam, norm_by_std=algo.norm_adv_by_std, whiten_gae=algo.whiten_gae)
    fm = b.loss_mask.to(torch.float32)
    if algo.advantage_level == "turn":
        kl_row = (kl_tok * fm).sum(-1) if kl_tok is not None else None
        out = compute_advantages(algo.advantage_estimator,
                                 _turn_inputs(b, scores, step_r, kl_row, values, algo, next_values), cfg)
        adv = b.from_steps(out.advantages).float()[:, None] * fm
        ret = b.from_steps(out.returns).float()[:, None] * value_positions(b, "turn")
        return adv, ret
    out = compute_advantages(algo.advantage_estimator, _token_inputs(b, scores, step_r, kl_tok, values, algo), cfg)
    return out.advantages.float() * fm, shift_left(out.returns.float() * fm)


def _first_token_value(x: torch.Tensor, b: RoleBatch) -> torch.Tensor:
    return x[torch.arange(b.num_rows), b.prompt_lens.clamp(max=x.shape[1] - 1)]


@torch.no_grad()
def compute_experience(
    b: RoleBatch,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    values: torch.Tensor | None,
    algo: AlgoConfig,
    reward_stats: RunningMeanStd,
    next_values: torch.Tensor | None = None,
) -> tuple[Experience, RunningMeanStd, AdvantageStats]:
    """Everything the PPO update needs for batch ``b`` given the no-grad forward results (B, T).
    ``next_values`` (E,): V of the state after each episode's last step (truncated episodes; 0 for
    ended ones), the GAE bootstrap at turn level.

    Returns the experience, the updated reward statistics, and diagnostics (reward, advantage,
    KL-to-reference, and sampler/learner mismatch statistics)."""
    lm = b.loss_mask
    raw = b.episodes.rewards if algo.reward_placement == "outcome" else b.step_rewards
    normed, reward_stats = normalize_rewards(raw, reward_stats, algo)
    scores, step_r = (normed, b.step_rewards) if algo.reward_placement == "outcome" else (b.episodes.rewards, normed)
    kl_tok = kl_penalty(old_logp, ref_logp, algo.kl_estimator) * lm if ref_logp is not None else None
    kl_for_reward = kl_tok if algo.kl_in == "reward" else None
    adv, ret = _advantages(b, scores, step_r, kl_for_reward, values, algo, next_values)
    vmask = value_positions(b, algo.advantage_level)
    old_values = values * vmask if values is not None else torch.zeros_like(old_logp)
    cap = algo.tis_cap if algo.tis_cap is not None else float("inf")
    tis = truncated_is_weights(old_logp, b.rollout_logprobs, lm, cap)
    seq_old = seq_w = None
    if algo.lambda_cot is not None:
        seq_old = rl4vlm_action_logprob(old_logp, b.cot_mask, b.action_mask, algo.lambda_cot)
        if algo.tis_cap is not None:
            seq_roll = rl4vlm_action_logprob(b.rollout_logprobs, b.cot_mask, b.action_mask, algo.lambda_cot)
            seq_w = truncated_is_weights(seq_old[:, None], seq_roll[:, None], torch.ones(b.num_rows, 1), cap).weights[:, 0]
    exp = Experience(old_logprobs=old_logp * lm, ref_logprobs=ref_logp, advantages=adv, value_mask=vmask,
                     old_values=old_values, returns=ret, is_weights=tis.weights if algo.tis_cap is not None else None,
                     seq_old_logprobs=seq_old, seq_advantages=_first_token_value(adv, b), seq_is_weights=seq_w)
    return exp, reward_stats, _diagnostics(b, exp, kl_tok, tis, normed, values is not None)


def _diagnostics(b: RoleBatch, exp: Experience, kl_tok, tis, normed: torch.Tensor, has_values: bool) -> AdvantageStats:
    fm = b.loss_mask.float()
    adv_vals = exp.advantages[b.loss_mask]
    vm = exp.value_mask.float()
    return AdvantageStats(
        reward_mean=float(b.episodes.rewards.mean()) if b.episodes.num_episodes else 0.0,
        reward_std=float(b.episodes.rewards.std()) if b.episodes.num_episodes > 1 else 0.0,
        reward_normalized_mean=float(normed.mean()) if normed.numel() else 0.0,
        adv_mean=float(adv_vals.mean()) if adv_vals.numel() else 0.0,
        adv_std=float(adv_vals.std()) if adv_vals.numel() > 1 else 0.0,
        mismatch_mean_abs_log_ratio=float(tis.mean_abs_log_ratio),
        mismatch_max_abs_log_ratio=float(tis.max_abs_log_ratio),
        mismatch_kl=float(tis.mismatch_kl),
        mismatch_truncated_frac=float(tis.truncated_frac),
        value_returns_mean=float(masked_mean(exp.returns, vm)) if has_values else None,
        value_mean=float(masked_mean(exp.old_values, vm)) if has_values else None,
        value_explained_variance=(float(explained_variance(exp.old_values, exp.returns, exp.value_mask))
                                  if has_values else None),
        kl_ref=float(masked_mean(kl_tok, fm)) if kl_tok is not None else None,
    )
