"""Dr.GRPO's length normaliser is a constant, the generation budget (issue 12, "Also fix"): a
recipe's ``learner.algo.norm_len`` defaults to the role's ``sampling.max_tokens``, and the
"seq-mean-token-sum-norm" loss divides every sequence's token sum by it, whatever the batch's
longest output (before, the divisor was that longest output, so the loss scale moved every step)."""

import pytest

from cluster.config import load_recipe
from learner.algos import RunningMeanStd
from learner.batch import build_role_batch
from learner.config import AlgoConfig
from learner.experience import compute_experience
from learner.ppo import micro_loss, minibatch_denominators
from learner.update import loss_norm_len
from rollout.types import Episode, Turn

pytestmark = pytest.mark.unit

DR_GRPO = ("roles.policy.learner.algo.advantage_estimator='dr_grpo'",
           "roles.policy.learner.algo.loss_agg='seq-mean-token-sum-norm'")


def two_replies(lens: tuple[int, int]):
    """One group of two replies of ``lens`` output tokens, rewards 1 and 0, sampler log-prob -1."""
    eps = [Episode(f"e{i}", "g", "t", (Turn("policy", (1, 2), tuple(range(10, 10 + n)), (-1.0,) * n, 0),),
                   reward=float(1 - i)) for i, n in enumerate(lens)]
    return build_role_batch(eps, "policy", 0)


def dr_grpo_loss(algo: AlgoConfig, lens: tuple[int, int]) -> float:
    """The policy loss of the two replies at ratio 1 (pi = pi_old = the sampler)."""
    b = two_replies(lens)
    exp, _, _ = compute_experience(b, b.rollout_logprobs, None, None, algo, RunningMeanStd())
    den = minibatch_denominators(b, exp, algo, loss_norm_len(algo, b))
    _, stats = micro_loss(b.rollout_logprobs, b.rollout_logprobs * 0, None, b, exp, den, algo, world_size=1)
    return stats.policy


def test_a_recipe_sets_norm_len_to_the_roles_generation_budget():
    recipe = load_recipe("cluster/recipes/smoke.toml",
                         DR_GRPO + ("rollout.single_turn.policy.sampling.max_tokens=8",))
    assert recipe.roles["policy"].learner.algo.norm_len == 8
    kept = load_recipe("cluster/recipes/smoke.toml", DR_GRPO + ("roles.policy.learner.algo.norm_len=5",))
    assert kept.roles["policy"].learner.algo.norm_len == 5  # set explicitly: kept


def test_the_loss_divides_by_the_budget_by_hand():
    algo = load_recipe("cluster/recipes/smoke.toml",
                       DR_GRPO + ("rollout.single_turn.policy.sampling.max_tokens=8",)).roles["policy"].learner.algo
    # advantages s - mean_g = +0.5 (2 tokens), -0.5 (3 tokens); per-token loss -A at ratio 1.
    # token sums: -0.5 * 2 = -1.0 and +0.5 * 3 = 1.5; / 8 each; mean over the 2 sequences:
    assert dr_grpo_loss(algo, (2, 3)) == pytest.approx((-1.0 / 8 + 1.5 / 8) / 2)  # 0.03125
    # a batch whose longest output is 5, not 3: same divisor, so -1/8 + 2.5/8, halved
    assert dr_grpo_loss(algo, (2, 5)) == pytest.approx((-1.0 / 8 + 2.5 / 8) / 2)  # 0.09375


def test_without_a_recipe_the_old_divisor_remains():
    algo = AlgoConfig(advantage_estimator="dr_grpo", loss_agg="seq-mean-token-sum-norm")
    assert algo.norm_len is None
    assert dr_grpo_loss(algo, (2, 3)) == pytest.approx((-1.0 / 3 + 1.5 / 3) / 2)
