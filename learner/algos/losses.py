"""Policy, value, entropy and KL terms of PPO-family losses, as pure functions over padded tensors.

Shapes: token tensors are (B, T) with a ``mask`` (B, T) of tokens that take part in the loss
(bool or 0/1); logits are (B, T, V). All ``logp`` arguments are log-probabilities of the sampled
tokens. Scalars are 0-d tensors; diagnostics are detached 0-d tensors (call ``.item()`` to log).

Sources: PPO (Schulman et al. 2017), dual-clip PPO (Ye et al. 2020, arXiv 1912.09729), DAPO
clip-higher (Yu et al. 2025, arXiv 2503.14476), Dr.GRPO aggregation (Liu et al. 2025), KL estimators
(Schulman, "Approximating KL divergence", 2020), truncated importance sampling (Yao et al. 2025,
"Your efficient RL framework secretly brings you off-policy RL training"), RL4VLM action
log-probability (Zhai et al. 2024, NeurIPS). Implementations compared against: verl
``verl/trainer/ppo/core_algos.py``, OpenRLHF ``openrlhf/models/loss.py``, cleanrl ``ppo.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from learner.algos.normalize import masked_mean, masked_var

__all__ = [
    "AGG_MODES",
    "KL_KINDS",
    "PolicyLoss",
    "ValueLoss",
    "ISCorrection",
    "agg_loss",
    "ppo_policy_loss",
    "value_loss",
    "explained_variance",
    "entropy_from_logits",
    "logprobs_from_logits",
    "kl_penalty",
    "rl4vlm_action_logprob",
    "truncated_is_weights",
]

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3")


def agg_loss(
    loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", norm_len: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar over the tokens where ``mask`` is set (verl ``agg_loss``).

    * "token-mean": sum over all valid tokens / number of valid tokens (DAPO's token-level loss).
    * "seq-mean-token-sum": per-sequence sum, averaged over sequences.
    * "seq-mean-token-mean": per-sequence mean, averaged over sequences (original GRPO).
    * "seq-mean-token-sum-norm": per-sequence sum / ``norm_len`` (a constant, default T), averaged
      over sequences (Dr.GRPO). verl omits the 1/B of this average (a constant factor).

    "seq-mean" averages over sequences with at least one valid token (a row with none, e.g. an
    episode where the trained role did not speak, is left out); an empty batch gives 0.
    """
    m = mask.to(loss_mat.dtype)
    if mode == "token-mean":
        return masked_mean(loss_mat, m)
    tok_sum = (loss_mat * m).sum(-1)
    n_tok = m.sum(-1)
    if mode == "seq-mean-token-sum":
        seq = tok_sum
    elif mode == "seq-mean-token-mean":
        seq = tok_sum / n_tok.clamp(min=1)
    elif mode == "seq-mean-token-sum-norm":
        seq = tok_sum / float(norm_len if norm_len is not None else loss_mat.shape[-1])
    else:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; known: {', '.join(AGG_MODES)}")
    return masked_mean(seq, (n_tok > 0).to(seq.dtype))


@dataclass(frozen=True)
class PolicyLoss:
    """Result of :func:`ppo_policy_loss`. ``loss`` carries the gradient; the rest are detached."""

    loss: torch.Tensor
    """0-d aggregated clipped-surrogate loss (to minimise)."""
    clip_frac: torch.Tensor
    """Fraction of valid tokens where the clipped term is the active one (verl ``pg_clipfrac``)."""
    dual_clip_frac: torch.Tensor
    """Fraction of valid tokens with A < 0 where the dual-clip bound -A*c is active (verl ``pg_clipfrac_lower``)."""
    approx_kl: torch.Tensor
    """Mean k3 estimate of KL(old || new) over valid tokens: (r - 1) - log r (cleanrl ``approx_kl``)."""
    ppo_kl: torch.Tensor
    """Mean k1 estimate: old_logp - logp over valid tokens (verl ``ppo_kl``)."""


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    clip_ratio_c: float | None = 3.0,
    agg: str = "token-mean",
    is_weights: torch.Tensor | None = None,
    norm_len: int | None = None,
) -> PolicyLoss:
    """PPO clipped surrogate with asymmetric clip and dual clip; all token inputs (B, T).

    With ``r = exp(logp - old_logp)`` (log-ratio clamped to [-20, 20] as verl does):
    per-token loss ``l = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`` (Schulman et al. 2017;
    ``clip_high`` defaults to ``clip_low``, DAPO uses 0.28 vs 0.2). For A < 0 the dual clip
    (Ye et al. 2020) bounds it by ``min(l, -A c)`` with ``c = clip_ratio_c > 1`` (None disables).
    ``is_weights`` (B, T), e.g. from :func:`truncated_is_weights`, multiply the per-token loss as
    constants (verl TIS). Reduced with :func:`agg_loss` (``agg``, ``norm_len``).
    """
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 for dual-clip PPO, got {clip_ratio_c}")
    clip_high = clip_low if clip_high is None else clip_high
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    clipped = torch.maximum(loss1, loss2)
    per_token, dual_active = clipped, torch.zeros_like(clipped, dtype=torch.bool)
    if clip_ratio_c is not None:
        loss3 = -advantages * clip_ratio_c
        dual_active = (advantages < 0) & (clipped > loss3)
        per_token = torch.where(advantages < 0, torch.minimum(clipped, loss3), clipped)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()
    with torch.no_grad():
        fmask = mask.to(ratio.dtype)
        clip_frac = masked_mean((loss2 > loss1).to(ratio.dtype), fmask)
        dual_frac = masked_mean(dual_active.to(ratio.dtype), fmask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, fmask)
        ppo_kl = masked_mean(-log_ratio, fmask)
    loss = agg_loss(per_token, mask, agg, norm_len)
    return PolicyLoss(loss, clip_frac, dual_frac, approx_kl, ppo_kl)


@dataclass(frozen=True)
class ValueLoss:
    """Result of :func:`value_loss`."""

    loss: torch.Tensor
    """0-d value loss (already includes the 0.5 factor)."""
    clip_frac: torch.Tensor
    """Fraction of valid tokens where the clipped error is the larger one (0 when unclipped)."""


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None = 0.2,
    agg: str = "token-mean",
) -> ValueLoss:
    """PPO2-style value loss over (B, T): ``0.5 * agg(max((V - R)^2, (V_clip - R)^2))``.

    ``V_clip = V_old + clamp(V - V_old, -clip_eps, clip_eps)`` (cleanrl ``clip_vloss``, OpenRLHF
    ``ValueLoss``, verl ``compute_value_loss``). ``clip_eps=None`` gives the plain
    ``0.5 * agg((V - R)^2)``.
    """
    err = (values - returns) ** 2
    if clip_eps is None:
        return ValueLoss(0.5 * agg_loss(err, mask, agg), torch.zeros((), dtype=values.dtype, device=values.device))
    v_clip = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    err_clip = (v_clip - returns) ** 2
    loss = 0.5 * agg_loss(torch.maximum(err, err_clip), mask, agg)
    with torch.no_grad():
        frac = masked_mean((err_clip > err).to(values.dtype), mask.to(values.dtype))
    return ValueLoss(loss, frac)


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over valid entries (cleanrl/SB3 diagnostic): 1 = perfect value
    head, 0 = no better than a constant, < 0 = worse. NaN when the returns have zero variance."""
    var_r = masked_var(returns, mask, unbiased=False)
    var_err = masked_var(returns - values, mask, unbiased=False)
    return torch.where(var_r > 0, 1.0 - var_err / var_r, torch.full_like(var_r, float("nan")))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy ``H = -sum_v p_v log p_v`` of the softmax over the last dim; (..., V) -> (...).

    Computed as ``logsumexp(z) - sum_v softmax(z)_v z_v`` (verl ``entropy_from_logits``) in at
    least float32, after shifting z by its max (H is shift-invariant): no log of a zero
    probability, no overflow, and no cancellation between two large numbers for large logits.
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    z = z - z.amax(dim=-1, keepdim=True).detach()
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """``log softmax(logits)[label]`` per position; (..., V), (...) -> (...) in at least float32.

    Via ``cross_entropy(reduction="none")`` (a fused, stable log-softmax + gather); positions whose
    label is ``ignore_index`` get 0. Labels must already be shifted to align with the logits that
    predict them (logits at t score the token at t + 1 of the input).
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    flat = F.cross_entropy(z.reshape(-1, z.shape[-1]), labels.reshape(-1), reduction="none", ignore_index=ignore_index)
    return -flat.reshape(labels.shape)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi; same shape as inputs.

    With ``log r = ref_logp - logp`` (Schulman 2020): "k1" = ``-log r`` (unbiased, high variance,
    can be negative), "k2" = ``0.5 (log r)^2`` (low variance, biased), "k3" = ``r - 1 - log r``
    (unbiased, >= 0, low variance). k3 is clamped like verl's "low_var_kl": log r to [-20, 20],
    the estimate to [-10, 10].
    """
    log_r = ref_logp - logp
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        log_r = log_r.clamp(-20.0, 20.0)
        return (torch.exp(log_r) - 1.0 - log_r).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {kind!r}; known: {', '.join(KL_KINDS)}")


def rl4vlm_action_logprob(
    logp: torch.Tensor, cot_mask: torch.Tensor, action_mask: torch.Tensor, lam: float
) -> torch.Tensor:
    """RL4VLM action log-probability per sequence (Zhai et al. 2024, sec. 4.2), (B, T) -> (B,):
    ``lam * sum_t logp[cot] + sum_t logp[action]``. lam in [0, 1] scales the chain-of-thought
    tokens, whose summed log-prob is far larger than the action's (paper: lam = 0.5 on gym_cards).
    Tokens in neither mask do not count."""
    cot = (logp * cot_mask.to(logp.dtype)).sum(-1)
    act = (logp * action_mask.to(logp.dtype)).sum(-1)
    return lam * cot + act


@dataclass(frozen=True)
class ISCorrection:
    """Result of :func:`truncated_is_weights`. Diagnostics are over valid tokens."""

    weights: torch.Tensor
    """(B, T) ``min(exp(old_logp - rollout_logp), cap)``; 0 at masked positions; no gradient."""
    mean_abs_log_ratio: torch.Tensor
    """Mean |old_logp - rollout_logp|: how far the sampler's numbers are from the learner's."""
    max_abs_log_ratio: torch.Tensor
    """Largest |old_logp - rollout_logp| (0 when no token is valid)."""
    truncated_frac: torch.Tensor
    """Fraction of valid tokens whose weight hit the cap."""
    mismatch_kl: torch.Tensor
    """Mean k3 estimate of KL(sampler || learner) over valid tokens."""


@torch.no_grad()
def truncated_is_weights(
    old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, cap: float = 2.0
) -> ISCorrection:
    """Truncated importance-sampling correction for sampler/learner mismatch (Yao et al. 2025; verl
    ``tis_imp_ratio_cap``): the sampler (vLLM) produced the tokens with ``rollout_logp`` while the
    learner's own forward of the same policy gives ``old_logp``; weighting the PPO per-token loss by
    ``min(pi_learner / pi_sampler, cap)`` corrects the bias with bounded variance. Inputs (B, T)."""
    m = mask.bool()
    log_ratio = torch.where(m, old_logp - rollout_logp, torch.zeros_like(old_logp))
    clamped = log_ratio.clamp(-20.0, 20.0)
    raw = torch.exp(clamped)
    weights = torch.where(m, raw.clamp(max=cap), torch.zeros_like(raw))
    fm = m.to(old_logp.dtype)
    abs_lr = log_ratio.abs()
    k3 = raw - 1.0 - clamped  # r = p_learner / p_sampler, tokens sampled from the sampler
    return ISCorrection(
        weights=weights,
        mean_abs_log_ratio=masked_mean(abs_lr, fm),
        max_abs_log_ratio=abs_lr.max() if abs_lr.numel() else abs_lr.sum(),
        truncated_frac=masked_mean((raw > cap).to(fm.dtype), fm),
        mismatch_kl=masked_mean(k3, fm),
    )
