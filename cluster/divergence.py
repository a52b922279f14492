"""Watching the learners' updates for divergence (issue 14): skipped steps, the stop, the warnings.

The learner skips an optimizer step whose loss or gradient norm is not finite (weights, optimizer
state and schedule untouched: :mod:`learner.update`). The driver feeds each role's
:class:`learner.metrics.UpdateMetrics` to :meth:`DivergenceMonitor.update`, which says whether the
update changed anything (an update whose every step was skipped did not: its adapter is not
published again, so the rollout workers keep serving the last good version), and
:meth:`DivergenceMonitor.stop_if_diverged` ends the run with :class:`TrainingDiverged` after
``train.max_skipped_steps`` such updates of one role in a row, naming the last complete checkpoint.

It also warns (one event per episode of divergence, counted as ``divergence_warnings``) when

* the policy's token entropy reaches :data:`ENTROPY_FRACTION` of its maximum, log(vocabulary):
  the policy has become uniform noise (the issue's ``optim.lr = 1e6`` run sat at 8.23 = log(3755));
* the KL runs away: the PPO approx-KL between pi_old and pi, or the KL to the reference, above
  :data:`KL_LIMIT` nats per token (a healthy default run stays under 0.26), or the KL to the
  reference doubling :data:`KL_DOUBLINGS` updates in a row above :data:`KL_FLOOR`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.metrics import SFTMetrics, UpdateMetrics

__all__ = ["TrainingDiverged", "DivergenceMonitor", "last_complete_checkpoint", "ENTROPY_FRACTION", "KL_LIMIT",
           "KL_DOUBLINGS", "KL_FLOOR"]

ENTROPY_FRACTION = 0.95
"""Entropy at or above this fraction of log(vocab) is a divergence warning."""
KL_LIMIT = 1.0
"""approx-KL (pi_old -> pi) or KL to the reference above this many nats per token is a warning."""
KL_DOUBLINGS = 3
"""The KL to the reference doubling this many updates in a row (above :data:`KL_FLOOR`) is a warning."""
KL_FLOOR = 0.1
"""Doublings of the KL to the reference below this value are not a runaway (it starts near 0)."""


class TrainingDiverged(RuntimeError):
    """The run stopped because a role's updates were skipped as non-finite too many times in a row;
    the message is one line naming the last complete checkpoint."""


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` would take (:func:`cluster.checkpoints.usable_checkpoint`: the
    newest whole one of this run), or None."""
    from cluster.checkpoints import usable_checkpoint

    try:
        return usable_checkpoint(run_dir, lambda line: None)
    except FileNotFoundError:
        return None


@dataclass
class DivergenceMonitor:
    """Fed every update of every role (:meth:`update`) by the driver's loop; ``counters`` (the
    run's :class:`cluster.schedule.Counters`) get ``skipped_updates`` and ``divergence_warnings``."""

    max_skipped: int
    """``train.max_skipped_steps``."""
    run_dir: Path
    log: Any
    """The run's :class:`cluster.progress.RunLog` (``event``)."""
    counters: Any
    streak: dict[str, list[int]] = field(default_factory=dict)
    """Role -> the steps of its current run of skipped updates."""
    active: set[tuple[str, str]] = field(default_factory=set)
    """(role, warning kind) whose condition held at the role's last update (warned once already)."""
    kl_ref: dict[str, list[float]] = field(default_factory=dict)
    """Role -> its last KL-to-reference values (the doubling rule)."""

    def rewind(self) -> None:
        """Forget the runs of skipped updates and the warning state (a learner restart went back to a
        checkpoint: the steps since are run again); the counters keep what happened."""
        self.streak.clear()
        self.active.clear()
        self.kl_ref.clear()

    def update(self, role: str, step: int, m: Any) -> bool:
        """Record ``role``'s update of ``step``; True when it changed the adapter (publish it). A
        record that is not an :class:`UpdateMetrics` (a test's hand-made figures) counts as applied."""
        if not isinstance(m, UpdateMetrics):
            return True
        self.warn(role, step, m)
        o = m.optim
        if o is not None and o.skipped:
            self.log.event(f"step {step + 1}: {role}: {int(o.skipped)} of {int(o.steps)} optimizer step(s) "
                           f"skipped (loss or gradient norm not finite; grad norm {o.grad_norm_max:g}); "
                           f"weights and optimizer state unchanged")
        if not m.all_skipped:
            self.streak.pop(role, None)
            return True
        self.counters.skipped_updates += 1
        self.streak.setdefault(role, []).append(step)
        return False

    def sft_step(self, role: str, step: int, m: Any) -> None:
        """One event for a skipped SFT step (:attr:`learner.metrics.SFTMetrics.skipped`); other
        records (a test's fakes) pass."""
        if isinstance(m, SFTMetrics) and m.skipped:
            self.log.event(f"SFT step {step + 1}: {role}: skipped (loss or gradient norm not finite; grad norm "
                           f"{m.grad_norm:g}); weights and optimizer state unchanged")

    def stop_if_diverged(self) -> None:
        """Raise :class:`TrainingDiverged` when some role's last ``max_skipped`` updates were all skipped."""
        for role, steps in self.streak.items():
            if len(steps) >= self.max_skipped:
                ckpt = last_complete_checkpoint(self.run_dir)
                raise TrainingDiverged(
                    f"training diverged: {role}'s updates of steps {steps[0] + 1}-{steps[-1] + 1} were all "
                    f"skipped (loss or gradient norm not finite; train.max_skipped_steps = {self.max_skipped}); "
                    f"last good checkpoint: {ckpt if ckpt is not None else 'none'}")

    def warn(self, role: str, step: int, m: UpdateMetrics) -> None:
        """One event (and one count) when a warning's condition starts to hold (:func:`warnings_of`)."""
        now = warnings_of(m, self.kl_ref.setdefault(role, []))
        for kind, text in now.items():
            if (role, kind) not in self.active:
                self.counters.divergence_warnings += 1
                self.log.event(f"divergence warning, step {step + 1}: {role}: {text}")
        self.active = {(r, k) for r, k in self.active if r != role} | {(role, k) for k in now}


def warnings_of(m: UpdateMetrics, kl_history: list[float]) -> dict[str, str]:
    """Warning kind ("entropy", "kl") -> its text, for the conditions ``m`` meets; ``kl_history``
    (this role's KL-to-reference values, oldest first) is extended with ``m``'s."""
    out = {}
    ent, top = (m.loss.entropy if m.loss else None), m.entropy_max
    if ent is not None and top and (not math.isfinite(ent) or ent >= ENTROPY_FRACTION * top):
        out["entropy"] = (f"policy entropy {ent:.3f} is at its maximum log(vocab) = {top:.3f}: "
                          f"the policy samples uniform noise")
    kl = _kl_runaway(m, kl_history)
    if kl:
        out["kl"] = kl
    return out


def _kl_runaway(m: UpdateMetrics, history: list[float]) -> str | None:
    """The KL-runaway text, or None (see the module doc)."""
    approx = m.loss.approx_kl if m.loss else None
    ref = m.advantage.kl_ref if m.advantage else None
    if ref is not None:
        history.append(ref)
        del history[:-(KL_DOUBLINGS + 1)]
    if approx is not None and not approx <= KL_LIMIT:
        return f"approx-KL(pi_old, pi) {approx:.3g} is above {KL_LIMIT} nats/token"
    if ref is not None and not ref <= KL_LIMIT:
        return f"KL to the reference {ref:.3g} is above {KL_LIMIT} nats/token"
    h = history
    if len(h) > KL_DOUBLINGS and h[-1] > KL_FLOOR and all(b >= 2 * a > 0 for a, b in zip(h, h[1:])):
        return f"KL to the reference doubled {KL_DOUBLINGS} updates in a row, to {h[-1]:.3g}"
    return None
