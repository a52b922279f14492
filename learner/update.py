"""The RL update of one rank (:func:`train_step`) and scoring turns under the current adapter
(:func:`logprobs`, :func:`probe_logprobs`): functions of a :class:`learner.rank.LearnerRank`, each
collective. One ``train_step``:

1. **build** the role's rows from the episodes (other roles' turns are never rows);
2. **old forward** (no grad): log pi_old and values on each rank's rows, summed across ranks so
   every rank holds the whole (B, T) tensors; **reference forward** with the adapter disabled when a
   KL term is configured;
3. **advantages** on the whole batch (identical on every rank): rewards (+ KL in reward, running
   normalisation), estimator by name, truncated IS weights against the sampler's log-probs;
4. **update**: epochs x minibatches; each minibatch's rows are split across ranks and micro batches,
   each micro loss scaled so all of them add up to the minibatch loss; one optimizer step per
   minibatch. The loss statistics are summed over micro batches and ranks by
   :func:`learner.metrics.reduce_loss_stats`.

**Non-finite steps are skipped** (issue 14): a minibatch whose loss is not finite on some rank, or
whose all-reduced gradient norm is not finite, changes nothing. DeepSpeed's own overflow check
(:meth:`learner.deepspeed_engine.ZeroEngine.step_applied`) discards a step whose gradient norm is
not finite; a non-finite micro loss is backpropagated with a NaN factor on the model's outputs
(:func:`poison_if_nonfinite`), so its gradients are NaN on every trainable parameter and that same
check skips the step on every rank even where the loss alone went wrong. Skipped steps are
counted (``OptimStats.skipped``, ``LearnerRank.skipped_steps``); a step DeepSpeed applied although
the loss or norm was not finite is an error, never a silent update. An update whose every step was
skipped keeps the running reward statistics as they were too; ``LearnerRank.step`` counts it all
the same (the driver's steps and the shuffle stream stay aligned), while DeepSpeed's LR schedule
advances on applied steps only.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import torch

from learner.batch import RoleBatch, build_bootstrap_batch, build_role_batch
from learner.config import AlgoConfig
from learner.experience import Experience, compute_experience
from learner.metrics import LossStats, OptimStats, UpdateMetrics, reduce_loss_stats
from learner.ppo import micro_loss, minibatch_denominators
from rollout.episode_arrow import EpisodeBatch
from rollout.types import Episode, Turn

if TYPE_CHECKING:
    from learner.rank import LearnerRank

__all__ = ["train_step", "logprobs", "probe_logprobs", "probe_batch", "as_episode_batch", "Probe",
           "poison_if_nonfinite", "optimizer_step", "loss_norm_len", "NonFiniteStepApplied"]


class NonFiniteStepApplied(RuntimeError):
    """DeepSpeed updated the weights although the loss or the gradient norm was not finite (its
    overflow check disabled, e.g. ``zero_optimization.compute_grad_norm = false``)."""


class Probe(Protocol):
    """A fixed prompt and target tokens scored by the learner and the rollout workers alike
    (:class:`cluster.weight_sync.Probe`)."""

    prompt_ids: Sequence[int]
    target_ids: Sequence[int]


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


def as_episode_batch(batch: EpisodeBatch | tuple[pa.Table, pa.Table]) -> EpisodeBatch:
    """Accept an EpisodeBatch or its two Arrow tables (episodes, images)."""
    return batch if isinstance(batch, EpisodeBatch) else EpisodeBatch.from_arrow(*batch)


def train_step(r: LearnerRank, batch: EpisodeBatch | tuple[pa.Table, pa.Table]) -> UpdateMetrics:
    """One RL update on ``batch`` for the rank's role; returns global metrics (same on all ranks)."""
    timer, algo = _Timer(), r.config.algo
    t_start = time.perf_counter()
    with timer("build"):
        eb = as_episode_batch(batch)
        rb = build_role_batch(eb.episodes, r.config.role, r.pad_id)
    if rb.num_rows == 0:
        return UpdateMetrics(samples=0.0, episodes=float(len(eb.episodes)))
    old, values = rb.rollout_logprobs * rb.loss_mask, None  # pi_old = the sampler ("rollout")
    if algo.old_logprobs == "recompute" or algo.needs_values:
        with timer("old_forward"):
            learner_old, values = r.score(rb, eb.images, use_adapter=True, with_values=algo.needs_values)
        if algo.old_logprobs == "recompute":
            old = learner_old
    ref = None
    if algo.needs_reference:
        with timer("ref_forward"):
            ref, _ = r.score(rb, eb.images, use_adapter=False, with_values=False)
    next_values = None
    if values is not None and algo.advantage_level == "turn":
        with timer("bootstrap_forward"):
            next_values = _bootstrap_values(r, eb)
    with timer("advantages"):
        exp, stats, diag = compute_experience(rb, old, ref, values, algo, r.reward_stats, next_values)
    with timer("update"):
        loss, optim = _update(r, rb, eb.images, exp)
    if optim.skipped < optim.steps:  # a wholly skipped update leaves the reward normaliser too
        r.reward_stats = stats
    r.step += 1
    r.forget_images()
    return _metrics(r, rb, diag, loss, optim, timer, time.perf_counter() - t_start)


def _metrics(r: LearnerRank, rb: RoleBatch, diag, loss: LossStats, optim: OptimStats, timer: _Timer,
             total: float) -> UpdateMetrics:
    tokens = float(rb.attention_mask.sum())
    return UpdateMetrics(
        advantage=diag, loss=loss, optim=optim, phase_seconds=dict(timer.seconds), step_seconds=total,
        samples=float(rb.num_rows), episodes=float(rb.episodes.num_episodes), tokens=tokens,
        output_tokens=float(rb.num_output_tokens),
        tokens_per_s=tokens * (r.config.algo.epochs + 1) / max(total, 1e-9),
        learner_step=float(r.step), lr=r.zero.lr(), entropy_max=math.log(_vocab_size(r)))


def _vocab_size(r: LearnerRank) -> int:
    """Columns of the LM head's logits (the vocabulary the entropy is taken over)."""
    return int(r.zero.module.hf_model.get_output_embeddings().out_features)


def _bootstrap_values(r: LearnerRank, eb: EpisodeBatch) -> torch.Tensor | None:
    """(E,) V(s_T) read on the last prompt token of each truncated episode's final state (0 for
    the others), or None when no episode was truncated; collective."""
    boot = build_bootstrap_batch(eb.episodes, r.config.role, r.pad_id)
    if boot is None:
        return None
    bb, index = boot
    _, v = r.score(bb, eb.images, use_adapter=True, with_values=True)
    out = torch.zeros(len(eb.episodes))
    out[index] = v[torch.arange(bb.num_rows), bb.prompt_lens - 1]
    return out


def _order(r: LearnerRank, n: int, epoch: int) -> np.ndarray:
    if not r.config.algo.shuffle:
        return np.arange(n)
    return np.random.default_rng([r.config.seed, r.step, epoch]).permutation(n)


def loss_norm_len(algo: AlgoConfig, rb: RoleBatch) -> int:
    """The constant divisor of "seq-mean-token-sum-norm": ``algo.norm_len`` (a recipe sets it to the
    role's ``sampling.max_tokens``: Dr.GRPO's generation budget), else the batch's longest output."""
    return algo.norm_len if algo.norm_len is not None else int(rb.output_lens.max())


def _update(r: LearnerRank, rb: RoleBatch, images, exp: Experience) -> tuple[LossStats, OptimStats]:
    algo = r.config.algo
    norm_len = loss_norm_len(algo, rb)
    shares: list[LossStats] = []
    norms, n_steps, skipped = [], 0, 0
    r.zero.train(True)
    for epoch in range(algo.epochs):
        for mb in np.array_split(_order(r, rb.num_rows, epoch), algo.minibatches):
            if len(mb) == 0:
                continue
            mb_rows = mb.tolist()
            sel_mb = rb.select(mb_rows)
            den = minibatch_denominators(sel_mb, exp.select(torch.as_tensor(mb_rows), sel_mb.input_ids.shape[1]),
                                         algo, norm_len)
            finite = True
            for rows in r.micro_slots(mb_rows):
                share, ok = _micro_backward(r, rb, images, exp, rows, den)
                finite = finite and ok
                if share is not None:
                    shares.append(share)
            norm, applied = optimizer_step(r, finite, r.zero.step)
            norms.append(norm)
            n_steps, skipped = n_steps + 1, skipped + (not applied)
    r.skipped_steps += skipped
    loss = reduce_loss_stats(shares, n_steps, lambda xs: _all_reduce(r, xs))
    return loss, OptimStats(grad_norm=float(np.mean(norms)), grad_norm_max=float(np.max(norms)),
                            steps=float(n_steps), skipped=float(skipped))


def optimizer_step(r: LearnerRank, loss_finite: bool, step) -> tuple[float, bool]:
    """``step()`` (one DeepSpeed optimizer step; returns the global grad norm) after the ranks agreed
    whether every rank's loss was finite (``loss_finite``: this rank's answer, all-reduced here);
    returns (grad norm, whether the weights changed). Raises :class:`NonFiniteStepApplied` when
    DeepSpeed applied a step with a non-finite loss or norm; the same outcome on every rank."""
    bad = _all_reduce(r, [0.0 if loss_finite else 1.0])[0] > 0
    norm = step()
    applied = r.zero.step_applied()
    if applied and (bad or not math.isfinite(norm)):
        raise NonFiniteStepApplied(f"learner {r.config.role}: DeepSpeed applied an optimizer step with a "
                                   f"non-finite {'loss' if bad else f'gradient norm {norm}'}; its overflow "
                                   f"check must stay on (zero_optimization.compute_grad_norm, "
                                   f"bf16.check_grad_overflow)")
    return norm, applied


def poison_if_nonfinite(loss: torch.Tensor, *outputs: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """(``loss``, True) when it is finite; else (``loss`` + NaN x the sum of the model's
    ``outputs``, False): backpropagating that makes the gradient of every parameter the outputs
    depend on NaN (NaN x 0 is NaN), so DeepSpeed's overflow check skips the step even when the
    loss went non-finite only through a constant factor."""
    if bool(torch.isfinite(loss.detach()).all()):
        return loss, True
    total = sum(o.sum() for o in outputs if o is not None)
    return loss + float("nan") * total, False


def _all_reduce(r: LearnerRank, xs: list[float]) -> list[float]:
    return r.zero.all_reduce_sum(torch.tensor(xs, dtype=torch.float64)).tolist()


def _micro_backward(r: LearnerRank, rb: RoleBatch, images, exp: Experience, rows: list[int],
                    den) -> tuple[LossStats | None, bool]:
    """Forward + backward of one micro batch (a dummy one when ``rows`` is empty: no statistics);
    (its loss share, whether its loss was finite)."""
    algo = r.config.algo
    sel = rb.select(rows)
    lp, ent, v = r.zero.forward(**r.inputs(sel, images).forward_kwargs(), use_adapter=True,
                                with_entropy=True, with_values=algo.needs_values)
    loss = 0.0 * (lp.sum() + ent.sum() + (v.sum() if v is not None else 0.0))
    stats = None
    if rows:
        n, t = len(rows), sel.input_ids.shape[1]
        e = exp.select(torch.as_tensor(rows), t)
        loss_r, stats = micro_loss(lp[:n, :t], ent[:n, :t], v[:n, :t] if v is not None else None, sel, e, den,
                                   algo, r.world_size)
        loss = loss + loss_r
    loss, finite = poison_if_nonfinite(loss, lp, ent, v)
    r.zero.backward(loss)
    return stats, finite


def logprobs(r: LearnerRank, batch: EpisodeBatch | tuple[pa.Table, pa.Table], use_adapter: bool = True) -> list[list[float]]:
    """Log-probs of the output tokens of each of the role's trainable turns (rows in
    :func:`build_role_batch` order) under the current adapter, or the base model; collective."""
    eb = as_episode_batch(batch)
    rb = build_role_batch(eb.episodes, r.config.role, r.pad_id)
    if rb.num_rows == 0:
        return []
    logp, _ = r.score(rb, eb.images, use_adapter=use_adapter, with_values=False)
    r.forget_images()
    return [logp[i][rb.loss_mask[i]].tolist() for i in range(rb.num_rows)]


def probe_batch(probe: Probe, role: str) -> EpisodeBatch:
    """The probe as a one-turn episode of ``role``, so the learner scores exactly its target ids."""
    turn = Turn(role=role, prompt_ids=tuple(probe.prompt_ids), output_ids=tuple(probe.target_ids),
                output_logprobs=(0.0,) * len(probe.target_ids), adapter_version=0)
    return EpisodeBatch((Episode("probe", "probe", "probe", (turn,)),))


def probe_logprobs(r: LearnerRank, probe: Probe) -> list[float]:
    """Log-probs of the probe's target tokens under the current adapter (what a worker serving it
    must reproduce); collective."""
    return logprobs(r, probe_batch(probe, r.config.role))[0]
