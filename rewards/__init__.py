"""Rewards: typed, pluggable graders of episodes. Importing this package registers the built-ins.

Public API: :class:`RewardResult`, :class:`Reward`, :class:`RewardSpec`, :func:`register_reward`,
:func:`build_reward`, :func:`registered_rewards`, and the reward classes below.
"""

from rewards.base import Reward, RewardResult, RewardSpec, build_reward, register_reward, registered_rewards
from rewards.composite import WeightedSum, weighted_sum
from rewards.cryptogram import (
    CryptogramCorrectness,
    CryptogramDecoding,
    CryptogramFormat,
    CryptogramPartialCorrectness,
)
from rewards.embedding import EmbeddingSimilarity
from rewards.match import ExactMatch, FormatReward, normalize_answer
from rewards.penalties import EnvReturn, LatencyPenalty, LengthPenalty

__all__ = [
    "CryptogramCorrectness",
    "CryptogramDecoding",
    "CryptogramFormat",
    "CryptogramPartialCorrectness",
    "EmbeddingSimilarity",
    "EnvReturn",
    "ExactMatch",
    "FormatReward",
    "LatencyPenalty",
    "LengthPenalty",
    "Reward",
    "RewardResult",
    "RewardSpec",
    "WeightedSum",
    "build_reward",
    "normalize_answer",
    "register_reward",
    "registered_rewards",
    "weighted_sum",
]
