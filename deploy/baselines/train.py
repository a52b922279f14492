"""RL4VLM's CNN+RL baseline with RLlib's PPO (new API stack): one run, from a validated recipe.

The loop reads like the algorithm: build ``PPOConfig`` (env runners sample the pixel env, one local
learner updates RLlib's default PPO RLModule with a conv encoder), then ``algo.train()`` until the
env-step budget is spent, evaluating greedily on held-out seeds every ``eval.curve_every_steps``;
finally the full held-out evaluation. Rows go to ``metrics.parquet`` in duet-rl's layout
(``cluster.progress.METRICS_SCHEMA``): per iteration ``rollout/*`` (training episodes, sampled
actions) and ``learner/policy/*``; the held-out curve under ``heldout/*`` (step = iteration); the
initial and final evaluations as ``eval/initial`` and ``eval/final`` (step -1). ``summary.json``
holds the held-out success and the budget actually used; ``eval_final_episodes.json`` every final
held-out episode (seed, actions, return, success), so the figure can be replayed and checked.

Ray: a local single-node Ray (shut down at the end), or the running cluster (``address="auto"``,
left running) under ``ray job submit``. Only this module (and the CLI that calls it) imports Ray.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cluster.progress import METRICS_SCHEMA
from deploy.baselines.config import BaselineConfig, held_out_seeds
from deploy.baselines.evaluate import EvalResult, evaluate

JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


@dataclass(frozen=True)
class BaselineResult:
    """What one run measured (also in ``summary.json``)."""

    env: str
    seed: int
    run_dir: str
    env_steps: int
    iterations: int
    train_wall_s: float
    wall_s: float
    initial: dict[str, float]
    final: dict[str, float]
    curve: list[dict[str, float]]
    """Held-out curve points: env_steps, success, reward, episodes (and the training success)."""
    stopped_by: str
    """"env_steps" (budget reached) or "time_limit_s"."""


def ray_address(cfg: BaselineConfig, environ: dict[str, str] | None = None) -> str:
    """The address ``ray.init`` gets: the recipe's, "auto" under ``ray job submit``, else "local"."""
    env = os.environ if environ is None else environ
    if cfg.cluster.address:
        return cfg.cluster.address
    return "auto" if JOB_ENV_VAR in env else "local"


def check_output_dir(cfg: BaselineConfig, environ: dict[str, str] | None = None) -> None:
    """Under ``ray job submit`` the job runs in a temporary copy of its working dir, so a relative
    run directory would vanish with it: refuse it (as ``duet train`` does), naming the field."""
    env = os.environ if environ is None else environ
    if JOB_ENV_VAR in env and not Path(cfg.output_dir).is_absolute():
        raise ValueError(f"output_dir: {cfg.output_dir!r} is relative; under ray job submit give an absolute "
                         "directory every node sees (e.g. --set output_dir=$DUET_RUNS/{name}_{env}_s{seed})")


def on_episode_end(*, episode, metrics_logger, **_: Any) -> None:
    """RLlib callback: each training episode's ``info["success"]`` into the ``success`` mean."""
    metrics_logger.log_value("success", float(bool(episode.get_infos(-1)["success"])), reduce="mean", window=200)


def build_algo(cfg: BaselineConfig):
    """The RLlib PPO algorithm of ``cfg`` (new API stack: EnvRunners, a local Learner)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from rollout.envs.rllib_env import PixelCardsEnv

    p, m, c = cfg.ppo, cfg.model, cfg.cluster
    config = (
        PPOConfig()
        .environment(PixelCardsEnv, env_config=cfg.env_config())
        .env_runners(num_env_runners=c.env_runners, num_envs_per_env_runner=c.envs_per_runner,
                     rollout_fragment_length="auto", num_cpus_per_env_runner=1)
        .learners(num_learners=0)
        .training(lr=p.lr, gamma=p.gamma, lambda_=p.lambda_, clip_param=p.clip_param,
                  entropy_coeff=p.entropy_coeff, vf_loss_coeff=p.vf_loss_coeff,
                  vf_clip_param=p.vf_clip_param, grad_clip=p.grad_clip,
                  train_batch_size_per_learner=p.train_batch_size, minibatch_size=p.minibatch_size,
                  num_epochs=p.num_epochs)
        .rl_module(model_config=DefaultModelConfig(
            conv_filters=[[ch, [k, k], s] for ch, k, s in m.conv_filters], conv_activation="relu",
            head_fcnet_hiddens=list(m.head_hiddens), vf_share_layers=m.share_encoder))
        .callbacks(on_episode_end=on_episode_end)
        .debugging(seed=cfg.seed)
        .reporting(metrics_num_episodes_for_smoothing=200)
    )
    return config.build_algo()


def greedy_policy(module):
    """``act`` for :func:`evaluate`: argmax of the module's action logits (its deterministic action)."""
    import torch

    from ray.rllib.core.columns import Columns

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: torch.from_numpy(obs)})
        return out[Columns.ACTION_DIST_INPUTS].argmax(-1).cpu().numpy()

    return act


class Rows:
    """Rows of ``metrics.parquet`` (duet-rl's long layout), flushed after every write."""

    def __init__(self, run_dir: Path) -> None:
        self.path, self.rows, self.t0 = run_dir / "metrics.parquet", [], time.time()

    def add(self, step: int, scope: str, values: dict[str, float]) -> None:
        now = time.time() - self.t0
        self.rows += [{"step": step, "scope": scope, "name": k, "value": float(v), "time_s": now}
                      for k, v in values.items()]
        pq.write_table(pa.Table.from_pylist(self.rows, schema=METRICS_SCHEMA), self.path)


def _iteration_rows(result: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(rollout figures, learner figures) of one ``algo.train()`` result."""
    runners = result.get("env_runners", {})
    learner = result.get("learners", {}).get("default_policy", {})
    rollout = {
        "success": runners.get("success", float("nan")),
        "reward": runners.get("episode_return_mean", float("nan")),
        "episodes": runners.get("num_episodes", 0),
        "episode_len": runners.get("episode_len_mean", float("nan")),
        "env_steps": result.get("num_env_steps_sampled_lifetime", runners.get("num_env_steps_sampled_lifetime", 0)),
    }
    names = {"policy_loss": "loss/policy", "vf_loss": "loss/value", "entropy": "policy/entropy",
             "mean_kl_loss": "policy/approx_kl"}
    return rollout, {dst: learner[src] for src, dst in names.items() if src in learner}


def run_baseline(cfg: BaselineConfig, log=print) -> BaselineResult:
    """Train and evaluate one run of ``cfg`` (see the module docstring)."""
    import ray

    t0 = time.time()
    check_output_dir(cfg)
    run_dir = cfg.run_dir().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.json").write_text(cfg.model_dump_json(indent=2) + "\n")
    address = ray_address(cfg)
    started = not ray.is_initialized()  # a caller's Ray (tests, a notebook) is used and left alone
    if started:
        local = address == "local"
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **({"num_cpus": cfg.cluster.num_cpus} if local and cfg.cluster.num_cpus else {}))
    try:
        return _train_and_evaluate(cfg, run_dir, t0, log)
    finally:
        if started:
            ray.shutdown()  # disconnects; a joined cluster keeps running, a local one stops


def _train_and_evaluate(cfg: BaselineConfig, run_dir: Path, t0: float, log) -> BaselineResult:
    rows, env_cfg = Rows(run_dir), cfg.env_config()
    seeds = held_out_seeds(cfg.seed, cfg.eval.episodes)
    algo = build_algo(cfg)
    try:
        def held_out(n: int) -> EvalResult:
            return evaluate(greedy_policy(algo.get_module()), env_cfg, seeds[:n])

        initial = held_out(cfg.eval.episodes).as_metrics()
        rows.add(-1, "eval/initial", initial)
        log(f"[baseline] {cfg.env.name} s{cfg.seed}: held-out success before training {initial['success']:.3f}")
        curve, it, steps, next_eval, t_train = [], 0, 0, cfg.eval.curve_every_steps, time.time()
        stopped_by = "env_steps"
        while steps < cfg.train.env_steps:
            if time.time() - t_train >= cfg.train.time_limit_s:
                stopped_by = "time_limit_s"
                break
            rollout, learner = _iteration_rows(algo.train())
            steps = int(rollout["env_steps"])
            rows.add(it, "rollout", rollout)
            rows.add(it, "learner/policy", learner)
            if cfg.eval.curve_every_steps and (steps >= next_eval or steps >= cfg.train.env_steps):
                point = {"env_steps": float(steps), **held_out(cfg.eval.curve_episodes).as_metrics(),
                         "train_success": rollout["success"]}
                rows.add(it, "heldout", point)
                curve.append(point)
                next_eval = steps + cfg.eval.curve_every_steps
                log(f"[baseline] {cfg.env.name} s{cfg.seed} it {it + 1} steps {steps}: train success "
                    f"{rollout['success']:.3f} held-out ({cfg.eval.curve_episodes}) {point['success']:.3f} "
                    f"[{time.time() - t_train:.0f}s]")
            it += 1
        train_wall = time.time() - t_train
        last = held_out(cfg.eval.episodes)
        final = last.as_metrics()
        rows.add(-1, "eval/final", final)
        (run_dir / "eval_final_episodes.json").write_text(json.dumps([asdict(r) for r in last.records]) + "\n")
    finally:
        algo.stop()
    result = BaselineResult(cfg.env.name, cfg.seed, str(run_dir), steps, it, train_wall, time.time() - t0,
                            initial, final, curve, stopped_by)
    (run_dir / "summary.json").write_text(json.dumps(result.__dict__, indent=2) + "\n")
    log(f"[baseline] {cfg.env.name} s{cfg.seed}: held-out success {final['success']:.3f} over "
        f"{int(final['episodes'])} episodes after {steps} env steps ({train_wall:.0f}s training)")
    return result
