"""Advantage estimators and their registry: hand-worked numbers and plain-loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.algos import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    AdvantageInputs,
    compute_advantages,
    discounted_returns,
    dr_grpo_advantage,
    gae,
    get_estimator,
    grpo_advantage,
    group_index,
    group_normalized_scores,
    masked_whiten,
    place_at_last_token,
    reinforce_pp_advantage,
    reinforce_pp_baseline_advantage,
    rloo_advantage,
    rloo_scores,
)

pytestmark = pytest.mark.unit

SEEDS = (0, 1, 2, 3, 4)
t = torch.tensor


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=tol)


# ---------------------------------------------------------------- plain-loop references


def ref_gae(r, v, m, gamma, lam, boot=None):
    """Per row: walk the valid steps backwards; masked steps do not exist."""
    B, T = len(r), len(r[0])
    adv = [[0.0] * T for _ in range(B)]
    for i in range(B):
        next_v, a = (0.0 if boot is None else boot[i]), 0.0
        for j in reversed([j for j in range(T) if m[i][j]]):
            a = r[i][j] + gamma * next_v - v[i][j] + gamma * lam * a
            adv[i][j], next_v = a, v[i][j]
    ret = [[adv[i][j] + v[i][j] if m[i][j] else 0.0 for j in range(T)] for i in range(B)]
    return adv, ret


def ref_group(scores, ids):
    """Per sample: (mean, unbiased std, population std, n) of its group, by brute force."""
    out = []
    for g in ids:
        xs = [s for s, h in zip(scores, ids) if h == g]
        n, mu = len(xs), sum(xs) / len(xs)
        ss = sum((x - mu) ** 2 for x in xs)
        out.append((mu, math.sqrt(ss / (n - 1)) if n > 1 else 0.0, math.sqrt(ss / n), n))
    return out


def ref_whiten(x, m):
    vals = [x[i][j] for i in range(len(x)) for j in range(len(x[0])) if m[i][j]]
    mu = sum(vals) / len(vals)
    var = sum((a - mu) ** 2 for a in vals) / (len(vals) - 1)
    return [[(x[i][j] - mu) / math.sqrt(var + 1e-8) if m[i][j] else 0.0 for j in range(len(x[0]))]
            for i in range(len(x))]


def random_case(seed, B=6, T=7, holes=True):
    """Random rewards/values with right padding (lengths 1..T) and, optionally, interior holes."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(B, T, generator=g, dtype=torch.float64)
    v = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    m = torch.arange(T)[None, :] < lengths[:, None]
    if holes:
        m &= torch.rand(B, T, generator=g) > 0.3
        m[torch.arange(B), 0] = True  # every row keeps a step
    return r, v, m


def random_groups(seed, B):
    """Group ids of unequal sizes, not contiguous, as strings (singletons likely)."""
    rng = np.random.default_rng(seed)
    return [f"task{k}" for k in rng.integers(0, max(1, B // 2), size=B)]


# ---------------------------------------------------------------- GAE


def test_gae_three_steps_by_hand():
    # r = [0, 0, 1], V = [.5, .5, .5], gamma = .9, lam = .5, terminal after step 2 (V = 0 after).
    # t=2: delta = 1 + .9*0 - .5 = .5                       A2 = .5
    # t=1: delta = 0 + .9*.5 - .5 = -.05     A1 = -.05 + .45*.5   = .175
    # t=0: delta = -.05                      A0 = -.05 + .45*.175 = .02875
    # returns = A + V = [.52875, .675, 1.0]; the padded 4th column (garbage r, V) stays 0.
    adv, ret = gae(t([[0.0, 0, 1, 7]]), t([[0.5, 0.5, 0.5, 9]]), t([[1, 1, 1, 0]]), 0.9, 0.5)
    _close(adv, [[0.02875, 0.175, 0.5, 0.0]])
    _close(ret, [[0.52875, 0.675, 1.0, 0.0]])


def test_gae_skips_interior_hole_and_bootstraps_truncation():
    # Valid steps at columns 0 and 2 (column 1 is another role's tokens: ignored, not propagated).
    # r = [1, (5), 2], V = [1, (9), 3], gamma = .5, lam = 1, next_values = 4 (truncated episode).
    # t=2: delta = 2 + .5*4 - 3 = 1           A2 = 1
    # t=0: delta = 1 + .5*3 - 1 = 1.5         A0 = 1.5 + .5*1 = 2.0  (bridges over column 1)
    adv, ret = gae(t([[1.0, 5, 2]]), t([[1.0, 9, 3]]), t([[True, False, True]]), 0.5, 1.0, t([4.0]))
    _close(adv, [[2.0, 0.0, 1.0]])
    _close(ret, [[3.0, 0.0, 4.0]])


def test_gae_turn_level_rl4vlm_episodes():
    # Two episodes of env steps (one value per step, read on the step's last prompt token):
    # ep0 has 2 steps, rewards [0, 1], V [.5, .8]; ep1 has 1 step, reward -1, V .2. gamma=.9 lam=.95
    # ep0 t=1: delta = 1 - .8 = .2 A = .2 ; t=0: delta = 0 + .9*.8 - .5 = .22, A = .22 + .855*.2 = .391
    # ep1 t=0: delta = -1 - .2 = -1.2
    adv, ret = gae(t([[0.0, 1.0], [-1.0, 0.0]]), t([[0.5, 0.8], [0.2, 0.0]]), t([[1, 1], [1, 0]]), 0.9, 0.95)
    _close(adv, [[0.391, 0.2], [-1.2, 0.0]])
    _close(ret, [[0.891, 1.0], [-1.0, 0.0]])


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_matches_loop_reference(seed):
    r, v, m = random_case(seed)
    boot = torch.randn(r.shape[0], generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    for gamma, lam, b in ((0.99, 0.95, None), (0.9, 0.5, boot), (1.0, 1.0, None)):
        adv, ret = gae(r, v, m, gamma, lam, b)
        ra, rr = ref_gae(r.tolist(), v.tolist(), m.tolist(), gamma, lam, None if b is None else b.tolist())
        _close(adv, ra, 1e-10)
        _close(ret, rr, 1e-10)


def test_gae_accepts_bfloat16_and_returns_float32():
    r, v, m = random_case(7, holes=False)
    adv, _ = gae(r.bfloat16(), v.bfloat16(), m.float(), 0.9, 0.9)
    assert adv.dtype == torch.float32
    ref, _ = gae(r.bfloat16().double(), v.bfloat16().double(), m, 0.9, 0.9)
    _close(adv, ref, 1e-5)


def test_discounted_returns_by_hand_and_reference():
    # gamma = .5, r = [1, 2, 4] -> G2 = 4, G1 = 2 + 2 = 4, G0 = 1 + 2 = 3; padded column -> 0.
    _close(discounted_returns(t([[1.0, 2, 4, 3]]), t([[1, 1, 1, 0]]), 0.5), [[3.0, 4.0, 4.0, 0.0]])
    r, _, m = random_case(11)
    ref, _ = ref_gae(r.tolist(), [[0.0] * r.shape[1]] * r.shape[0], m.tolist(), 0.97, 1.0)
    _close(discounted_returns(r, m, 0.97), ref, 1e-10)


def test_place_at_last_token():
    # Row 0 ends at column 2, row 1 at column 0, row 2 (hole in the middle) at column 3; row 3 empty.
    m = t([[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]]).bool()
    out = place_at_last_token(t([5.0, 6.0, 7.0, 8.0]), m)
    _close(out, [[0, 0, 5, 0], [6, 0, 0, 0], [0, 0, 0, 7], [0, 0, 0, 0]])


# ---------------------------------------------------------------- group methods


def test_group_index_by_hand():
    # sorted unique ids a < b < c -> b=1, a=0, c=2; three groups; works for ints and empty input
    idx, n = group_index(["b", "a", "b", "c"])
    assert idx.tolist() == [1, 0, 1, 2] and n == 3
    idx, n = group_index(torch.tensor([7, 3, 7]))
    assert idx.tolist() == [1, 0, 1] and n == 2
    assert group_index([])[1] == 0
    with pytest.raises(ValueError, match="one-dimensional"):
        group_index([[1, 2]])


def test_grpo_by_hand():
    # group "a" = [1, 0]: mean .5, unbiased std sqrt(.5) = .70711 -> +-.70711; population std .5 -> +-1
    # group "b" = [1, 2, 3]: mean 2, unbiased std 1 -> [-1, 0, 1]; population sqrt(2/3) -> +-1.22474
    # group "c" = [5]: singleton -> 0
    scores, ids = t([1.0, 1.0, 0.0, 2.0, 5.0, 3.0]), ["a", "b", "a", "b", "c", "b"]
    _close(group_normalized_scores(scores, ids), [0.70711, -1, -0.70711, 0, 0, 1])
    _close(group_normalized_scores(scores, ids, unbiased_std=False), [1, -1.22474, -1, 0, 0, 1.22474])
    mask = t([[1, 1, 0]] * 6)
    _close(grpo_advantage(scores, mask, ids), [[a, a, 0] for a in [0.70711, -1, -0.70711, 0, 0, 1]])


def test_dr_grpo_by_hand():
    # group a = [1, 0] mean .5 -> [.5, -.5]; group b = [1, 2, 3] mean 2 -> [-1, 0, 1]; no std division.
    out = dr_grpo_advantage(t([1.0, 1.0, 0.0, 2.0, 3.0]), t([[1, 0]] * 5), [0, 1, 0, 1, 1])
    _close(out, [[0.5, 0], [-1, 0], [-0.5, 0], [0, 0], [1, 0]])


def test_rloo_by_hand():
    # group [1, 0, 2]: baselines = mean of the others = [1, 1.5, .5] -> advantages [0, -1.5, 1.5];
    # singleton [4] -> 0.
    _close(rloo_scores(t([1.0, 0.0, 2.0, 4.0]), [7, 7, 7, 8]), [0.0, -1.5, 1.5, 0.0])
    _close(rloo_advantage(t([1.0, 0.0]), t([[1, 1], [1, 0]]), [0, 0]), [[1, 1], [-1, 0]])


@pytest.mark.parametrize("seed", SEEDS)
def test_group_methods_match_loop_reference(seed):
    B = 11
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, generator=g, dtype=torch.float64)
    ids = random_groups(seed, B)
    stats = ref_group(scores.tolist(), ids)
    s = scores.tolist()
    grpo = [0.0 if n == 1 else (x - mu) / (sd + 1e-6) for x, (mu, sd, _, n) in zip(s, stats)]
    grpo_pop = [0.0 if n == 1 else (x - mu) / (sp + 1e-6) for x, (mu, _, sp, n) in zip(s, stats)]
    loo = [0.0 if n == 1 else x - (mu * n - x) / (n - 1) for x, (mu, _, _, n) in zip(s, stats)]
    _close(group_normalized_scores(scores, ids), grpo, 1e-9)
    _close(group_normalized_scores(scores, ids, unbiased_std=False), grpo_pop, 1e-9)
    _close(group_normalized_scores(scores, ids, norm_by_std=False), [x - st[0] for x, st in zip(s, stats)], 1e-9)
    _close(rloo_scores(scores, ids), loo, 1e-9)
    # integer tensor ids give the same grouping as the strings
    int_ids = torch.tensor([int(k[4:]) for k in ids])
    _close(rloo_scores(scores, int_ids), loo, 1e-9)


# ---------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_by_hand():
    # KL penalty -.1 folded into tokens 0-1 of row 0 (0 on token 2), outcome 1 on its last token; row 1 has two
    # valid tokens with rewards [0, -1]. gamma = 1:
    # returns row0 = [.8, .9, 1.0], row1 = [-1, -1, (0)]
    # valid returns .8 .9 1 -1 -1: mean .14, unbiased var 4.352/4 = 1.088, std 1.04307
    # advantages = (G - .14) / 1.04307 = [.63275, .72862, .82449], [-1.09293, -1.09293, 0]
    adv, ret = reinforce_pp_advantage(t([[-0.1, -0.1, 1.0], [0.0, -1.0, 3.0]]), t([[1, 1, 1], [1, 1, 0]]))
    _close(ret, [[0.8, 0.9, 1.0], [-1.0, -1.0, 0.0]])
    _close(adv, [[0.63275, 0.72862, 0.82449], [-1.09293, -1.09293, 0.0]])


def test_reinforce_pp_baseline_by_hand():
    # scores [1, 0, 3], groups [a, a, b]: centred [.5, -.5, 0] (singleton b -> 0), on last tokens:
    # returns (gamma 1) row0 [.5, .5], row1 [-.5, (0)], row2 [0, 0]
    # valid .5 .5 -.5 0 0: mean .1, unbiased var .7/4 = .175, std .41833
    # advantages [.95618, .95618], [-1.43427, 0], [-.23905, -.23905]
    adv, ret = reinforce_pp_baseline_advantage(t([1.0, 0.0, 3.0]), t([[1, 1], [1, 0], [1, 1]]), ["a", "a", "b"])
    _close(ret, [[0.5, 0.5], [-0.5, 0.0], [0.0, 0.0]])
    _close(adv, [[0.95618, 0.95618], [-1.43427, 0.0], [-0.23905, -0.23905]])


@pytest.mark.parametrize("seed", SEEDS)
def test_reinforce_pp_variants_match_loop_reference(seed):
    r, _, m = random_case(seed)
    B, T = r.shape
    scores = torch.randn(B, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ids = random_groups(seed + 50, B)
    zeros = [[0.0] * T for _ in range(B)]
    # plain: returns of the dense rewards, then batch whitening
    ret, _ = ref_gae(r.tolist(), zeros, m.tolist(), 0.95, 1.0)
    adv, got_ret = reinforce_pp_advantage(r, m, 0.95)
    _close(got_ret, ret, 1e-10)
    _close(adv, ref_whiten(ret, m.tolist()), 1e-9)
    # baseline: (score - group mean) added on each row's last valid step, then the same
    stats = ref_group(scores.tolist(), ids)
    rows = r.tolist()
    for i in range(B):
        last = max(j for j in range(T) if m[i, j])
        rows[i][last] += scores[i].item() - stats[i][0]
    ret_b, _ = ref_gae(rows, zeros, m.tolist(), 0.95, 1.0)
    adv_b, got_ret_b = reinforce_pp_baseline_advantage(scores, m, ids, r, 0.95)
    _close(got_ret_b, ret_b, 1e-10)
    _close(adv_b, ref_whiten(ret_b, m.tolist()), 1e-9)


# ---------------------------------------------------------------- registry


def test_registry_names_and_unknown_name_error():
    assert set(ADVANTAGE_ESTIMATORS) == {"gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"}
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'.*dr_grpo, gae, grpo"):
        get_estimator("ppo")


def test_registry_validates_inputs():
    m = torch.ones(2, 3)
    with pytest.raises(ValueError, match="scores"):
        AdvantageInputs(mask=m)
    with pytest.raises(ValueError, match="values must have shape"):
        AdvantageInputs(mask=m, scores=t([1.0, 2.0]), values=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="needs values"):
        compute_advantages("gae", AdvantageInputs(mask=m, scores=t([1.0, 2.0])))
    with pytest.raises(ValueError, match="needs group_ids"):
        compute_advantages("rloo", AdvantageInputs(mask=m, scores=t([1.0, 2.0])))
    with pytest.raises(ValueError, match="gamma and lam"):
        AdvantageConfig(lam=1.5)


def test_registry_gae_by_hand_with_outcome_and_kl():
    # score 1 on the last token plus KL penalty [-.1, -.1, 0] gives r = [-.1, -.1, 1], V = 0,
    # gamma = lam = 1: A = G = [.8, .9, 1.0]; returns = A + V = the same. Without whitening.
    x = AdvantageInputs(mask=t([[1, 1, 1]]), scores=t([1.0]), token_rewards=t([[-0.1, -0.1, 0.0]]),
                        values=torch.zeros(1, 3))
    out = compute_advantages("gae", x, AdvantageConfig(whiten_gae=False))
    _close(out.advantages, [[0.8, 0.9, 1.0]])
    _close(out.returns, [[0.8, 0.9, 1.0]])
    # whitened: (x - .9) / std([.8, .9, 1.0], unbiased) = (x - .9) / .1 = [-1, 0, 1]; returns unchanged
    out = compute_advantages("gae", x)
    _close(out.advantages, [[-1.0, 0.0, 1.0]], 1e-4)
    _close(out.returns, [[0.8, 0.9, 1.0]])


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_registry_agrees_with_direct_calls(seed):
    r, v, m = random_case(seed)
    B = r.shape[0]
    scores = torch.randn(B, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ids = random_groups(seed, B)
    cfg = AdvantageConfig(gamma=0.9, lam=0.8, unbiased_std=False)
    x = AdvantageInputs(mask=m, scores=scores, token_rewards=r, values=v, group_ids=ids)
    dense = r * m
    step = place_at_last_token(scores, m) + dense
    total = scores + dense.sum(-1)
    a, ret = gae(step, v, m, 0.9, 0.8)
    expected = {
        "gae": (masked_whiten(a, m) * m, ret),
        "grpo": (grpo_advantage(total, m, ids, unbiased_std=False),) * 2,
        "dr_grpo": (dr_grpo_advantage(total, m, ids),) * 2,
        "rloo": (rloo_advantage(total, m, ids),) * 2,
        "reinforce_pp": reinforce_pp_advantage(step, m, 0.9),
        "reinforce_pp_baseline": reinforce_pp_baseline_advantage(scores, m, ids, r, 0.9),
    }
    for name, (want_a, want_r) in expected.items():
        out = compute_advantages(name, x, cfg)
        _close(out.advantages, want_a, 1e-12)
        _close(out.returns, want_r, 1e-12)
        assert torch.all(out.advantages[~m] == 0), name
