"""Held-out evaluation of a pixel policy: one episode per env seed, all episodes stepped in lock-step.

``evaluate(act, env_config, seeds)`` resets one :class:`~rollout.envs.rllib_env.PixelCardsEnv`
per seed (``reset(seed=s)``: the same start state as the VLM recipes' env seed s), then each step
asks ``act`` for the actions of every live episode at once ((B, H, W, 3) float32 -> (B,) ints) and
steps them until each terminates or truncates. Success is the env's own ``info["success"]`` at the
episode's end (return > 0); the result's ``success`` is its mean, ``reward`` the mean return,
``episodes`` the number of seeds. Imports no Ray: ``act`` may be a scripted policy (tests) or the
RLlib module's greedy action (:mod:`deploy.baselines.train`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rollout.envs.rllib_env import PixelCardsEnv

Act = Callable[[np.ndarray], np.ndarray]
"""(B, H, W, 3) float32 observations -> (B,) action indices."""


@dataclass(frozen=True)
class EpisodeRecord:
    """One held-out episode: its seed, the actions played, the return, how it ended."""

    seed: int
    actions: tuple[int, ...]
    episode_return: float
    success: bool
    """``info["success"]`` after the last step (the env's rule: the episode ended with return > 0)."""
    truncated: bool


@dataclass(frozen=True)
class EvalResult:
    """Mean figures over ``records`` (one per seed, in seed order)."""

    records: tuple[EpisodeRecord, ...]

    @property
    def episodes(self) -> int:
        return len(self.records)

    @property
    def success(self) -> float:
        return sum(r.success for r in self.records) / len(self.records) if self.records else 0.0

    @property
    def reward(self) -> float:
        return sum(r.episode_return for r in self.records) / len(self.records) if self.records else 0.0

    def as_metrics(self) -> dict[str, float]:
        """The figures a run logs under ``eval/<label>`` (names as duet-rl's evaluations)."""
        return {"success": self.success, "reward": self.reward, "episodes": float(self.episodes)}


def evaluate(act: Act, env_config: Mapping[str, Any], seeds: Sequence[int]) -> EvalResult:
    """Play one episode per seed with ``act`` (see the module docstring)."""
    envs = [PixelCardsEnv(env_config) for _ in seeds]
    obs = [env.reset(seed=int(s))[0] for env, s in zip(envs, seeds)]
    actions: list[list[int]] = [[] for _ in seeds]
    returns = [0.0] * len(seeds)
    ended: dict[int, tuple[bool, bool]] = {}
    while len(ended) < len(seeds):
        live = [i for i in range(len(seeds)) if i not in ended]
        chosen = np.asarray(act(np.stack([obs[i] for i in live])), dtype=np.int64).reshape(-1)
        if chosen.shape != (len(live),):
            raise ValueError(f"act returned {chosen.shape[0]} actions for {len(live)} observations")
        for i, a in zip(live, chosen):
            obs[i], reward, terminated, truncated, info = envs[i].step(int(a))
            actions[i].append(int(a))
            returns[i] += float(reward)
            if terminated or truncated:
                ended[i] = (bool(info["success"]), bool(truncated))
    return EvalResult(tuple(
        EpisodeRecord(int(s), tuple(actions[i]), returns[i], ended[i][0], ended[i][1])
        for i, s in enumerate(seeds)))
