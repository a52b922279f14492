"""The PPO-family loss of one micro batch, scaled so that micro batches on all ranks add up to the
loss of the whole minibatch.

A minibatch is split across ranks and then into micro batches. Every aggregation in
:func:`learner.algos.agg_loss` is a mean over "units" (tokens for "token-mean", sequences for the
"seq-mean-*" modes), so the minibatch loss is ``sum_micro agg(micro) * units(micro) / units(minibatch)``.
DeepSpeed averages gradients over the data-parallel ranks, so each rank's share is also multiplied
by the world size: the summed gradient is then exactly that of the single-process loss over the
whole minibatch (verl and OpenRLHF use the same global-token normalisation for "token-mean").

Terms: PPO clipped surrogate (per token, or per turn with the RL4VLM lambda-scaled log-prob), the
clipped value loss on the value positions, minus the entropy bonus, plus KL(pi || pi_ref) when the
KL is in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.algos import agg_loss, kl_penalty, masked_mean, ppo_policy_loss, rl4vlm_action_logprob, value_loss
from learner.batch import RoleBatch
from learner.config import AlgoConfig
from learner.experience import Experience
from learner.metrics import LossStats

__all__ = ["Denominators", "minibatch_denominators", "micro_loss", "units"]


def units(mask: torch.Tensor, agg: str) -> float:
    """Units ``agg`` averages over: valid entries ("token-mean") or rows with any valid entry."""
    return float(mask.sum()) if agg == "token-mean" else float((mask.sum(-1) > 0).sum())


@dataclass(frozen=True)
class Denominators:
    """Unit counts of one whole minibatch (all ranks); a micro batch's share is its count over these."""

    policy: float
    """Units of the policy aggregation (per-turn rows with lambda_cot, else loss_mask under ``loss_agg``)."""
    tokens: float
    """Units of loss_mask under ``loss_agg`` (entropy and KL terms)."""
    token_count: float
    """Output tokens (for token-averaged diagnostics)."""
    values: float
    """Value positions."""
    norm_len: int
    """Constant length of the "seq-mean-token-sum-norm" aggregation (the batch's longest output)."""


def _seq_mask(b: RoleBatch) -> torch.Tensor:
    return (b.cot_mask | b.action_mask).any(-1, keepdim=True)


def minibatch_denominators(mb: RoleBatch, exp: Experience, algo: AlgoConfig, norm_len: int) -> Denominators:
    """Denominators of the minibatch ``mb`` (its rows on every rank), each clamped to >= 1."""
    pol = units(_seq_mask(mb), "token-mean") if algo.lambda_cot is not None else units(mb.loss_mask, algo.loss_agg)
    return Denominators(
        policy=max(pol, 1.0), tokens=max(units(mb.loss_mask, algo.loss_agg), 1.0),
        token_count=max(float(mb.loss_mask.sum()), 1.0), values=max(float(exp.value_mask.sum()), 1.0),
        norm_len=norm_len)


def _policy_term(logp: torch.Tensor, b: RoleBatch, exp: Experience, algo: AlgoConfig, den: Denominators):
    """(PolicyLoss, share of the minibatch's policy units)."""
    kw = dict(clip_low=algo.clip_low, clip_high=algo.clip_high, clip_ratio_c=algo.dual_clip_c)
    if algo.lambda_cot is None:
        pl = ppo_policy_loss(logp, exp.old_logprobs, exp.advantages, b.loss_mask, agg=algo.loss_agg,
                             is_weights=exp.is_weights, norm_len=den.norm_len, **kw)
        return pl, units(b.loss_mask, algo.loss_agg) / den.policy
    seq = rl4vlm_action_logprob(logp, b.cot_mask, b.action_mask, algo.lambda_cot)[:, None]
    w = exp.seq_is_weights[:, None] if exp.seq_is_weights is not None else None
    m = _seq_mask(b)
    pl = ppo_policy_loss(seq, exp.seq_old_logprobs[:, None], exp.seq_advantages[:, None], m,
                         agg="token-mean", is_weights=w, **kw)
    return pl, units(m, "token-mean") / den.policy


def micro_loss(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    values: torch.Tensor | None,
    b: RoleBatch,
    exp: Experience,
    den: Denominators,
    algo: AlgoConfig,
    world_size: int,
) -> tuple[torch.Tensor, LossStats]:
    """Scaled loss of micro batch ``b`` (model outputs (B, T) aligned with ``b``) and its additive
    share of the minibatch diagnostics (summing the records over micro batches and ranks gives the
    minibatch values: :func:`learner.metrics.reduce_loss_stats`)."""
    lm = b.loss_mask
    pl, s_pol = _policy_term(logp, b, exp, algo, den)
    s_tok = units(lm, algo.loss_agg) / den.tokens
    s_cnt = float(lm.sum()) / den.token_count
    ent = agg_loss(entropy, lm, algo.loss_agg, den.norm_len)
    loss = pl.loss * s_pol - algo.entropy_coef * ent * s_tok
    kl_share = value_share = value_clip = None
    if algo.kl_coef > 0 and algo.kl_in == "loss":
        kl = agg_loss(kl_penalty(logp, exp.ref_logprobs, algo.kl_estimator), lm, algo.loss_agg, den.norm_len)
        loss = loss + algo.kl_coef * kl * s_tok
        kl_share = kl.item() * s_tok
    if values is not None:
        vl = value_loss(values, exp.old_values, exp.returns, exp.value_mask, algo.value_clip)
        s_val = float(exp.value_mask.sum()) / den.values
        loss = loss + algo.value_coef * vl.loss * s_val
        value_share, value_clip = vl.loss.item() * s_val, float(vl.clip_frac) * s_val
    stats = LossStats(kl=kl_share, policy=pl.loss.item() * s_pol, total=loss.item(), value=value_share,
                      approx_kl=float(pl.approx_kl) * s_pol, clip_frac=float(pl.clip_frac) * s_pol,
                      dual_clip_frac=float(pl.dual_clip_frac) * s_pol,
                      entropy=masked_mean(entropy.detach(), lm).item() * s_cnt, value_clip_frac=value_clip)
    return loss * world_size, stats
