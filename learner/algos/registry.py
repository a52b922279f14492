"""One explicit registry of advantage estimators behind one uniform signature.

The learner builds an :class:`AdvantageInputs` from its batch, picks an estimator by name from the
config, and gets an :class:`AdvantageOutput` with token-level ``advantages`` and ``returns`` of
the same (B, T) shape whatever the estimator was (style guide item 4; verl's
``ADV_ESTIMATOR_REGISTRY`` in ``core_algos.py`` plays the same role, without the decorator: the
table below is the whole list).

    out = compute_advantages("grpo", AdvantageInputs(mask=mask, scores=scores, group_ids=gids))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from learner.algos import advantages as adv
from learner.algos.normalize import masked_whiten

__all__ = [
    "AdvantageInputs",
    "AdvantageConfig",
    "AdvantageOutput",
    "Estimator",
    "ADVANTAGE_ESTIMATORS",
    "get_estimator",
    "compute_advantages",
]


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything an estimator may read; fields an estimator does not use are ignored.

    Rows are sequences (or episodes), columns are steps (tokens, or env steps for turn-level GAE).
    At least one of ``scores`` and ``token_rewards`` must be given; a missing one counts as zeros.
    """

    mask: torch.Tensor
    """(B, T) valid steps (bool or 0/1): the tokens/steps that receive an advantage."""
    scores: torch.Tensor | None = None
    """(B,) outcome reward per sequence; placed on the last valid step for return-based estimators."""
    token_rewards: torch.Tensor | None = None
    """(B, T) dense per-step rewards: the per-token KL penalty ``-beta * kl``, env step rewards."""
    values: torch.Tensor | None = None
    """(B, T) critic values V(s_t) (needed by "gae")."""
    next_values: torch.Tensor | None = None
    """(B,) V after the last valid step for truncated episodes (GAE bootstrap); None = 0."""
    group_ids: adv.GroupIds | None = None
    """(B,) group of each row (list, numpy array or int tensor; any hashable ids)."""

    def __post_init__(self) -> None:
        if self.mask.dim() != 2:
            raise ValueError(f"mask must be (B, T), got shape {tuple(self.mask.shape)}")
        B, T = self.mask.shape
        if self.scores is None and self.token_rewards is None:
            raise ValueError("AdvantageInputs needs scores (B,) or token_rewards (B, T)")
        for name, want in (("scores", (B,)), ("next_values", (B,)),
                           ("token_rewards", (B, T)), ("values", (B, T))):
            got = getattr(self, name)
            if got is not None and tuple(got.shape) != want:
                raise ValueError(f"{name} must have shape {want} to match mask, got {tuple(got.shape)}")
        if self.group_ids is not None and len(self.group_ids) != B:
            raise ValueError(f"group_ids has {len(self.group_ids)} entries, mask has {B} rows")

    def outcome(self) -> torch.Tensor:
        """(B,) scores, zeros if absent."""
        if self.scores is not None:
            return self.scores
        return torch.zeros(self.mask.shape[0], dtype=self.token_rewards.dtype, device=self.mask.device)

    def dense(self) -> torch.Tensor:
        """(B, T) token_rewards on valid steps, zeros if absent."""
        if self.token_rewards is None:
            return torch.zeros(self.mask.shape, dtype=self.outcome().dtype, device=self.mask.device)
        return self.token_rewards * self.mask.to(self.token_rewards.dtype)

    def step_rewards(self) -> torch.Tensor:
        """(B, T) scores on the last valid step plus the dense rewards."""
        return adv.place_at_last_token(self.outcome(), self.mask) + self.dense()

    def total_scores(self) -> torch.Tensor:
        """(B,) total reward per sequence: score + sum of dense rewards (verl sums token rewards)."""
        return self.outcome() + self.dense().sum(-1).to(self.outcome().dtype)

    def groups(self) -> adv.GroupIds:
        if self.group_ids is None:
            raise ValueError("this advantage estimator needs group_ids (B,)")
        return self.group_ids


@dataclass(frozen=True)
class AdvantageConfig:
    """Hyper-parameters of the estimators (each reads only its own)."""

    gamma: float = 1.0
    """Discount (gae, reinforce_pp, reinforce_pp_baseline). LLM RL uses 1.0; RL4VLM/seed 003 0.99."""
    lam: float = 1.0
    """GAE lambda (seed 003: 0.95)."""
    norm_by_std: bool = True
    """grpo: divide by the group std (verl ``norm_adv_by_std_in_grpo``); "dr_grpo" never does."""
    unbiased_std: bool = True
    """grpo: n-1 sample std (torch/verl) rather than the population std."""
    eps: float = 1e-6
    """grpo: added to the group std."""
    whiten_gae: bool = True
    """gae: whiten advantages over the batch's valid steps (verl, OpenRLHF); returns stay raw."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.gamma <= 1.0 and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"gamma and lam must be in [0, 1], got gamma={self.gamma} lam={self.lam}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


@dataclass(frozen=True)
class AdvantageOutput:
    """Token-level training targets, 0 at masked positions."""

    advantages: torch.Tensor
    """(B, T) advantage of each valid step."""
    returns: torch.Tensor
    """(B, T) value-function targets (gae: A + V before whitening; others: as their source defines
    them -- discounted returns for REINFORCE++, the advantages themselves for group methods)."""


Estimator = Callable[[AdvantageInputs, AdvantageConfig], AdvantageOutput]


def _gae(x: AdvantageInputs, cfg: AdvantageConfig) -> AdvantageOutput:
    if x.values is None:
        raise ValueError("the 'gae' estimator needs values (B, T)")
    a, r = adv.gae(x.step_rewards(), x.values, x.mask, cfg.gamma, cfg.lam, x.next_values)
    if cfg.whiten_gae:
        a = masked_whiten(a, x.mask) * x.mask.to(a.dtype)
    return AdvantageOutput(a, r)


def _grpo(x: AdvantageInputs, cfg: AdvantageConfig) -> AdvantageOutput:
    a = adv.grpo_advantage(x.total_scores(), x.mask, x.groups(), cfg.norm_by_std, cfg.unbiased_std, cfg.eps)
    return AdvantageOutput(a, a)


def _dr_grpo(x: AdvantageInputs, cfg: AdvantageConfig) -> AdvantageOutput:
    a = adv.dr_grpo_advantage(x.total_scores(), x.mask, x.groups())
    return AdvantageOutput(a, a)


def _rloo(x: AdvantageInputs, cfg: AdvantageConfig) -> AdvantageOutput:
    a = adv.rloo_advantage(x.total_scores(), x.mask, x.groups())
    return AdvantageOutput(a, a)


def _reinforce_pp(x: AdvantageInputs, cfg: AdvantageConfig) -> AdvantageOutput:
    return AdvantageOutput(*adv.reinforce_pp_advantage(x.step_rewards(), x.mask, cfg.gamma))


def _reinforce_pp_baseline(x: AdvantageInputs, cfg: AdvantageConfig) -> AdvantageOutput:
    # OpenRLHF: only the outcome score is baselined; the dense KL penalty is added after.
    a, r = adv.reinforce_pp_baseline_advantage(x.outcome(), x.mask, x.groups(), x.dense(), cfg.gamma)
    return AdvantageOutput(a, r)


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "gae": _gae,
    "grpo": _grpo,
    "dr_grpo": _dr_grpo,
    "rloo": _rloo,
    "reinforce_pp": _reinforce_pp,
    "reinforce_pp_baseline": _reinforce_pp_baseline,
}
"""Name -> estimator. Group methods (grpo, dr_grpo, rloo) use the total per-sequence reward
:meth:`AdvantageInputs.total_scores`; return-based ones (gae, reinforce_pp) the step rewards
:meth:`AdvantageInputs.step_rewards`; reinforce_pp_baseline baselines ``scores`` and adds
``token_rewards`` afterwards."""


def get_estimator(name: str) -> Estimator:
    """The estimator registered under ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ADVANTAGE_ESTIMATORS))
        raise ValueError(f"unknown advantage estimator {name!r}; known: {known}") from None


def compute_advantages(
    name: str, inputs: AdvantageInputs, config: AdvantageConfig | None = None
) -> AdvantageOutput:
    """Run the estimator ``name`` on ``inputs`` with ``config`` (defaults if None)."""
    return get_estimator(name)(inputs, config or AdvantageConfig())
