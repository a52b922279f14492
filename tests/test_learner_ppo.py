"""learner.ppo: micro-batch losses scaled by their share add up, over micro batches and ranks, to the
loss (and gradient) of the whole minibatch in one piece -- for every aggregation mode, with and
without the RL4VLM per-turn ratio. Plus one hand-computed value."""

import pytest
import torch

from learner.algos import RunningMeanStd
from learner.batch import build_role_batch
from learner.config import AlgoConfig
from learner.experience import compute_experience
from learner.ppo import micro_loss, minibatch_denominators, units
from rollout.types import Episode, Span, Turn

pytestmark = pytest.mark.unit


def batch():
    g = torch.Generator().manual_seed(0)
    eps = []
    for i in range(5):
        n_out = 2 + i % 3
        out = list(range(10, 10 + n_out))
        lps = (-torch.rand(n_out, generator=g) - 0.5).tolist()
        t = Turn("policy", tuple(range(1, 2 + i)), tuple(out), tuple(lps), 0, cot_span=Span(0, 1), action_span=Span(1, n_out))
        eps.append(Episode(f"e{i}", f"g{i % 2}", "t", (t,), reward=float(i % 3)))
    return build_role_batch(eps, "policy", 0)


def outputs(b, seed):
    g = torch.Generator().manual_seed(seed)
    logp = (b.rollout_logprobs + 0.1 * torch.randn(b.input_ids.shape, generator=g)).requires_grad_()
    ent = torch.rand(b.input_ids.shape, generator=g).requires_grad_()
    values = torch.randn(b.input_ids.shape, generator=g).requires_grad_()
    return logp, ent, values


def split_loss(b, exp, algo, logp, ent, values, parts, world):
    """Sum over 'ranks' of the micro losses / world (DeepSpeed averages gradients over ranks)."""
    den = minibatch_denominators(b, exp, algo, int(b.output_lens.max()))
    total = 0.0
    for rows in parts:
        idx = torch.tensor(rows)
        sel = b.select(rows)
        t = sel.input_ids.shape[1]
        loss, _ = micro_loss(logp[idx, :t], ent[idx, :t], values[idx, :t], sel, exp.select(idx, t), den, algo, world)
        total = total + loss / world
    return total


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("lambda_cot", [None, 0.5])
def test_split_equals_whole(agg, lambda_cot):
    algo = AlgoConfig(advantage_estimator="gae", loss_agg=agg, lambda_cot=lambda_cot, kl_coef=0.1, kl_in="loss",
                      entropy_coef=0.01)
    b = batch()
    ref = b.rollout_logprobs - 0.2
    values = torch.randn(b.input_ids.shape, generator=torch.Generator().manual_seed(3))
    exp, _, _ = compute_experience(b, b.rollout_logprobs + 0.05, ref, values, algo, RunningMeanStd())
    grads = []
    for parts, world in (([[0, 1, 2, 3, 4]], 1), ([[0], [1, 2], [3, 4]], 1), ([[0, 2], [4], [1, 3]], 2)):
        logp, ent, vals = outputs(b, 7)
        loss = split_loss(b, exp, algo, logp, ent, vals, parts, world)
        loss.backward()
        grads.append((loss.item(), logp.grad.clone(), ent.grad.clone(), vals.grad.clone()))
    for got in grads[1:]:
        assert got[0] == pytest.approx(grads[0][0], abs=1e-6)
        for a, w in zip(got[1:], grads[0][1:]):
            assert torch.allclose(a, w, atol=1e-6)


def test_token_mean_value_by_hand():
    # one row, 2 output tokens, ratio 1 (logp = old), advantage A for both, IS weight 1:
    # policy loss = token-mean(-A) = -A; value loss = 0.5 (V - R)^2 with V = V_old; entropy 0.3 -> -0.01 * 0.3
    b = build_role_batch([Episode("a", "g", "t", (Turn("policy", (1, 2), (10, 11), (-1.0, -1.0), 0),), reward=1.0)], "policy", 0)
    values = torch.tensor([[0.0, 0.25, 0.0, 0.0]])
    algo = AlgoConfig(advantage_estimator="gae", whiten_gae=False, entropy_coef=0.01, value_coef=0.5)
    exp, _, _ = compute_experience(b, b.rollout_logprobs, None, values, algo, RunningMeanStd())
    # A = R - V = 1 - 0.25 = 0.75; value loss = 0.5 * (0.25 - 1)^2 = 0.28125
    den = minibatch_denominators(b, exp, algo, 2)
    loss, stats = micro_loss(b.rollout_logprobs, torch.full((1, 4), 0.3), values, b, exp, den, algo, world_size=1)
    assert stats.policy == pytest.approx(-0.75)
    assert stats.value == pytest.approx(0.28125)
    assert loss.item() == pytest.approx(-0.75 + 0.5 * 0.28125 - 0.01 * 0.3)


def test_units():
    m = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 1, 0]])
    assert units(m, "token-mean") == 3 and units(m, "seq-mean-token-mean") == 2
