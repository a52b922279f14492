"""A tiny-budget CNN+PPO run on RLlib (CPU, one env runner), as a user launches it, then its figures
re-derived by hand: every held-out episode's recorded actions replayed on the project's own env give
the recorded return and success, the seeds are the VLM recipes' held-out seeds, and the reported
success is the mean of those episodes' ``info["success"]``. The metrics file has duet-rl's layout."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.progress import METRICS_SCHEMA
from deploy.baselines.config import held_out_seeds
from rollout.envs import make_env

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
EVAL = 12


def _replay(env_name: str, seed: int, actions: list[int]) -> tuple[float, bool, bool]:
    """(return, success, truncated) of ``actions`` from ``reset(seed=seed)``; the episode must end
    on the last action and not before."""
    env = make_env(env_name, image_size=300)
    env.reset(seed=seed)
    ret, done = 0.0, False
    for k, a in enumerate(actions):
        assert not done, f"seed {seed}: episode ended before action {k}"
        _, r, term, trunc, info = env.step(a)
        ret, done = ret + r, term or trunc
    assert done, f"seed {seed}: episode still running after its recorded actions"
    return ret, bool(info["success"]), bool(trunc)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn_ppo") / "run"
    sets = [f"output_dir={out}", "env.name=numberline", "seed=0", "train.env_steps=256",
            "ppo.train_batch_size=128", "ppo.minibatch_size=64", "ppo.num_epochs=1",
            f"eval.episodes={EVAL}", "eval.curve_every_steps=128", "eval.curve_episodes=4",
            "cluster.env_runners=1", "cluster.envs_per_runner=2", "cluster.num_cpus=2"]
    cmd = [sys.executable, "-m", "deploy.baselines"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_budget_and_held_out_episode_count(run):
    out, proc = run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"] == "numberline" and summary["stopped_by"] == "env_steps"
    # two iterations of ~128 sampled steps (RLlib may overshoot a batch by a step or two per env)
    assert summary["iterations"] == 2 and 256 <= summary["env_steps"] <= 256 + 8
    assert summary["final"]["episodes"] == EVAL and summary["initial"]["episodes"] == EVAL
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["held_out_success"] == summary["final"]["success"] and last["episodes"] == EVAL


def test_held_out_success_is_the_mean_of_replayed_episodes(run):
    out, _ = run
    summary = json.loads((out / "summary.json").read_text())
    episodes = json.loads((out / "eval_final_episodes.json").read_text())
    assert [e["seed"] for e in episodes] == held_out_seeds(0, EVAL)
    returns, wins = [], []
    for e in episodes:
        ret, success, truncated = _replay("numberline", e["seed"], e["actions"])
        assert (ret, success, truncated) == (e["episode_return"], e["success"], e["truncated"])
        assert success == (ret > 0)
        # NumberLine: +1 only on reaching the target, -1 per step that did not get closer
        assert ret <= 1.0 and (success == (ret == 1.0))
        returns.append(ret)
        wins.append(success)
    assert summary["final"]["success"] == sum(wins) / EVAL
    assert summary["final"]["reward"] == pytest.approx(sum(returns) / EVAL)


def test_metrics_file_has_duet_rl_layout(run):
    out, _ = run
    table = pq.read_table(out / "metrics.parquet")
    assert table.schema.equals(METRICS_SCHEMA)
    rows = table.to_pylist()
    summary = json.loads((out / "summary.json").read_text())
    final = {r["name"]: r["value"] for r in rows if r["scope"] == "eval/final"}
    assert final == summary["final"] and all(r["step"] == -1 for r in rows if r["scope"].startswith("eval/"))
    rollout = [r for r in rows if r["scope"] == "rollout"]
    assert sorted({r["step"] for r in rollout}) == list(range(summary["iterations"]))
    steps = [r["value"] for r in rollout if r["name"] == "env_steps"]
    assert steps == sorted(steps) and steps[-1] == summary["env_steps"]
    episodes = [r["value"] for r in rollout if r["name"] == "episodes"]
    success = [r["value"] for r in rollout if r["name"] == "success"]
    assert sum(episodes) > 0 and all(0.0 <= s <= 1.0 for s in success if not math.isnan(s))
    heldout = [r for r in rows if r["scope"] == "heldout" and r["name"] == "episodes"]
    assert heldout and all(r["value"] == 4 for r in heldout)
    assert {r["name"] for r in rows if r["scope"] == "learner/policy"} >= {"loss/policy", "policy/entropy"}
