"""PPO-family loss terms: hand-worked numbers, plain-loop references and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.algos import (
    agg_loss,
    entropy_from_logits,
    explained_variance,
    kl_penalty,
    logprobs_from_logits,
    ppo_policy_loss,
    rl4vlm_action_logprob,
    truncated_is_weights,
    value_loss,
)

pytestmark = pytest.mark.unit

t = torch.tensor
ln = math.log


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64),
                               torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=tol)


def _rand(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rand_mask(seed, B, T):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(B, T, generator=g) > 0.3
    m[0] = False  # one row with no valid token
    m[1, 0] = True
    return m


# ---------------------------------------------------------------- aggregation


def test_agg_loss_modes_by_hand():
    # valid tokens: row0 {1, 2}, row1 {4}, row2 none (left out of every "seq-mean")
    loss = t([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])
    mask = t([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    _close(agg_loss(loss, mask, "token-mean"), 7 / 3)                 # (1 + 2 + 4) / 3
    _close(agg_loss(loss, mask, "seq-mean-token-sum"), 3.5)           # (3 + 4) / 2
    _close(agg_loss(loss, mask, "seq-mean-token-mean"), 2.75)         # (1.5 + 4) / 2
    _close(agg_loss(loss, mask, "seq-mean-token-sum-norm"), 7 / 6)    # (3/3 + 4/3) / 2, T = 3
    _close(agg_loss(loss, mask, "seq-mean-token-sum-norm", norm_len=2), 1.75)  # (3/2 + 4/2) / 2
    _close(agg_loss(loss, torch.zeros(3, 3), "token-mean"), 0.0)
    with pytest.raises(ValueError, match="unknown loss aggregation mode 'mean'.*token-mean"):
        agg_loss(loss, mask, "mean")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agg_loss_matches_loop_reference(seed):
    x, m = _rand(seed, 5, 6), _rand_mask(seed, 5, 6)
    rows = [[x[i, j].item() for j in range(6) if m[i, j]] for i in range(5)]
    toks = [v for r in rows for v in r]
    nonempty = [r for r in rows if r]
    _close(agg_loss(x, m, "token-mean"), sum(toks) / len(toks), 1e-12)
    _close(agg_loss(x, m, "seq-mean-token-sum"), sum(sum(r) for r in nonempty) / len(nonempty), 1e-12)
    _close(agg_loss(x, m, "seq-mean-token-mean"), sum(sum(r) / len(r) for r in nonempty) / len(nonempty), 1e-12)
    _close(agg_loss(x, m, "seq-mean-token-sum-norm", 10), sum(sum(r) / 10 for r in nonempty) / len(nonempty), 1e-12)


# ---------------------------------------------------------------- PPO policy loss

# Four tokens, clip .2, dual clip c = 3:
#  a: A = +1, r = 1.1 -> inside the clip:       l = -A r = -1.1
#  b: A = +1, r = 1.5 -> clipped at 1.2:        l = max(-1.5, -1.2) = -1.2
#  c: A = -1, r = 0.5 -> clipped at 0.8:        l = max(.5, .8) = .8
#  d: A = -1, r = 5.0 -> dual clip:             l = min(max(5, 1.2), 3) = 3
RATIOS = [1.1, 1.5, 0.5, 5.0]
ADVS = [1.0, 1.0, -1.0, -1.0]


def _ppo_inputs():
    old = t([[-1.0, -2.0, -0.5, -3.0]], dtype=torch.float64)
    logp = (old + t([[ln(r) for r in RATIOS]], dtype=torch.float64)).requires_grad_(True)
    return logp, old, t([ADVS], dtype=torch.float64), torch.ones(1, 4)


def test_ppo_loss_by_hand():
    logp, old, adv, mask = _ppo_inputs()
    out = ppo_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_ratio_c=3.0)
    _close(out.loss, (-1.1 - 1.2 + 0.8 + 3.0) / 4)            # .375
    _close(out.clip_frac, 0.5)     # b, c (a: equal terms; d: unclipped term is the larger)
    _close(out.dual_clip_frac, 0.25)                           # d
    # k3 = r - 1 - ln r: .00469, .09453, .19315, 2.39056 -> mean .67073; k1 = -ln r -> mean -.35427
    _close(out.approx_kl, (0.1 - ln(1.1) + 0.5 - ln(1.5) - 0.5 - ln(0.5) + 4 - ln(5)) / 4)
    _close(out.ppo_kl, -(ln(1.1) + ln(1.5) + ln(0.5) + ln(5)) / 4)


def test_ppo_loss_gradient_by_hand():
    # d l / d logp = -A r on the active unclipped term, 0 where a clip (or the dual clip) is active;
    # token-mean divides by 4. a: -1.1/4 = -.275; b, c, d: 0.
    logp, old, adv, mask = _ppo_inputs()
    ppo_policy_loss(logp, old, adv, mask, 0.2, clip_ratio_c=3.0).loss.backward()
    _close(logp.grad, [[-0.275, 0.0, 0.0, 0.0]])
    # without the dual clip, d is an active unclipped term: -A r / 4 = 5 / 4
    logp.grad = None
    out = ppo_policy_loss(logp, old, adv, mask, 0.2, clip_ratio_c=None)
    _close(out.loss, (-1.1 - 1.2 + 0.8 + 5.0) / 4)
    out.loss.backward()
    _close(logp.grad, [[-0.275, 0.0, 0.0, 1.25]])


def test_ppo_loss_asymmetric_clip_and_is_weights():
    logp, old, adv, mask = _ppo_inputs()
    # DAPO clip-higher .28: token b clipped at 1.28 instead of 1.2 -> -1.28
    _close(ppo_policy_loss(logp, old, adv, mask, 0.2, 0.28).loss, (-1.1 - 1.28 + 0.8 + 3.0) / 4)
    # clip_low .6: token c (r = .5) clipped at .4 -> max(.5, .4) = .5 (unclipped)
    _close(ppo_policy_loss(logp, old, adv, mask, 0.6, 0.2).loss, (-1.1 - 1.2 + 0.5 + 3.0) / 4)
    # TIS weights [2, 1, 1, 1] scale token a's loss: (-2.2 - 1.2 + .8 + 3) / 4 = .1
    out = ppo_policy_loss(logp, old, adv, mask, 0.2, is_weights=t([[2.0, 1, 1, 1]], dtype=torch.float64))
    _close(out.loss, 0.1)
    out.loss.backward()
    _close(logp.grad, [[-0.55, 0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ppo_policy_loss(logp, old, adv, mask, clip_ratio_c=1.0)


def ref_ppo_token(lp, olp, a, lo, hi, c):
    r = math.exp(lp - olp)
    l1, l2 = -a * r, -a * min(max(r, 1 - lo), 1 + hi)
    l = max(l1, l2)
    dual = a < 0 and c is not None and l > -a * c
    return (min(l, -a * c) if (a < 0 and c is not None) else l), l2 > l1, dual


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ppo_loss_matches_loop_reference(seed):
    B, T = 4, 9
    old, adv, m = _rand(seed, B, T), _rand(seed + 10, B, T), _rand_mask(seed, B, T)
    logp = old + 0.5 * _rand(seed + 20, B, T)
    for lo, hi, c in ((0.2, 0.2, 3.0), (0.1, 0.3, None), (0.2, 0.28, 1.5)):
        out = ppo_policy_loss(logp, old, adv, m, lo, hi, c, agg="seq-mean-token-mean")
        seq_losses, n, clipped, dual = [], 0, 0, 0
        for i in range(B):
            toks = [ref_ppo_token(logp[i, j].item(), old[i, j].item(), adv[i, j].item(), lo, hi, c)
                    for j in range(T) if m[i, j]]
            if toks:
                seq_losses.append(sum(x[0] for x in toks) / len(toks))
            n, clipped, dual = n + len(toks), clipped + sum(x[1] for x in toks), dual + sum(x[2] for x in toks)
        _close(out.loss, sum(seq_losses) / len(seq_losses), 1e-10)
        _close(out.clip_frac, clipped / n, 1e-10)
        _close(out.dual_clip_frac, dual / n, 1e-10)


# ---------------------------------------------------------------- value loss


def test_value_loss_by_hand():
    # token 0: V = 1, V_old = .5, R = 2: (V-R)^2 = 1; V_clip = .5 + .2 = .7, (.7-2)^2 = 1.69 -> 1.69
    # token 1: V = V_old = 2, R = 1: both 1 -> 1.   loss = .5 * (1.69 + 1) / 2 = .6725
    v = t([[1.0, 2.0]], requires_grad=True)
    old, ret, m = t([[0.5, 2.0]]), t([[2.0, 1.0]]), t([[1, 1]])
    out = value_loss(v, old, ret, m, clip_eps=0.2)
    _close(out.loss, 0.6725)
    _close(out.clip_frac, 0.5)
    # gradient: token 0's active clipped term is constant in V -> 0; token 1 (tie; torch.maximum
    # splits the gradient between the equal terms, whose gradients are both 2(V - R)) -> .5 * 2 / 2 = .5
    out.loss.backward()
    _close(v.grad, [[0.0, 0.5]])
    # unclipped: .5 * (1 + 1) / 2 = .5
    _close(value_loss(v, old, ret, m, clip_eps=None).loss, 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_loss_matches_loop_reference(seed):
    B, T = 3, 6
    v, old, ret, m = _rand(seed, B, T), _rand(seed + 1, B, T), _rand(seed + 2, B, T), _rand_mask(seed, B, T)
    tot, n = 0.0, 0
    for i in range(B):
        for j in range(T):
            if m[i, j]:
                vc = old[i, j] + min(max(v[i, j] - old[i, j], -0.3), 0.3)
                tot, n = tot + max((v[i, j] - ret[i, j]) ** 2, (vc - ret[i, j]) ** 2), n + 1
    _close(value_loss(v, old, ret, m, 0.3).loss, 0.5 * tot / n, 1e-10)


def test_explained_variance_by_hand():
    # R = [1, 2, 3], V = [1, 2, 2] (4th entry masked): Var[R - V] = Var[0, 0, 1] = 2/9, Var[R] = 2/3
    # -> 1 - (2/9) / (2/3) = 2/3
    _close(explained_variance(t([[1.0, 2, 2, 9]]), t([[1.0, 2, 3, -9]]), t([[1, 1, 1, 0]])), 2 / 3)
    assert torch.isnan(explained_variance(t([[0.0, 1]]), t([[1.0, 1]]), t([[1, 1]])))
    v, r, m = _rand(0, 3, 5), _rand(1, 3, 5), _rand_mask(2, 3, 5)
    want = 1 - np.var((r - v)[m].numpy()) / np.var(r[m].numpy())
    _close(explained_variance(v, r, m), want, 1e-12)


# ---------------------------------------------------------------- entropy, log-probs, KL


def test_entropy_by_hand_and_stable():
    # softmax([0, ln 3]) = [1/4, 3/4]: H = .25 ln 4 + .75 ln(4/3) = .56234
    h = -(0.25 * ln(0.25) + 0.75 * ln(0.75))
    _close(entropy_from_logits(t([[0.0, ln(3)], [1000.0, 1000 + ln(3)]])), [h, h])
    _close(entropy_from_logits(torch.zeros(5)), ln(5))  # uniform over 5 -> ln 5
    # one dominant logit: p ~ [1, e^-200]; H ~ 0 and finite (no 0 * log 0 = nan)
    _close(entropy_from_logits(t([200.0, 0.0])), 0.0)
    # bf16 in, float32 out
    assert entropy_from_logits(torch.zeros(2, 4, dtype=torch.bfloat16)).dtype == torch.float32


def test_entropy_and_logprob_gradients_by_hand():
    # z = [0, ln 3], p = [.25, .75], H = .56234.
    # dH/dz_k = -p_k (ln p_k + H): -.25 (-1.38629 + .56234) = .20599, -.75 (-.28768 + .56234) = -.20599
    z = t([0.0, ln(3)], requires_grad=True)
    entropy_from_logits(z).backward()
    _close(z.grad, [0.20599, -0.20599])
    # d log p_1 / dz = onehot(1) - p = [-.25, .25]
    z.grad = None
    logprobs_from_logits(z[None], t([1])).sum().backward()
    _close(z.grad, [-0.25, 0.25])


@pytest.mark.parametrize("seed", [0, 1])
def test_entropy_and_logprobs_match_loop_reference(seed):
    logits, V = 3 * _rand(seed, 2, 3, 7), 7
    labels = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(seed))
    ent, lp = entropy_from_logits(logits), logprobs_from_logits(logits, labels)
    for i in range(2):
        for j in range(3):
            z = logits[i, j].tolist()
            lse = math.log(sum(math.exp(x) for x in z))
            ps = [math.exp(x - lse) for x in z]
            _close(ent[i, j], -sum(p * math.log(p) for p in ps), 1e-10)
            _close(lp[i, j], z[labels[i, j]] - lse, 1e-10)


def test_logprobs_from_logits_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]: label 1 -> ln .75 = -.28768, label 0 -> ln .25; -100 ignored -> 0
    logits = t([[[0.0, ln(3)], [0.0, ln(3)], [5.0, 1.0]]])
    _close(logprobs_from_logits(logits, t([[1, 0, -100]])), [[ln(0.75), ln(0.25), 0.0]])
    out = logprobs_from_logits(logits.bfloat16(), t([[1, 0, 0]]))
    assert out.dtype == torch.float32
    _close(out, [[ln(0.75), ln(0.25), 5 - ln(math.exp(5) + math.e)]], 1e-2)


def test_kl_estimators_by_hand():
    # logp = ln .5, ref = ln .25 -> log r = ln(.25/.5) = -ln 2
    # k1 = ln 2 = .69315; k2 = .5 (ln 2)^2 = .24023; k3 = .5 - 1 + ln 2 = .19315
    lp, ref = t([ln(0.5)]), t([ln(0.25)])
    _close(kl_penalty(lp, ref, "k1"), [ln(2)])
    _close(kl_penalty(lp, ref, "k2"), [0.5 * ln(2) ** 2])
    _close(kl_penalty(lp, ref, "k3"), [0.5 - 1 + ln(2)])
    # k3 clamps (verl low_var_kl): log r = -30 -> -20 -> e^-20 - 1 + 20 = 19 -> 10; log r = +30 -> 10
    _close(kl_penalty(t([0.0, -30.0]), t([-30.0, 0.0]), "k3"), [10.0, 10.0])
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'; known: k1, k2, k3"):
        kl_penalty(lp, ref, "k4")


def test_k1_and_k3_are_unbiased_in_expectation():
    # Exact expectation over the support of p (no sampling): sum_x p(x) k(x) = KL(p || q) for k1, k3.
    p = torch.softmax(_rand(5, 6), -1)
    q = torch.softmax(_rand(6, 6), -1)
    kl = sum(p[i].item() * ln(p[i].item() / q[i].item()) for i in range(6))
    for kind in ("k1", "k3"):
        _close((p * kl_penalty(p.log(), q.log(), kind)).sum(), kl, 1e-10)


# ---------------------------------------------------------------- RL4VLM, TIS


def test_rl4vlm_action_logprob_by_hand_and_reference():
    # lam .5 * (-1 - 2) [CoT] + (-3) [action]; token 4 is in neither mask -> -4.5
    logp = t([[-1.0, -2.0, -3.0, -4.0]])
    _close(rl4vlm_action_logprob(logp, t([[1, 1, 0, 0]]), t([[0, 0, 1, 0]]), 0.5), [-4.5])
    lp, cot, act = _rand(3, 3, 8), _rand_mask(3, 3, 8), _rand_mask(4, 3, 8) & ~_rand_mask(3, 3, 8)
    want = [0.3 * sum(lp[i, j].item() for j in range(8) if cot[i, j])
            + sum(lp[i, j].item() for j in range(8) if act[i, j]) for i in range(3)]
    _close(rl4vlm_action_logprob(lp, cot, act, 0.3), want, 1e-12)


def test_truncated_is_weights_by_hand():
    # log ratio = old - rollout = [.5, -.5, 0]; exp -> [1.64872, .60653, 1]; cap 1.5 -> [1.5, .60653, 1]
    # mean |log r| = 1/3, max .5, truncated 1/3; k3 = r - 1 - ln r -> (.14872 + .10653 + 0) / 3 = .08508
    # the 4th token is masked (sampler gave -inf there): weight 0 and not in any statistic.
    out = truncated_is_weights(t([[-1.0, -1.0, -2.0, 0.0]]), t([[-1.5, -0.5, -2.0, -math.inf]]),
                               t([[1, 1, 1, 0]]), cap=1.5)
    _close(out.weights, [[1.5, math.exp(-0.5), 1.0, 0.0]])
    _close(out.mean_abs_log_ratio, 1 / 3)
    _close(out.max_abs_log_ratio, 0.5)
    _close(out.truncated_frac, 1 / 3)
    _close(out.mismatch_kl, 0.085084)
