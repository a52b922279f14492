"""The learner's metrics as typed records: what :meth:`learner.group.LearnerGroup.train_step` and
``sft_step`` return, read by attribute; :func:`flatten` turns a record into today's metric names
(``loss/policy``, ``time/step``, ...) only where it is logged (:class:`cluster.progress.RunLog`).

Each field names its metric (:func:`metric`); a field that is None was not measured in that step
(no KL term, no value head, an empty batch) and has no row. The loss statistics are additive shares
summed over micro batches and ranks: :func:`reduce_loss_stats` reduces every field of
:class:`LossStats`, so a statistic added to the record is summed like the others.

Standard library only: the cluster imports this module without torch or DeepSpeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Mapping, Sequence

__all__ = ["metric", "flatten", "LossStats", "AdvantageStats", "OptimStats", "UpdateMetrics", "SFTMetrics",
           "reduce_loss_stats"]


def metric(name: str, optional: bool = False) -> Any:
    """A record field logged as ``name`` (a ``{}`` in it takes the keys of a mapping field);
    ``optional`` fields default to None (not measured)."""
    if optional:
        return field(default=None, metadata={"metric": name})
    return field(metadata={"metric": name})


def flatten(record: Any) -> dict[str, float]:
    """Metric name -> value of every measured field of ``record`` (nested records flattened in
    field order, None fields left out)."""
    out: dict[str, float] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if value is None:
            continue
        if is_dataclass(value):
            out |= flatten(value)
        elif isinstance(value, Mapping):
            out |= {f.metadata["metric"].format(k): float(v) for k, v in value.items()}
        else:
            out[f.metadata["metric"]] = float(value)
    return out


@dataclass(frozen=True, kw_only=True)
class LossStats:
    """One update's loss diagnostics: per micro batch an additive share of its minibatch (summing
    the shares of all micro batches on all ranks gives the minibatch's value), then the mean over
    the update's optimizer steps. Fields in metric-name order."""

    kl: float | None = metric("loss/kl", optional=True)
    """KL(pi || pi_ref) term of the loss (aggregated like the loss); only with ``kl_in = "loss"``."""
    policy: float = metric("loss/policy")
    """Clipped-surrogate policy loss."""
    total: float = metric("loss/total")
    """The whole loss (policy - entropy bonus + KL + value terms)."""
    value: float | None = metric("loss/value", optional=True)
    """Clipped value loss; only with a value head."""
    approx_kl: float = metric("policy/approx_kl")
    """PPO's approx-KL between pi_old and pi (mean k3 estimate)."""
    clip_frac: float = metric("policy/clip_frac")
    """Fraction of policy units whose ratio was clipped."""
    dual_clip_frac: float = metric("policy/dual_clip_frac")
    """Fraction of policy units hit by the dual clip (negative advantages)."""
    entropy: float = metric("policy/entropy")
    """Mean token entropy of pi on the output tokens."""
    value_clip_frac: float | None = metric("value/clip_frac", optional=True)
    """Fraction of value positions whose clipped loss was taken; only with a value head."""


def reduce_loss_stats(shares: Sequence[LossStats], n_steps: int,
                      all_reduce_sum: Callable[[list[float]], list[float]]) -> LossStats:
    """Every field of the ``shares`` (this rank's micro batches, in order) summed, then summed over
    ranks (``all_reduce_sum`` of one float64 vector: the sums, then how many shares measured each
    field) and divided by the optimizer steps; a field no share on any rank measured stays None."""
    names = [f.name for f in fields(LossStats)]
    sums, counts = [0.0] * len(names), [0.0] * len(names)
    for s in shares:
        for i, name in enumerate(names):
            v = getattr(s, name)
            if v is not None:
                sums[i] += v
                counts[i] += 1.0
    total = all_reduce_sum(sums + counts)
    steps = max(n_steps, 1)
    return LossStats(**{n: (total[i] / steps if total[len(names) + i] > 0 else None) for i, n in enumerate(names)})


@dataclass(frozen=True, kw_only=True)
class AdvantageStats:
    """Rewards, advantages, sampler/learner mismatch and values of one step's whole batch (the same
    on every rank)."""

    reward_mean: float = metric("reward/mean")
    """Mean episode reward."""
    reward_std: float = metric("reward/std")
    """Std of the episode rewards (0 with fewer than two episodes)."""
    reward_normalized_mean: float = metric("reward/normalized_mean")
    """Mean of the rewards after the running normalisation (the raw mean when it is off)."""
    adv_mean: float = metric("adv/mean")
    """Mean advantage over the output tokens."""
    adv_std: float = metric("adv/std")
    """Std of the advantages over the output tokens."""
    mismatch_mean_abs_log_ratio: float = metric("mismatch/mean_abs_log_ratio")
    """Mean |log pi_learner - log pi_sampler| over the output tokens."""
    mismatch_max_abs_log_ratio: float = metric("mismatch/max_abs_log_ratio")
    """Max |log pi_learner - log pi_sampler| over the output tokens."""
    mismatch_kl: float = metric("mismatch/kl")
    """KL estimate between the sampler and the learner on the sampled tokens."""
    mismatch_truncated_frac: float = metric("mismatch/truncated_frac")
    """Fraction of tokens whose importance weight was truncated at ``tis_cap``."""
    value_returns_mean: float | None = metric("value/returns_mean", optional=True)
    """Mean value target over the value positions; only with a value head."""
    value_mean: float | None = metric("value/mean", optional=True)
    """Mean V_old over the value positions; only with a value head."""
    value_explained_variance: float | None = metric("value/explained_variance", optional=True)
    """1 - Var[R - V] / Var[R] (NaN when the returns do not vary); only with a value head."""
    kl_ref: float | None = metric("kl/ref", optional=True)
    """Mean token KL of pi_old to the reference (adapter disabled); only with a KL term."""


@dataclass(frozen=True)
class OptimStats:
    """The optimizer steps of one update."""

    grad_norm: float = metric("optim/grad_norm")
    """Mean gradient norm (before clipping) over the steps."""
    grad_norm_max: float = metric("optim/grad_norm_max")
    """Largest gradient norm over the steps."""
    steps: float = metric("optim/steps")
    """Optimizer steps taken (epochs x non-empty minibatches)."""
    skipped: float | None = metric("optim/skipped", optional=True)
    """Of those, the steps skipped because the loss or the gradient norm was not finite on some
    rank (DeepSpeed's overflow skip: weights, optimizer state and LR schedule left untouched);
    None in records made before it was measured."""


@dataclass(frozen=True, kw_only=True)
class UpdateMetrics:
    """One RL update of one role (the same on every rank). A batch without a row of the role trains
    nothing: only ``samples`` (0) and ``episodes`` are set. Fields in logging order."""

    advantage: AdvantageStats | None = None
    """The batch's rewards, advantages and mismatch statistics."""
    loss: LossStats | None = None
    """The update's loss diagnostics."""
    optim: OptimStats | None = None
    """The update's optimizer steps."""
    phase_seconds: Mapping[str, float] | None = metric("time/{}", optional=True)
    """Seconds per phase of the step (build, old_forward, ref_forward, bootstrap_forward,
    advantages, update: those that ran), as ``time/<phase>``."""
    step_seconds: float | None = metric("time/step", optional=True)
    """Seconds of the whole step."""
    samples: float = metric("batch/samples")
    """Rows trained (the role's turns; 0: nothing trained)."""
    episodes: float = metric("batch/episodes")
    """Episodes in the batch."""
    tokens: float | None = metric("batch/tokens", optional=True)
    """Prompt and output tokens of the rows."""
    output_tokens: float | None = metric("batch/output_tokens", optional=True)
    """Output (trained) tokens of the rows."""
    tokens_per_s: float | None = metric("perf/tokens_per_s", optional=True)
    """Tokens through the model per second: tokens x (epochs + 1) / step seconds."""
    learner_step: float | None = metric("learner/step", optional=True)
    """RL updates done by this learner, this one included."""
    lr: float | None = metric("optim/lr", optional=True)
    """Learning rate after the update."""
    entropy_max: float | None = metric("policy/entropy_max", optional=True)
    """log(vocabulary size): the largest token entropy there is (a policy near it is uniform noise)."""

    @property
    def all_skipped(self) -> bool:
        """True when the update took optimizer steps and skipped every one (nothing changed)."""
        o = self.optim
        return o is not None and o.skipped is not None and o.steps > 0 and o.skipped >= o.steps


@dataclass(frozen=True)
class SFTMetrics:
    """One supervised step of one role (the same on every rank)."""

    loss: float = metric("sft/loss")
    """Token-mean NLL of the assistant tokens."""
    tokens: float = metric("sft/tokens")
    """Assistant tokens the loss averages over."""
    grad_norm: float = metric("optim/grad_norm")
    """Gradient norm before clipping."""
    lr: float = metric("optim/lr")
    """Learning rate of the step (``sft.lr`` or the schedule's)."""
    step_seconds: float = metric("time/step")
    """Seconds of the step."""
    sft_step: float = metric("learner/sft_step")
    """SFT steps done by this learner, this one included."""
    skipped: float | None = metric("sft/skipped", optional=True)
    """1 when the step was skipped (loss or gradient norm not finite on some rank: weights and
    optimizer state untouched), else 0."""
