"""Masked statistics and running normalisation for rewards and advantages.

* :func:`masked_mean`, :func:`masked_var`, :func:`masked_whiten` -- statistics over the valid
  entries of a padded tensor (verl ``verl/utils/torch_functional.py``, same names and conventions).
* :class:`RunningMeanStd` -- running mean/variance of a scalar stream (e.g. episode rewards),
  merged batch by batch with the parallel-variance formula of Chan, Golub & LeVeque (1979), as
  gymnasium's ``RunningMeanStd`` does. Used for the reward normalisation of seed 001 ("PPO with
  reward normalization and entropy regularization"). It is a frozen value: ``update`` returns a new
  one, and ``state_dict``/``from_state_dict`` round-trip it through a checkpoint.

Only torch and the standard library are imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["masked_mean", "masked_var", "masked_whiten", "RunningMeanStd"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is nonzero.

    Shapes: ``x`` and ``mask`` broadcast together (typically both (B, T)). With ``dim=None`` the
    result is a 0-d tensor, else ``x`` reduced along ``dim``. A reduction with no valid entry
    returns 0 (not NaN): the denominator is clamped to 1. Source: verl ``masked_mean``.
    """
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries of ``x`` (all dims), as a 0-d tensor.

    ``unbiased=True`` applies Bessel's correction n/(n-1) (verl ``masked_var`` default); with fewer
    than two valid entries the correction is skipped. No valid entry gives 0.
    """
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if not unbiased:
        return var
    n = mask.sum()
    return torch.where(n > 1, var * n / (n - 1).clamp(min=1), var)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and (unbiased) variance over valid entries.

    Same shape as ``x``. Masked entries are transformed too (not zeroed): callers multiply by the
    mask if they need zeros there. ``shift_mean=False`` rescales only and adds the mean back
    (verl ``masked_whiten``; OpenRLHF normalises advantages the same way).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean


@dataclass(frozen=True)
class RunningMeanStd:
    """Running mean and population variance of every value seen so far (a scalar stream).

    ``count`` is the number of values merged. The initial state (count 0, mean 0, var 1) normalises
    with unit scale until data arrives. Stored as Python floats (float64) so the statistics do not
    drift in low precision over a long run.
    """

    mean: float = 0.0
    var: float = 1.0
    count: float = 0.0

    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> RunningMeanStd:
        """Merge the (valid) values of ``x`` (any shape); returns the new statistics.

        Parallel-variance merge (Chan et al. 1979; gymnasium ``update_mean_var_count_from_moments``):
        delta = m_b - m_a, n = n_a + n_b, mean = m_a + delta n_b / n,
        M2 = var_a n_a + var_b n_b + delta^2 n_a n_b / n, var = M2 / n.
        """
        x = x.detach().to(torch.float64)
        if mask is not None:
            x = x[mask.bool()]
        n_b = float(x.numel())
        if n_b == 0:
            return self
        mean_b, var_b = float(x.mean()), float(x.var(unbiased=False))
        n = self.count + n_b
        delta = mean_b - self.mean
        m2 = self.var * self.count + var_b * n_b + delta * delta * self.count * n_b / n
        return RunningMeanStd(mean=self.mean + delta * n_b / n, var=m2 / n, count=n)

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def normalize(
        self, x: torch.Tensor, center: bool = True, clip: float | None = None, eps: float = 1e-8
    ) -> torch.Tensor:
        """``(x - mean) / sqrt(var + eps)`` (or ``x / sqrt(var + eps)`` when ``center=False``, the
        scale-only reward normalisation of gymnasium ``NormalizeReward``), optionally clipped to
        ``[-clip, clip]``. Same shape and dtype as ``x``."""
        y = (x - self.mean) if center else x
        y = y / math.sqrt(self.var + eps)
        return y.clamp(-clip, clip) if clip is not None else y

    def state_dict(self) -> dict[str, float]:
        """Plain dict for a checkpoint."""
        return {"mean": self.mean, "var": self.var, "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict[str, float]) -> RunningMeanStd:
        """Inverse of :meth:`state_dict`; raises ``KeyError`` on a missing field."""
        return cls(mean=float(state["mean"]), var=float(state["var"]), count=float(state["count"]))
