"""RL math as pure functions over torch tensors: advantage estimators (and their registry),
policy/value/entropy/KL losses, masked statistics and running reward normalisation.

Imports only torch and numpy. See :mod:`learner.algos.registry` for the name -> estimator table
the learner dispatches through.
"""

from learner.algos.advantages import (
    discounted_returns,
    dr_grpo_advantage,
    gae,
    grpo_advantage,
    group_index,
    group_normalized_scores,
    place_at_last_token,
    reinforce_pp_advantage,
    reinforce_pp_baseline_advantage,
    rloo_advantage,
    rloo_scores,
)
from learner.algos.losses import (
    AGG_MODES,
    KL_KINDS,
    ISCorrection,
    PolicyLoss,
    ValueLoss,
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
from learner.algos.normalize import RunningMeanStd, masked_mean, masked_var, masked_whiten
from learner.algos.registry import (
    ADVANTAGE_ESTIMATORS,
    AdvantageConfig,
    AdvantageInputs,
    AdvantageOutput,
    compute_advantages,
    get_estimator,
)

__all__ = [
    "ADVANTAGE_ESTIMATORS", "AGG_MODES", "KL_KINDS", "AdvantageConfig", "AdvantageInputs",
    "AdvantageOutput", "ISCorrection", "PolicyLoss", "RunningMeanStd", "ValueLoss", "agg_loss",
    "compute_advantages", "discounted_returns", "dr_grpo_advantage", "entropy_from_logits",
    "explained_variance", "gae", "get_estimator", "grpo_advantage", "group_index",
    "group_normalized_scores",
    "kl_penalty", "logprobs_from_logits", "masked_mean", "masked_var", "masked_whiten",
    "place_at_last_token", "ppo_policy_loss", "reinforce_pp_advantage",
    "reinforce_pp_baseline_advantage", "rl4vlm_action_logprob", "rloo_advantage", "rloo_scores",
    "truncated_is_weights", "value_loss",
]
