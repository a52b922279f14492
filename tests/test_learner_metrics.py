"""The learner's typed metrics (:mod:`learner.metrics`): every field of the loss record is summed
across micro batches and ranks (none can be silently dropped), and flattening gives exactly the
metric names a run has always logged, in the same order."""

from dataclasses import fields

import pytest

from learner.metrics import (AdvantageStats, LossStats, OptimStats, SFTMetrics, UpdateMetrics, flatten,
                             reduce_loss_stats)

pytestmark = pytest.mark.unit

LOSS_FIELDS = [f.name for f in fields(LossStats)]


def two_identical_ranks(xs: list[float]) -> list[float]:
    """all_reduce_sum of a world of two ranks that hold the same vector."""
    return [2.0 * x for x in xs]


def test_every_field_of_the_loss_record_is_reduced():
    shares = [LossStats(**{n: float(i + 1) * (k + 1) for i, n in enumerate(LOSS_FIELDS)}) for k in range(3)]
    got = reduce_loss_stats(shares, n_steps=4, all_reduce_sum=two_identical_ranks)
    for i, name in enumerate(LOSS_FIELDS):  # (i+1) * (1 + 2 + 3) per rank, two ranks, 4 steps
        assert getattr(got, name) == pytest.approx(2.0 * (i + 1) * 6 / 4), name


def test_an_unmeasured_statistic_stays_unmeasured_and_one_measured_on_another_rank_is_kept():
    share = LossStats(policy=1.0, total=2.0, approx_kl=0.5, clip_frac=0.25, dual_clip_frac=0.0, entropy=3.0)
    alone = reduce_loss_stats([share], 1, lambda xs: xs)
    assert alone.kl is None and alone.value is None and alone.value_clip_frac is None and alone.policy == 1.0
    # this rank ran only dummy micro batches; the other measured everything (sums 1, counts 1)
    n = len(LOSS_FIELDS)
    other = reduce_loss_stats([], 2, lambda xs: [a + 1.0 for a in xs[:n]] + [c + 1.0 for c in xs[n:]])
    assert all(getattr(other, name) == 0.5 for name in LOSS_FIELDS)


def test_the_empty_reduction_of_a_world_with_no_share_is_all_unmeasured():
    got = reduce_loss_stats([], 1, lambda xs: xs)
    assert all(getattr(got, n) is None for n in LOSS_FIELDS)


def full_update() -> UpdateMetrics:
    adv = AdvantageStats(reward_mean=1, reward_std=2, reward_normalized_mean=3, adv_mean=4, adv_std=5,
                         mismatch_mean_abs_log_ratio=6, mismatch_max_abs_log_ratio=7, mismatch_kl=8,
                         mismatch_truncated_frac=9, value_returns_mean=10, value_mean=11,
                         value_explained_variance=12, kl_ref=13)
    loss = LossStats(kl=14, policy=15, total=16, value=17, approx_kl=18, clip_frac=19, dual_clip_frac=20,
                     entropy=21, value_clip_frac=22)
    return UpdateMetrics(advantage=adv, loss=loss, optim=OptimStats(grad_norm=23, grad_norm_max=24, steps=25),
                         phase_seconds={"build": 26, "update": 27}, step_seconds=28, samples=29, episodes=30,
                         tokens=31, output_tokens=32, tokens_per_s=33, learner_step=34, lr=35)


# the names (and order) learner.rank's train_step dict had before the typed record
NAMES = ["reward/mean", "reward/std", "reward/normalized_mean", "adv/mean", "adv/std", "mismatch/mean_abs_log_ratio",
         "mismatch/max_abs_log_ratio", "mismatch/kl", "mismatch/truncated_frac", "value/returns_mean", "value/mean",
         "value/explained_variance", "kl/ref", "loss/kl", "loss/policy", "loss/total", "loss/value",
         "policy/approx_kl", "policy/clip_frac", "policy/dual_clip_frac", "policy/entropy", "value/clip_frac",
         "optim/grad_norm", "optim/grad_norm_max", "optim/steps", "time/build", "time/update", "time/step",
         "batch/samples", "batch/episodes", "batch/tokens", "batch/output_tokens", "perf/tokens_per_s",
         "learner/step", "optim/lr"]


def test_an_update_flattens_to_the_metric_names_in_their_order():
    flat = flatten(full_update())
    assert list(flat) == NAMES
    assert list(flat.values()) == [float(v) for v in range(1, 36)]


def test_an_empty_batch_logs_its_two_counts_only():
    assert flatten(UpdateMetrics(samples=0.0, episodes=4.0)) == {"batch/samples": 0.0, "batch/episodes": 4.0}


def test_sft_metrics_names():
    m = SFTMetrics(loss=0.5, tokens=10.0, grad_norm=1.0, lr=1e-4, step_seconds=0.2, sft_step=3.0)
    assert flatten(m) == {"sft/loss": 0.5, "sft/tokens": 10.0, "optim/grad_norm": 1.0, "optim/lr": 1e-4,
                          "time/step": 0.2, "learner/sft_step": 3.0}


@pytest.mark.parametrize("record", [LossStats, AdvantageStats, OptimStats, UpdateMetrics, SFTMetrics])
def test_every_scalar_field_names_its_metric(record):
    for f in fields(record):
        nested = f.type.split(" |")[0] in {"AdvantageStats", "LossStats", "OptimStats"}
        assert nested or "metric" in f.metadata, f"{record.__name__}.{f.name}"


def test_the_facade_and_the_records_import_no_learner_framework():
    """The driver imports the learner group facade, its records and the capability functions it
    sends to the ranks without DeepSpeed, transformers or PEFT (only the rank's state needs them)."""
    import subprocess
    import sys

    code = ("import sys, learner.group, learner.metrics, learner.local_world\n"
            "print(','.join(m for m in ('deepspeed', 'transformers', 'peft', 'ray', 'vllm') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
