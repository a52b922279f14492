"""Masked statistics and the running reward normaliser: hand-worked numbers and references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.algos import RunningMeanStd, masked_mean, masked_var, masked_whiten

pytestmark = pytest.mark.unit

t = torch.tensor


def _close(a, b, tol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=tol)


X = t([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
M = t([[1, 1, 0], [1, 1, 0]])  # valid values 1, 2, 3, 4


def test_masked_mean_by_hand():
    _close(masked_mean(X, M), 2.5)                      # (1 + 2 + 3 + 4) / 4
    _close(masked_mean(X, M, dim=-1), [1.5, 3.5])
    _close(masked_mean(X, M.bool(), dim=0), [2.0, 3.0, 0.0])  # empty column -> 0, not nan
    _close(masked_mean(X, torch.zeros_like(M)), 0.0)


def test_masked_var_by_hand():
    # deviations from 2.5: -1.5 -.5 .5 1.5, squares sum 5: population 5/4, unbiased 5/3
    _close(masked_var(X, M, unbiased=False), 1.25)
    _close(masked_var(X, M), 5 / 3)
    _close(masked_var(t([7.0, 9.0]), t([1, 0])), 0.0)   # one valid value: no Bessel division by 0


def test_masked_whiten_by_hand():
    # (x - 2.5) / sqrt(5/3 + 1e-8): -1.5 -> -1.16190, -.5 -> -.38730, .5 -> .38730, 1.5 -> 1.16190
    s = math.sqrt(5 / 3 + 1e-8)
    w = masked_whiten(X, M)
    _close(w[M.bool()], [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s])
    _close(w[0, 2], (100 - 2.5) / s)                  # masked entries transformed, not zeroed
    _close(masked_whiten(X, M, shift_mean=False)[M.bool()], [-1.5 / s + 2.5, -0.5 / s + 2.5, 0.5 / s + 2.5, 1.5 / s + 2.5])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_stats_match_numpy(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64)
    m = torch.rand(4, 9, generator=g) > 0.4
    vals = x[m].numpy()
    _close(masked_mean(x, m), vals.mean(), 1e-12)
    _close(masked_var(x, m), vals.var(ddof=1), 1e-12)
    _close(masked_whiten(x, m)[m], (vals - vals.mean()) / np.sqrt(vals.var(ddof=1) + 1e-8), 1e-12)


def test_running_mean_std_by_hand():
    # [1, 2, 3]: mean 2, population var 2/3, count 3
    s = RunningMeanStd().update(t([1.0, 2.0, 3.0]))
    assert (s.mean, s.count) == (2.0, 3.0)
    assert s.var == pytest.approx(2 / 3)
    # + [5]: all of [1, 2, 3, 5]: mean 11/4 = 2.75; deviations -1.75 -.75 .25 2.25,
    # squares 3.0625 + .5625 + .0625 + 5.0625 = 8.75 -> var 8.75 / 4 = 2.1875
    s = s.update(t([5.0]))
    assert (s.mean, s.var, s.count) == (pytest.approx(2.75), pytest.approx(2.1875), 4.0)
    # masked update ignores masked values: only 9 is merged -> [1, 2, 3, 5, 9]
    s2 = s.update(t([9.0, -100.0]), mask=t([True, False]))
    assert s2.count == 5.0 and s2.mean == pytest.approx(4.0)
    assert s.update(torch.zeros(0)) == s   # empty batch: unchanged


def test_running_mean_std_normalize_by_hand():
    s = RunningMeanStd(mean=2.0, var=4.0, count=10.0)
    # (x - 2) / sqrt(4 + 1e-8) ~ (x - 2) / 2; scale-only: x / 2; clip to [-1, 1]
    _close(s.normalize(t([0.0, 6.0])), [-1.0, 2.0])
    _close(s.normalize(t([0.0, 6.0]), center=False), [0.0, 3.0])
    _close(s.normalize(t([0.0, 6.0]), clip=1.0), [-1.0, 1.0])
    _close(RunningMeanStd().normalize(t([3.0])), [3.0])  # initial state: identity


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_running_mean_std_matches_numpy_over_all_batches(seed):
    rng = np.random.default_rng(seed)
    batches = [rng.normal(3.0, 2.0, size=rng.integers(1, 20)) for _ in range(6)]
    s = RunningMeanStd()
    for b in batches:
        s = s.update(torch.as_tensor(b, dtype=torch.float32))
    everything = np.concatenate(batches).astype(np.float32).astype(np.float64)
    assert s.count == len(everything)
    assert s.mean == pytest.approx(everything.mean(), rel=1e-9)
    assert s.var == pytest.approx(everything.var(), rel=1e-9)


def test_running_mean_std_agrees_with_gymnasium():
    # gymnasium's RunningMeanStd starts from count 1e-4 (mean 0, var 1), so agreement is up to that.
    gym_rms = pytest.importorskip("gymnasium.wrappers.utils").RunningMeanStd
    rng = np.random.default_rng(0)
    ref, ours = gym_rms(shape=()), RunningMeanStd()
    for _ in range(5):
        b = rng.normal(1.0, 3.0, size=16)
        ref.update(b)
        ours = ours.update(torch.as_tensor(b))
    assert ours.mean == pytest.approx(float(ref.mean), rel=1e-4)
    assert ours.var == pytest.approx(float(ref.var), rel=1e-4)


def test_running_mean_std_state_dict_round_trip():
    s = RunningMeanStd().update(t([1.0, 2.0, 4.0]))
    state = s.state_dict()
    assert state == {"mean": s.mean, "var": s.var, "count": 3.0}
    assert RunningMeanStd.from_state_dict(state) == s
    with pytest.raises(KeyError):
        RunningMeanStd.from_state_dict({"mean": 0.0, "var": 1.0})
