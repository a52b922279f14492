"""The CNN baseline's pixel env equals the project's env step for step; its held-out evaluator and
recipe loader on hand-worked cases. No Ray: gymnasium, numpy and Pillow only."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deploy.baselines.config import ConfigError, held_out_seeds, load_config
from deploy.baselines.evaluate import evaluate
from rollout.envs import ENVS, make_env
from rollout.envs.rllib_env import PixelCardsEnv

pytestmark = pytest.mark.unit

SEEDS = (0, 7, 10**9 + 3)


BACKGROUNDS = {"numberline": (255, 255, 255), "ezpoints": (0x35, 0x65, 0x4D), "points24": (0x35, 0x65, 0x4D),
               "blackjack": (0x35, 0x65, 0x4D)}


def _resized(image: np.ndarray, size: int, background=None) -> np.ndarray:
    """The documented observation, computed here from the project's own picture."""
    small = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), dtype=np.float32)
    return (small if background is None else np.abs(small - np.float32(background))) / 255.0


@pytest.mark.parametrize("name", sorted(ENVS))
@pytest.mark.parametrize("obs_size,subtract", [(84, False), (64, False), (84, True)])
def test_pixel_env_equals_project_env_step_for_step(name, obs_size, subtract):
    bg = BACKGROUNDS[name] if subtract else None
    for seed in SEEDS:
        ref = make_env(name, image_size=300)
        env = PixelCardsEnv({"env": name, "obs_size": obs_size, "subtract_background": subtract})
        assert env.actions == ref.ACTIONS and env.action_space.n == len(ref.ACTIONS)
        ref_obs, ref_info = ref.reset(seed=seed)
        obs, info = env.reset(seed=seed)
        assert obs.shape == (obs_size, obs_size, 3) and obs.dtype == np.float32
        assert env.observation_space.contains(obs)
        np.testing.assert_array_equal(obs, _resized(ref_obs, obs_size, bg))
        assert info == ref_info
        if subtract:
            assert obs[0, 0].tolist() == [0.0, 0.0, 0.0]  # the corner is plain background
        rng, done, steps = np.random.default_rng(seed), False, 0
        while not done:
            a = int(rng.integers(len(ref.ACTIONS)))
            r_obs, r_rew, r_term, r_trunc, r_info = ref.step(a)
            o, rew, term, trunc, inf = env.step(a)
            np.testing.assert_array_equal(o, _resized(r_obs, obs_size, bg))
            assert (rew, term, trunc, inf) == (r_rew, r_term, r_trunc, r_info)
            done, steps = term or trunc, steps + 1
        assert steps <= ref.max_steps
        assert inf["success"] == (inf["episode_return"] > 0)


def test_pixel_env_keeps_truncation_and_success_of_a_worked_numberline_game():
    env = PixelCardsEnv({"env": "numberline", "obs_size": 64})
    env.reset(options={"current": 2, "target": 4})
    assert env.step(1)[1:4] == (0.0, False, False)         # 2 -> 3: closer, 0
    _, reward, term, trunc, info = env.step(1)              # 3 -> 4: reached, +1
    assert (reward, term, trunc, info["success"]) == (1.0, True, False, True)
    env.reset(options={"current": 0, "target": 5})
    rewards = [env.step(0)[1] for _ in range(9)]            # "-" at 0 stays 0: -1 each step
    _, reward, term, trunc, info = env.step(0)
    assert rewards == [-1.0] * 9 and (reward, term, trunc) == (-1.0, False, True)
    assert info["episode_return"] == -10.0 and info["success"] is False
    env_capped = PixelCardsEnv({"env": "numberline", "max_steps": 3})
    env_capped.reset(options={"current": 0, "target": 5})
    assert [env_capped.step(0)[3] for _ in range(3)] == [False, False, True]


def test_pixel_env_rejects_unknown_config_keys():
    with pytest.raises(ValueError, match="obs_sise"):
        PixelCardsEnv({"env": "numberline", "obs_sise": 84})


def test_held_out_seeds_follow_the_vlm_recipes_rule():
    assert held_out_seeds(0, 3) == [10**9, 10**9 + 1, 10**9 + 2]
    assert held_out_seeds(1, 2) == [10**9 + 1_000_003, 10**9 + 1_000_004]


@pytest.mark.parametrize("action", [0, 1])
def test_evaluate_numberline_constant_policy_matches_the_rules(action):
    """"-" always (action 0) wins exactly when the target is below the start (return +1 after
    c - g steps); otherwise the distance never shrinks: -1 per step until truncation at 10 steps.
    "+" always (action 1) mirrors it."""
    seeds = held_out_seeds(0, 40)
    result = evaluate(lambda obs: np.full(len(obs), action), {"env": "numberline", "obs_size": 32}, seeds)
    assert result.episodes == 40 and [r.seed for r in result.records] == seeds
    wins = 0
    for rec in result.records:
        start = make_env("numberline").reset(seed=rec.seed)[1]
        c, g = start["current"], start["target"]
        win = g < c if action == 0 else g > c
        wins += win
        assert rec.success == win
        assert rec.episode_return == (1.0 if win else -10.0)
        assert len(rec.actions) == (abs(c - g) if win else 10) and rec.truncated == (not win)
    assert result.success == wins / 40 and 0 < wins < 40
    assert result.reward == pytest.approx((wins * 1.0 + (40 - wins) * -10.0) / 40)
    assert result.as_metrics() == {"success": wins / 40, "reward": result.reward, "episodes": 40.0}


def test_evaluate_blackjack_always_stand_is_one_step_and_success_is_a_win():
    seeds = list(range(60))
    result = evaluate(lambda obs: np.zeros(len(obs), dtype=int), {"env": "blackjack", "obs_size": 32}, seeds)
    assert all(len(r.actions) == 1 for r in result.records)
    assert all(r.success == (r.episode_return == 1.0) for r in result.records)
    assert result.success == sum(r.episode_return == 1.0 for r in result.records) / 60


def test_evaluate_rejects_a_policy_returning_the_wrong_number_of_actions():
    with pytest.raises(ValueError, match="2 actions for 3"):
        evaluate(lambda obs: np.zeros(2, dtype=int), {"env": "numberline", "obs_size": 32}, [0, 1, 2])


def test_shipped_recipe_loads_and_bad_fields_are_named(tmp_path):
    cfg = load_config()
    assert cfg.env.name == "numberline" and cfg.eval.episodes == 200
    assert set(cfg.benchmark.envs) == set(ENVS) and cfg.benchmark.seeds == [0, 1]
    assert cfg.for_run("blackjack", 1).seed == 1 and cfg.for_run("blackjack", 1).env.name == "blackjack"
    with pytest.raises(ConfigError, match=r"ppo\.minibatch_sise: Extra inputs are not permitted"):
        load_config(overrides=("ppo.minibatch_sise=3",))
    with pytest.raises(ConfigError, match=r"env\.name: Input should be"):
        load_config(overrides=("env.name=pong",))
    bad = tmp_path / "bad.toml"
    bad.write_text('[eval]\nepisodes = 0\n')
    out = subprocess.run([sys.executable, "-m", "deploy.baselines", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2 and "eval.episodes: Input should be greater than or equal to 1" in out.stderr


def test_baseline_light_modules_import_no_ray():
    code = ("import sys\nimport deploy.baselines.config, deploy.baselines.evaluate, deploy.baselines.report, "
            "deploy.baselines.train, deploy.baselines.__main__, "
            "rollout.envs.rllib_env\nprint(','.join(m for m in ('ray', 'vllm', 'deepspeed') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_ray_address_local_by_default_and_joins_the_cluster_under_ray_job_submit():
    from deploy.baselines.train import ray_address

    cfg = load_config()
    assert ray_address(cfg, {}) == "local"
    assert ray_address(cfg, {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}) == "auto"
    assert ray_address(load_config(overrides=("cluster.address=ray://head:10001",)), {}) == "ray://head:10001"


def test_relative_run_directory_is_refused_under_ray_job_submit():
    from deploy.baselines.train import check_output_dir

    job = {"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"}
    with pytest.raises(ValueError, match="output_dir: 'runs/"):
        check_output_dir(load_config(), job)
    check_output_dir(load_config(overrides=("output_dir=/shared/runs/{name}_{env}_s{seed}",)), job)
    check_output_dir(load_config(), {})
