"""The CNN+PPO baseline's recipe: one typed tree, validated at load, errors naming the dotted field.

A TOML file (shipped: ``deploy/baselines/cnn_ppo.toml``) with the sections below; every model is
``extra="forbid"`` (a misspelt key is an error) and frozen. ``--set a.b=value`` overrides are
applied before validation (value parsed as TOML, else kept as a string), so they are checked like
the file. Imports no Ray.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

EnvName = Literal["numberline", "ezpoints", "points24", "blackjack"]
ENV_NAMES: tuple[str, ...] = ("numberline", "ezpoints", "points24", "blackjack")
DEFAULT_CONFIG = Path(__file__).with_name("cnn_ppo.toml")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ConfigError(ValueError):
    """A baseline recipe failed to load: the message names the file, the field and the reason."""


class EnvSection(_Config):
    """Which gym_cards environment and how its picture reaches the CNN."""

    name: EnvName = "numberline"
    """Environment (``rollout.envs.ENVS``): numberline, ezpoints, points24 or blackjack."""
    render_size: int = Field(300, ge=16)
    """Side the environment draws its picture at, pixels (RL4VLM: 300)."""
    obs_size: int = Field(84, ge=16, le=300)
    """Side of the CNN's input after a bilinear resize, pixels; float32 RGB in [0, 1]."""
    max_steps: int | None = Field(None, ge=1)
    """Step cap (truncation); None keeps the environment's own (NumberLine 10, EZPoints 10,
    Points24 40, Blackjack 30)."""
    subtract_background: bool = True
    """CNN input = |pixel - the env's background colour| / 255 (background 0, drawing > 0) instead
    of pixel / 255: the same picture, with the constant background taken out."""


class TrainSection(_Config):
    """How long to train."""

    env_steps: int = Field(100_000, ge=1)
    """Budget of environment steps (sampled by the env runners); training stops at the first
    iteration that reaches it."""
    time_limit_s: float = Field(600.0, gt=0)
    """Wall-clock cap on training (evaluation excluded); stops earlier than ``env_steps`` if hit,
    and the summary says so."""


class PPOSection(_Config):
    """RLlib PPO hyperparameters (names as ``PPOConfig.training``)."""

    lr: float = Field(3e-4, gt=0)
    """Adam learning rate."""
    gamma: float = Field(0.9, ge=0, le=1)
    """Discount (RL4VLM: 0.9)."""
    lambda_: float = Field(0.95, ge=0, le=1)
    """GAE lambda (RL4VLM: 0.95)."""
    clip_param: float = Field(0.2, gt=0)
    """PPO ratio clip."""
    entropy_coeff: float = Field(0.01, ge=0)
    """Entropy bonus (RL4VLM: 0.01)."""
    vf_loss_coeff: float = Field(0.5, ge=0)
    """Weight of the value loss (shared encoder)."""
    vf_clip_param: float = Field(10.0, gt=0)
    """Clip of the value loss (returns here are within [-40, 10])."""
    grad_clip: float | None = Field(0.5, gt=0)
    """Global gradient-norm clip; None: no clip."""
    train_batch_size: int = Field(1024, ge=16)
    """Env steps per training iteration (``train_batch_size_per_learner``)."""
    minibatch_size: int = Field(256, ge=1)
    """SGD minibatch size."""
    num_epochs: int = Field(4, ge=1)
    """Passes over each training batch."""

    @model_validator(mode="after")
    def _minibatch(self) -> PPOSection:
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) exceeds train_batch_size ({self.train_batch_size})")
        return self


class ModelSection(_Config):
    """The CNN: RLlib's default PPO RLModule with a conv encoder (``DefaultModelConfig``)."""

    conv_filters: list[tuple[int, int, int]] = [(16, 8, 4), (32, 4, 2), (32, 3, 2)]
    """Conv stack, one [channels, kernel, stride] per layer (square kernels, "same" padding)."""
    head_hiddens: list[int] = [128]
    """Hidden sizes of the policy and value heads' MLPs."""
    share_encoder: bool = True
    """One encoder for the policy and the value function (``vf_share_layers``)."""


class EvalSection(_Config):
    """Held-out evaluation: greedy actions (argmax of the policy's logits) on fixed env seeds."""

    episodes: int = Field(200, ge=1)
    """Held-out episodes, env seeds ``10**9 + seed * 1_000_003 + i`` for i < episodes: the same
    rule as the VLM recipes' held-out seeds (``cluster.run.load_items``)."""
    curve_every_steps: int = Field(10_000, ge=0)
    """Also evaluate greedily during training, every this many env steps (0: never), for the curve."""
    curve_episodes: int = Field(50, ge=1)
    """Held-out episodes of each curve point (the first ones of the held-out seeds)."""


class ClusterSection(_Config):
    """Ray resources and where the run joins."""

    env_runners: int = Field(1, ge=0)
    """Remote RLlib EnvRunner actors (0: sample in the driver)."""
    envs_per_runner: int = Field(4, ge=1)
    """Vectorised environments per env runner."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of a local Ray (None: all of this machine's); ignored when joining a cluster."""
    address: str | None = None
    """Ray address; None: a local single-node Ray, or the cluster under ``ray job submit``."""


class BenchmarkSection(_Config):
    """The results table (``--table``): which environments and seeds, with per-env budgets."""

    envs: list[EnvName] = list(ENV_NAMES)
    """Environments of the table, in row order."""
    seeds: list[int] = [0, 1]
    """Seeds of each environment (one run per seed)."""
    env_steps: dict[EnvName, int] = {}
    """Per-environment env-step budget replacing ``train.env_steps``."""
    results_dir: str = "deploy/learning/results"
    """Where ``cnn_baseline.md``, ``.json`` and ``.png`` are written (relative: to the repo root)."""

    @model_validator(mode="after")
    def _seeds(self) -> BenchmarkSection:
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        return self


class BaselineConfig(_Config):
    """One CNN+PPO run (or, with ``benchmark``, the recipe of the results table)."""

    name: str = "cnn_ppo"
    """Run name; the run directory is ``output_dir`` with {name}, {env} and {seed} filled."""
    seed: int = 0
    """Seed of RLlib (weights, sampling) and of the held-out env seeds."""
    output_dir: str = "runs/{name}_{env}_s{seed}"
    """Run directory (relative: to the current directory); metrics.parquet and summary.json."""
    env: EnvSection = EnvSection()
    """The environment."""
    train: TrainSection = TrainSection()
    """The budget."""
    ppo: PPOSection = PPOSection()
    """PPO's hyperparameters."""
    model: ModelSection = ModelSection()
    """The CNN."""
    eval: EvalSection = EvalSection()
    """Held-out evaluation."""
    cluster: ClusterSection = ClusterSection()
    """Ray."""
    benchmark: BenchmarkSection = BenchmarkSection()
    """The results table's runs."""

    def for_run(self, env: str, seed: int) -> BaselineConfig:
        """A copy for one table run: ``env`` and ``seed`` set, the per-env budget applied."""
        steps = self.benchmark.env_steps.get(env, self.train.env_steps)  # type: ignore[call-overload]
        tree = self.model_dump()
        tree["env"]["name"], tree["seed"], tree["train"]["env_steps"] = env, seed, steps
        return BaselineConfig.model_validate(tree)

    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name, env=self.env.name, seed=self.seed))

    def env_config(self) -> dict[str, Any]:
        """The ``rollout.envs.rllib_env.PixelCardsEnv`` config of this run."""
        e = self.env
        return {"env": e.name, "obs_size": e.obs_size, "render_size": e.render_size, "max_steps": e.max_steps,
                "subtract_background": e.subtract_background}


def held_out_seeds(seed: int, n: int) -> list[int]:
    """The VLM recipes' held-out env seeds (``cluster.run.load_items``) for recipe seed ``seed``."""
    return [10**9 + seed * 1_000_003 + i for i in range(n)]


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=1"`` -> (["a", "b"], 1); a value that is not TOML stays a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def _set_dotted(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        node = tree.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {k} is not a section")
        tree = node
    tree[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: tuple[str, ...] = ()) -> BaselineConfig:
    """Load ``path`` (None: the shipped ``cnn_ppo.toml``), apply overrides, validate."""
    file = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        tree = tomllib.loads(file.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{file}: cannot read baseline recipe: {err}") from None
    for item in overrides:
        _set_dotted(tree, *parse_override(item))
    try:
        return BaselineConfig.model_validate(tree)
    except ValidationError as err:
        lines = [f"{file}: invalid baseline recipe"]
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {where}: {e['msg']}")
        raise ConfigError("\n".join(lines)) from None
