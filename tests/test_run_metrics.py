"""What :class:`cluster.progress.RunLog` records as metrics, against the rows it writes to
metrics.parquet: each gauge's last value equals the last value of the row its spec names
(``MetricSpec.row``); counters add up the driver loop's episodes; nothing is set that the step did not
measure (no KL to the reference without a KL term, no reward for an empty batch)."""

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster.metrics import SPECS, row_of
from cluster.progress import RunLog
from rollout.episode_arrow import EpisodeBatch
from rollout.types import Episode

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Stats:
    tokens_per_s: float


def batch(rewards: list[float]) -> EpisodeBatch:
    return EpisodeBatch(tuple(Episode(f"e{i}", "g0", "t0", (), reward=r, success=r > 0.5) for i, r in enumerate(rewards)))


def last_rows(run_dir: Path) -> dict[tuple[str, str], float]:
    return {(r["scope"], r["name"]): r["value"] for r in pq.read_table(run_dir / "metrics.parquet").to_pylist()}


def test_gauges_mirror_their_parquet_rows_and_counters_add_up(tmp_path):
    log = RunLog(tmp_path, 0, print_lines=False)
    rec = log.recorder
    # step 0: 4 episodes collected, none stale, 4 in flight (async), staleness 0
    log.loop(0, 4, 0, {"policy": 0.0}, 4)
    log.step(0, batch([0.0, 1.0, 1.0, 0.5]), [Stats(100.0), Stats(20.0)],
             {"policy": {"policy/entropy": 1.5, "policy/approx_kl": 0.004, "loss/policy": -0.1}}, {}, {"policy": 2},
             {"time/sample": 0.5, "time/step": 1.0})
    # step 1: 4 collected, 1 stale; the 3 trained lag one version; nothing launched after the last step
    log.loop(1, 4, 1, {"policy": 1.0}, 0)
    log.step(1, batch([1.0, 1.0, 0.0]), [Stats(90.0)],
             {"policy": {"policy/entropy": 1.25, "policy/approx_kl": 0.002, "kl/ref": 0.03}}, {}, {"policy": 3},
             {"time/sample": 0.5, "time/step": 1.0})
    rows = last_rows(tmp_path)
    for (name, tags) in [("duet_reward", {}), ("duet_success_rate", {}), ("duet_tokens_per_s", {}),
                         ("duet_entropy", {"role": "policy"}), ("duet_approx_kl", {"role": "policy"}),
                         ("duet_kl_ref", {"role": "policy"}), ("duet_staleness", {"role": "policy"}),
                         ("duet_queue_depth", {"queue": "in_flight"})]:
        assert rec.latest(name, **tags) == rows[row_of(SPECS[name], tags)], name
    assert rec.latest("duet_reward") == pytest.approx(2 / 3) and rec.latest("duet_success_rate") == pytest.approx(2 / 3)
    assert rec.latest("duet_tokens_per_s") == 90.0  # the step's workers summed: step 0 had 120
    assert rec.latest("duet_episodes_produced") == 8.0 and rec.latest("duet_episodes_dropped", reason="stale") == 1.0
    assert rows[("rollout", "dropped/stale")] == 1.0


def test_an_empty_batch_sets_no_reward_and_an_untrained_role_no_kl(tmp_path):
    log = RunLog(tmp_path, 0, print_lines=False)
    rec = log.recorder
    log.loop(0, 8, 8, {}, 8)  # every episode stale: no staleness of trained episodes
    log.step(0, batch([]), [Stats(50.0)], {"policy": {"batch/samples": 0.0, "batch/episodes": 0.0}}, {},
             {"policy": 2}, {"time/sample": 0.5, "time/step": 1.0})
    for name in ("duet_reward", "duet_success_rate"):
        assert rec.latest(name) is None
    for name in ("duet_entropy", "duet_approx_kl", "duet_kl_ref", "duet_staleness"):
        assert rec.latest(name, role="policy") is None
    assert rec.latest("duet_tokens_per_s") == 50.0 and rec.latest("duet_queue_depth", queue="in_flight") == 8.0
    assert rec.latest("duet_episodes_dropped", reason="stale") == 8.0


def test_a_typed_learner_update_is_logged_under_its_metric_names(tmp_path):
    from learner.metrics import AdvantageStats, LossStats, OptimStats, UpdateMetrics, flatten

    adv = AdvantageStats(reward_mean=0.5, reward_std=0.5, reward_normalized_mean=0.5, adv_mean=0.0, adv_std=1.0,
                         mismatch_mean_abs_log_ratio=0.01, mismatch_max_abs_log_ratio=0.1, mismatch_kl=0.001,
                         mismatch_truncated_frac=0.0)  # no value head, no KL term
    loss = LossStats(policy=-0.1, total=-0.1, approx_kl=0.004, clip_frac=0.0, dual_clip_frac=0.0, entropy=1.5)
    update = UpdateMetrics(advantage=adv, loss=loss, optim=OptimStats(grad_norm=1.0, grad_norm_max=1.5, steps=2.0),
                           phase_seconds={"build": 0.1}, step_seconds=0.5, samples=4.0, episodes=4.0, tokens=40.0,
                           output_tokens=8.0, tokens_per_s=160.0, learner_step=1.0, lr=1e-4)
    log = RunLog(tmp_path, 0, print_lines=False)
    log.step(0, batch([0.0, 1.0, 1.0, 0.0]), [Stats(100.0)], {"policy": update}, {}, {"policy": 1},
             {"time/sample": 0.5, "time/step": 1.0})
    rows = {name: v for (scope, name), v in last_rows(tmp_path).items() if scope == "learner/policy"}
    assert rows == flatten(update) and "kl/ref" not in rows and "loss/value" not in rows
    assert log.recorder.latest("duet_entropy", role="policy") == 1.5
    assert log.recorder.latest("duet_kl_ref", role="policy") is None
