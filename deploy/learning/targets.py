"""The learning benchmark's rows: each seed paper's recipe, the figure it must reach, the paper's own.

A row is met when EVERY seed's run meets it (issue 12): the held-out metric after RL is at least
``at_least`` and at least ``over_start`` above the run's own start (the held-out figure after SFT /
warm start, before any RL step), and, where ``start_at_most`` is set, the start was at most that
(r1_vlm's cryptograms: RL must carry correctness from near zero, not polish an SFT that already
solves them). Pure data and one pure function; imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """One row of the learning table."""

    label: str
    """Row name in the table (a recipe name, or recipe + variant)."""
    recipe: str
    """Recipe run by ``duet train`` (``cluster/recipes/<recipe>.toml``)."""
    paper: str
    """Seed paper the recipe follows."""
    algorithm: str
    """What the recipe trains with, as the table says it."""
    metric: str = "success"
    """Held-out figure compared: ``success`` or a reward component (``reward/<name>``), each an
    evaluation's mean over its held-out episodes."""
    at_least: float | None = None
    """After RL the metric must be >= this (fraction, 0-1)."""
    over_start: float | None = None
    """After RL the metric must be >= the start + this (fraction: 0.20 = 20 points)."""
    start_at_most: float | None = None
    """The start (after SFT) must be <= this, or the row is not met."""
    paper_figure: str = "-"
    """The paper's published figure, quoted (not re-run)."""
    overrides: tuple[str, ...] = field(default_factory=tuple)
    """Extra ``--set`` overrides of the row (an ablation of the recipe)."""

    def describe(self) -> str:
        """The target in words, e.g. ``success >= 0.85 and >= start + 20 points``."""
        parts = []
        if self.at_least is not None:
            parts.append(f"{self.metric} >= {self.at_least:.2f}")
        if self.over_start is not None:
            parts.append(f">= start + {100 * self.over_start:.0f} points")
        if self.start_at_most is not None:
            parts.append(f"from a start <= {self.start_at_most:.2f}")
        return " and ".join(parts) or "-"


def meets(target: Target, start: float | None, after: float | None) -> bool | None:
    """Whether one run meets ``target`` (None: the run has no figure to judge)."""
    if start is None or after is None:
        return None
    ok = True
    if target.at_least is not None:
        ok &= after >= target.at_least - 1e-9
    if target.over_start is not None:
        ok &= after - start >= target.over_start - 1e-9
    if target.start_at_most is not None:
        ok &= start <= target.start_at_most + 1e-9
    return ok


RL4VLM, R1_VLM, IMMO = "RL4VLM", "r1_vlm", "IMMO"
PPO = "PPO, value head, GAE, CoT lambda 0.5"

TARGETS: tuple[Target, ...] = (
    Target("numberline_ppo", "numberline_ppo", RL4VLM, PPO, at_least=0.85, over_start=0.20,
           paper_figure="SFT 24.8 -> RL 89.4"),
    Target("blackjack_ppo", "blackjack_ppo", RL4VLM, PPO, at_least=0.38, over_start=0.08,
           paper_figure="23.1 -> 40.2"),
    Target("ezpoints_ppo", "ezpoints_ppo", RL4VLM, PPO, at_least=0.40, over_start=0.15,
           paper_figure="23.0 -> 50.0"),
    Target("cryptogram_grpo", "cryptogram_grpo", R1_VLM, "GRPO, format + decoding + correctness",
           metric="reward/cryptogram_correctness", at_least=0.60, start_at_most=0.10,
           paper_figure="96% (3B model)"),
    Target("immo_dialogue", "immo_dialogue", IMMO, "alternating RL of two different base models",
           at_least=0.75, over_start=0.10, paper_figure="ScienceQA 84.8"),
    Target("immo_dialogue (Observer-only RL)", "immo_dialogue", IMMO, "RL of the Observer alone",
           overrides=("train.role_order=[\"observer\"]",)),
    Target("immo_dialogue (Reasoner-only RL)", "immo_dialogue", IMMO, "RL of the Reasoner alone",
           overrides=("train.role_order=[\"reasoner\"]",)),
    Target("default", "default", "-", "GRPO", over_start=0.20),
    Target("smollm2_grpo", "smollm2_grpo", "-", "GRPO, LoRA, SmolLM2-135M (pretrained)", over_start=0.10),
)
"""Issue 12's table, in its order."""


def targets_for(names: tuple[str, ...] | list[str]) -> list[Target]:
    """The rows of the recipes ``names`` (every row when empty); a recipe with no row gets one
    without a target (any recipe can be measured)."""
    if not names:
        return list(TARGETS)
    rows = [t for t in TARGETS if t.recipe in names]
    known = {t.recipe for t in rows}
    return rows + [Target(n, n, "-", "-") for n in names if n not in known]
