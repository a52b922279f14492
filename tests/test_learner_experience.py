"""learner.experience: rewards -> advantages/returns/IS weights on hand-built role batches, with the
expected numbers worked out in the comments."""

import math

import pytest
import torch

from learner.algos import RunningMeanStd
from learner.batch import build_role_batch
from learner.config import AlgoConfig
from learner.experience import compute_experience, shift_left, shift_right, value_positions
from rollout.types import Episode, Span, Turn

pytestmark = pytest.mark.unit


def turn(role, prompt, out, lps=None, **kw):
    lps = lps if lps is not None else [-1.0] * len(out)
    return Turn(role, tuple(prompt), tuple(out), tuple(lps), 0, **kw)


def single(eid, gid, reward, n_out=2):
    return Episode(eid, gid, "t", (turn("policy", [1, 2], list(range(10, 10 + n_out))),), reward=reward)


def run(batch, algo, old=None, ref=None, values=None, stats=RunningMeanStd()):
    old = old if old is not None else batch.rollout_logprobs.clone()
    return compute_experience(batch, old, ref, values, algo, stats)


def test_grpo_turn_level_groups_over_episodes():
    # g0 rewards 1, 0: mean 0.5, unbiased std sqrt(0.25 + 0.25) = 0.70711 -> A = +-0.5 / 0.70711 = +-0.70711
    # g1 rewards 0.5, 0.5: std 0 -> A = 0
    b = build_role_batch([single("a", "g0", 1.0), single("b", "g0", 0.0), single("c", "g1", 0.5), single("d", "g1", 0.5)],
                         "policy", 0)
    exp, _, diag = run(b, AlgoConfig(advantage_estimator="grpo"))
    a = 0.5 / (math.sqrt(0.5) + 1e-6)
    assert exp.advantages[:, 2:4].flatten().tolist() == pytest.approx([a, a, -a, -a, 0, 0, 0, 0], abs=1e-6)
    assert exp.advantages[:, :2].abs().sum() == 0  # prompts carry no advantage
    assert exp.seq_advantages.tolist() == pytest.approx([a, -a, 0, 0], abs=1e-6)
    assert diag.reward_mean == pytest.approx(0.5)


def test_dialogue_turns_share_the_episode_advantage_and_silent_episodes_count():
    # reasoner speaks twice in e0 (reward 1) and once in e1 (reward 0); e2 (reward 1) has no reasoner
    # turn but is in group g: mean 2/3, std sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3) = 0.57735
    # -> A(e0) = (1/3) / 0.57735 = 0.57735, A(e1) = -(2/3) / 0.57735 = -1.1547
    e0 = Episode("e0", "g", "t", (turn("reasoner", [1], [5]), turn("observer", [1, 5], [6]), turn("reasoner", [1, 5, 6], [7])), reward=1.0)
    e1 = Episode("e1", "g", "t", (turn("reasoner", [1], [5, 9]),), reward=0.0)
    e2 = Episode("e2", "g", "t", (turn("observer", [1], [5]),), reward=1.0)
    b = build_role_batch([e0, e1, e2], "reasoner", 0)
    exp, _, _ = run(b, AlgoConfig(advantage_estimator="grpo"))
    s = math.sqrt(1 / 3)
    assert exp.seq_advantages.tolist() == pytest.approx([(1 / 3) / (s + 1e-6)] * 2 + [-(2 / 3) / (s + 1e-6)], abs=1e-5)
    # only output tokens of reasoner turns are advantaged: row 1 is prompt [1, 5, 6] + output [7]
    assert exp.advantages[1].nonzero().flatten().tolist() == [3]


def test_turn_level_gae_with_env_rewards():
    # one env episode, 3 steps, rewards 0, 1, -1; values at the last prompt token 0.5, 0.2, -0.1;
    # gamma 0.9, lam 0.95, terminal after step 2:
    #   d2 = -1 - (-0.1) = -0.9                       A2 = -0.9
    #   d1 = 1 + 0.9 * -0.1 - 0.2 = 0.71              A1 = 0.71 + 0.855 * -0.9 = -0.0595
    #   d0 = 0 + 0.9 * 0.2 - 0.5 = -0.32              A0 = -0.32 + 0.855 * -0.0595 = -0.3708725
    #   returns A + V = 0.1291275, 0.1405, -1.0
    ts = (turn("policy", [1, 2], [3], reward=0.0), turn("policy", [1, 2, 3, 4], [5], reward=1.0),
          turn("policy", [1, 2, 3, 4, 5, 6], [7], reward=-1.0))
    b = build_role_batch([Episode("e", "g", "t", ts, reward=0.0)], "policy", 0)
    values = torch.zeros(3, 7)
    values[0, 1], values[1, 3], values[2, 5] = 0.5, 0.2, -0.1  # prompt lengths 2, 4, 6
    algo = AlgoConfig(advantage_estimator="gae", gamma=0.9, lam=0.95, whiten_gae=False, reward_placement="per_turn")
    exp, _, diag = run(b, algo, values=values)
    assert exp.seq_advantages.tolist() == pytest.approx([-0.3708725, -0.0595, -0.9], abs=1e-6)
    assert exp.returns[exp.value_mask].tolist() == pytest.approx([0.1291275, 0.1405, -1.0], abs=1e-6)
    assert exp.value_mask.nonzero().tolist() == [[0, 1], [1, 3], [2, 5]]
    assert exp.old_values[exp.value_mask].tolist() == pytest.approx([0.5, 0.2, -0.1])
    assert diag.value_explained_variance is not None


def test_truncated_episode_bootstraps_gae_from_the_final_state_value():
    # the same episode cut by the time limit after step 2, V(s_3) = 2.0 read on its bootstrap state:
    #   d2 = -1 + 0.9 * 2.0 - (-0.1) = 0.9            A2 = 0.9
    #   d1 = 0.71 (as before)                         A1 = 0.71 + 0.855 * 0.9 = 1.4795
    #   d0 = -0.32                                    A0 = -0.32 + 0.855 * 1.4795 = 0.9449725
    # a second, terminated episode in the batch (next value 0) keeps its plain GAE
    from learner.batch import build_bootstrap_batch

    ts = (turn("policy", [1, 2], [3], reward=0.0), turn("policy", [1, 2, 3, 4], [5], reward=1.0),
          turn("policy", [1, 2, 3, 4, 5, 6], [7], reward=-1.0))
    boot = turn("policy", [1, 2, 3, 4, 5, 6, 7, 8], [], trainable=False)
    cut = Episode("e", "g", "t", ts, finish_reason="truncated", bootstrap=boot)
    ended = Episode("f", "g", "t", ts[:1], finish_reason="terminated")
    b = build_role_batch([cut, ended], "policy", 0)
    bb, index = build_bootstrap_batch([cut, ended], "policy", 0)
    assert index == [0] and bb.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]] and not bb.loss_mask.any()
    assert build_bootstrap_batch([ended], "policy", 0) is None
    assert build_bootstrap_batch([cut], "observer", 0) is None
    values = torch.zeros(4, 7)
    values[0, 1], values[1, 3], values[2, 5], values[3, 1] = 0.5, 0.2, -0.1, 0.4
    algo = AlgoConfig(advantage_estimator="gae", gamma=0.9, lam=0.95, whiten_gae=False, reward_placement="per_turn")
    exp, _, _ = compute_experience(b, b.rollout_logprobs.clone(), None, values, algo, RunningMeanStd(),
                                   next_values=torch.tensor([2.0, 0.0]))
    # ended: one step, reward 0, V 0.4 -> A = -0.4
    assert exp.seq_advantages.tolist() == pytest.approx([0.9449725, 1.4795, 0.9, -0.4], abs=1e-6)


def test_kl_in_reward_turn_level():
    # one row, outputs at positions 2, 3; k1 KL = old - ref = (-1 - -1.5) + (-2 - -2.25) = 0.75 per turn;
    # kl_coef 0.2 -> reward 1 - 0.15 = 0.85; GAE with V = 0, gamma = lam = 1: A = 0.85
    b = build_role_batch([single("a", "g", 1.0)], "policy", 0)
    old = torch.tensor([[0.0, 0.0, -1.0, -2.0]])
    ref = torch.tensor([[0.0, 0.0, -1.5, -2.25]])
    algo = AlgoConfig(advantage_estimator="gae", kl_coef=0.2, kl_estimator="k1", kl_in="reward", whiten_gae=False)
    exp, _, diag = run(b, algo, old=old, ref=ref, values=torch.zeros(1, 4))
    assert exp.seq_advantages.tolist() == pytest.approx([0.85])
    assert diag.kl_ref == pytest.approx(0.375)  # token mean of 0.5, 0.25


def test_token_level_gae_aligns_values_to_the_state_before_each_token():
    # prompt [1, 2] output [10, 11]: token 2 is sampled in the state after token 1 -> V = values[1];
    # token 3 -> values[2]. gamma = lam = 1, outcome 1 on the last token:
    #   A3 = 1 - v2 = 0.7 ; A2 = v2 - v1 + A3 = 1 - v1 = 0.9 ; returns (at positions 1, 2) = 1, 1
    b = build_role_batch([single("a", "g", 1.0)], "policy", 0)
    values = torch.tensor([[9.0, 0.1, 0.3, 9.0]])
    algo = AlgoConfig(advantage_estimator="gae", advantage_level="token", whiten_gae=False)
    exp, _, _ = run(b, algo, values=values)
    assert exp.advantages[0].tolist() == pytest.approx([0, 0, 0.9, 0.7])
    assert exp.value_mask.tolist() == [[False, True, True, False]]
    assert exp.returns[0].tolist() == pytest.approx([0, 1.0, 1.0, 0])


def test_truncated_is_weights_and_mismatch():
    # old - rollout = 0.5 and 1.0 -> weights exp(0.5) = 1.6487, min(exp(1), 2) = 2
    b = build_role_batch([Episode("a", "g", "t", (turn("policy", [1, 2], [10, 11], lps=[-1.0, -2.0]),))], "policy", 0)
    old = torch.tensor([[0.0, 0.0, -0.5, -1.0]])
    exp, _, diag = run(b, AlgoConfig(tis_cap=2.0), old=old)
    assert exp.is_weights[0, 2:].tolist() == pytest.approx([math.exp(0.5), 2.0])
    assert diag.mismatch_mean_abs_log_ratio == pytest.approx(0.75)
    assert diag.mismatch_truncated_frac == pytest.approx(0.5)
    assert run(b, AlgoConfig(tis_cap=None), old=old)[0].is_weights is None


def test_rl4vlm_sequence_logprob():
    # output logps -1, -2, -3 (CoT = first two, action = last): 0.5 * (-3) + (-3) = -4.5
    t = turn("policy", [1], [5, 6, 7], lps=[-1.0, -2.0, -3.0], cot_span=Span(0, 2), action_span=Span(2, 3))
    b = build_role_batch([Episode("a", "g", "t", (t,))], "policy", 0)
    exp, _, _ = run(b, AlgoConfig(lambda_cot=0.5, tis_cap=2.0))
    assert exp.seq_old_logprobs.tolist() == pytest.approx([-4.5])
    assert exp.seq_is_weights.tolist() == pytest.approx([1.0])


def test_reward_normalisation_scales_by_running_std():
    # rewards 0, 2 (population var 1): scale-only -> 0, 2 / sqrt(1 + 1e-8); GRPO of the scaled scores
    # equals GRPO of the raw ones, so check the returned statistics and the logged mean instead
    b = build_role_batch([single("a", "g", 0.0), single("b", "g", 2.0)], "policy", 0)
    _, stats, diag = run(b, AlgoConfig(normalize_rewards=True))
    assert (stats.mean, stats.var, stats.count) == pytest.approx((1.0, 1.0, 2.0))
    assert diag.reward_normalized_mean == pytest.approx(1.0, abs=1e-6)


def test_shifts_and_value_positions():
    x = torch.tensor([[1, 2, 3]])
    assert shift_right(x).tolist() == [[0, 1, 2]] and shift_left(x).tolist() == [[2, 3, 0]]
    b = build_role_batch([single("a", "g", 1.0)], "policy", 0)
    assert value_positions(b, "turn").tolist() == [[False, True, False, False]]


def test_experience_is_built_by_name_only_and_select_keeps_every_field_by_name():
    from dataclasses import fields

    from learner.experience import Experience

    b = build_role_batch([single("a", "g", 1.0), single("b", "g", 0.0)], "policy", 0)
    exp, _, _ = run(b, AlgoConfig(tis_cap=2.0))
    values = [getattr(exp, f.name) for f in fields(Experience)]
    with pytest.raises(TypeError):
        Experience(*values)  # positional: refused
    picked = exp.select(torch.tensor([1]), 3)
    assert picked.advantages.tolist() == exp.advantages[1:, :3].tolist()
    assert picked.seq_advantages.tolist() == exp.seq_advantages[1:].tolist() and picked.ref_logprobs is None
