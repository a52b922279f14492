"""Build a rollout worker from a recipe, inside its Ray actor (and again after every restart).

Engines: one vLLM engine per distinct (base model, engine config); two roles on the same base model
share one engine and are told apart by their adapters (IMMO's "one base model, two adapters"),
two roles on different base models (a text LM Reasoner, a VLM Observer) get one engine each.

:class:`TrainEvalWorker` is a :class:`rollout.worker.RolloutWorker` that can also evaluate:
the same engines and adapters, one greedy sample per held-out task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from cluster.config import Recipe
from rewards import build_reward
from rewards.composite import weighted_sum
from rollout.config import RolloutConfig
from rollout.engine.base import Engine
from rollout.episode_arrow import EpisodeBatch
from rollout.worker import RolloutStats, RolloutWorker


def eval_config(config: RolloutConfig) -> RolloutConfig:
    """``config`` with G = 1 and greedy sampling for every role (deterministic evaluation)."""
    return config.evaluation()


class TrainEvalWorker(RolloutWorker):
    """A rollout worker with a second, evaluation view of the same engines."""

    def __init__(self, config: RolloutConfig, engines: Mapping[str, Engine], reward) -> None:
        super().__init__(config, engines, reward)
        self.evaluator = RolloutWorker(eval_config(config), engines, reward)

    def evaluate(self, items: Sequence[Any], versions: Mapping[str, int],
                 *, step: int = 0) -> tuple[EpisodeBatch, RolloutStats]:
        return self.evaluator.rollout(items, versions, step=step)


def build_reward_fn(recipe: Recipe):
    """The run's reward: one term as itself, several as a weighted sum keeping every component."""
    terms = [{"name": t.name, "kwargs": t.kwargs, "weight": t.weight} for t in recipe.rewards]
    if len(terms) == 1 and terms[0]["weight"] == 1.0:
        return build_reward(terms[0])
    return weighted_sum(terms)


@dataclass(frozen=True)
class RolloutWorkerFactory:
    """Picklable recipe of a rollout worker: Ray calls it in the actor process to build the worker."""

    recipe_json: str
    model_dirs: Mapping[str, str]
    """Role -> its base model's directory, resolved on the driver (:func:`cluster.models.resolve_models`)."""

    def __call__(self) -> TrainEvalWorker:
        from rollout.engine.config import serve_mode
        from rollout.engine.vllm_engine import VLLMEngine

        recipe = Recipe.model_validate_json(self.recipe_json)
        roles = recipe.resolve().roles
        key_of = {r.name: self.model_dirs[r.name] + r.engine.model_dump_json() for r in roles}
        engines: dict[str, Engine] = {}
        shared: dict[str, Engine] = {}
        for role in roles:
            key = key_of[role.name]
            if key not in shared:  # serve "auto" resolved knowing every adapter the engine's roles use
                mode = serve_mode(role.engine, [r.adapter for r in roles if key_of[r.name] == key])
                shared[key] = VLLMEngine(self.model_dirs[role.name], role.engine.model_copy(update={"serve": mode}))
            engines[role.name] = shared[key]
        return TrainEvalWorker(recipe.rollout, engines, build_reward_fn(recipe))
