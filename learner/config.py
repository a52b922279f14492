"""Typed configuration of the learner: LoRA, optimiser, RL algorithm, and the DeepSpeed world.

One pydantic model per component, ``extra="forbid"`` (a misspelt key is a ``ValidationError``, not
a silently ignored default), frozen, and a docstring under every field (``use_attribute_docstrings``,
so ``model_json_schema()`` carries them). Defaults follow verl/OpenRLHF for GRPO; the seed papers'
settings are quoted in the docstrings (RL4VLM = seed 002, the LLaVA-NeXT PPO report = seed 003).

The tree: :class:`LearnerConfig` holds :class:`LoraConfig`, :class:`OptimConfig`,
:class:`AlgoConfig` and :class:`SFTConfig`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from learner.algos import ADVANTAGE_ESTIMATORS, AGG_MODES
from learner.ds_config import owned_conflicts

LM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Seed 003's LoRA targets: attention and MLP projections of the language model."""

VALUE_ESTIMATORS = ("gae",)
"""Estimators that read critic values: the learner builds a value head only for these."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class LoraConfig(_Config):
    """Low-rank adapters on the frozen base model (PEFT ``LoraConfig``)."""

    r: int = Field(8, ge=1)
    """Adapter rank (seed 003: 8; RL4VLM: 128). vLLM serves only ranks 1, 8, 16, 32, 64, 128, ..."""
    alpha: float = Field(32.0, gt=0.0)
    """Scale numerator: the update is ``alpha / r * B A`` (seed 003: 32)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter input. Seed 003 used 0.05; 0 keeps the PPO ratio exactly 1 on the
    first minibatch (dropout makes the training forward differ from the no-grad old-logprob one)."""
    target_modules: tuple[str, ...] = LM_TARGETS
    """Linear-module names (last path component) adapted in the language model."""
    vision_target_modules: tuple[str, ...] = ()
    """Linear-module names adapted inside the vision tower, e.g. ("qkv", "proj", "fc1", "fc2") for
    Qwen2-VL; empty keeps the tower frozen. vLLM ignores tower LoRA unless
    ``enable_tower_connector_lora`` is on."""
    vision_tower_marker: str = "visual"
    """Module-path component that marks the vision tower (Qwen2-VL: ``model.visual``)."""

    @field_validator("target_modules", "vision_target_modules")
    @classmethod
    def _plain_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [m for m in v if not m.replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"module names must be plain identifiers, got {bad}")
        return v

    def target_regex(self) -> str:
        """PEFT ``target_modules`` as one regex (PEFT full-matches it against module paths): the
        language-model targets outside the vision tower, plus the vision targets inside it."""
        vt = self.vision_tower_marker
        parts = [rf"(?!.*\b{vt}\b).*\.({'|'.join(self.target_modules)})"] if self.target_modules else []
        if self.vision_target_modules:
            parts.append(rf".*\b{vt}\b.*\.({'|'.join(self.vision_target_modules)})")
        if not parts:
            raise ValueError("LoraConfig: no target modules")
        return "|".join(f"(?:{p})" for p in parts)


class OptimConfig(_Config):
    """Optimiser and learning-rate schedule (one optimizer step per PPO minibatch)."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    """torch AdamW; "sgd" (plain, no momentum) makes an update equal ``-lr * grad`` (tests use it)."""
    lr: float = Field(1e-5, gt=0.0)
    """Peak learning rate of the adapter (seed 003: 5e-6; RL4VLM: 1e-5)."""
    value_lr: float | None = Field(None, gt=0.0)
    """Learning rate of the value head; None = ``lr`` (seed 003: 1e-5 vs 5e-6 for the model)."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warm-up: constant, cosine to ``min_lr_ratio * lr``, or linear to it."""
    warmup_steps: int = Field(0, ge=0)
    """Optimizer steps of linear warm-up from 0 to ``lr``."""
    total_steps: int = Field(1000, ge=1)
    """Optimizer steps over which cosine/linear decay runs (held at the floor afterwards)."""
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Floor of the decay as a fraction of ``lr``."""
    weight_decay: float = Field(0.0, ge=0.0)
    """Decoupled weight decay (AdamW)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam moment decay rates."""
    eps: float = Field(1e-8, gt=0.0)
    """Adam denominator epsilon."""
    grad_clip: float | None = Field(1.0, gt=0.0)
    """Global gradient-norm clip (seed 003: 0.5; RL4VLM: 0.01); None disables it."""


class AlgoConfig(_Config):
    """The RL update: advantage estimator, PPO loss terms, rewards, epochs and minibatches."""

    advantage_estimator: str = "grpo"
    """Name in :data:`learner.algos.ADVANTAGE_ESTIMATORS` (gae, grpo, dr_grpo, rloo, reinforce_pp,
    reinforce_pp_baseline). "gae" adds a value head."""
    advantage_level: Literal["turn", "token"] = "turn"
    """"turn": one step per trainable turn, rows = episodes (RL4VLM: value on the last prompt token,
    every token of a turn shares its advantage; group statistics over episodes). "token": one step
    per output token, rows = turns (verl/OpenRLHF single-turn style; per-token values)."""
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """Discount (seed 003: 0.99; RL4VLM gym_cards: 0.9)."""
    lam: float = Field(1.0, ge=0.0, le=1.0)
    """GAE lambda (seed 003 and RL4VLM: 0.95)."""
    norm_adv_by_std: bool = True
    """GRPO: divide by the group std (verl ``norm_adv_by_std_in_grpo``)."""
    whiten_gae: bool = True
    """GAE: whiten advantages over the batch."""
    clip_low: float = Field(0.2, gt=0.0, lt=1.0)
    """PPO ratio clip below 1 (seed 003: 0.2; RL4VLM: 0.1)."""
    clip_high: float | None = Field(None, gt=0.0)
    """PPO ratio clip above 1; None = ``clip_low`` (DAPO clip-higher: 0.28)."""
    dual_clip_c: float | None = Field(3.0, gt=1.0)
    """Dual-clip bound for negative advantages (Ye et al. 2020); None disables it."""
    value_coef: float = Field(0.5, ge=0.0)
    """Weight of the value loss (seed 003: 0.5)."""
    value_clip: float | None = Field(0.2, gt=0.0)
    """PPO2 value clip around the old values; None = plain squared error."""
    entropy_coef: float = Field(0.0, ge=0.0)
    """Entropy bonus weight (seed 003 and RL4VLM: 0.01)."""
    kl_coef: float = Field(0.0, ge=0.0)
    """Weight of KL(pi || pi_ref), pi_ref = the base model with the adapter disabled (IMMO's KL penalty)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator (Schulman 2020); verl's GRPO uses k3 ("low_var_kl")."""
    kl_in: Literal["loss", "reward"] = "loss"
    """"loss": add ``kl_coef * KL`` to the loss (GRPO); "reward": subtract it from the rewards (PPO/RLHF)."""
    loss_agg: str = "token-mean"
    """Loss aggregation: one of :data:`learner.algos.AGG_MODES` (token-mean, seq-mean-token-sum,
    seq-mean-token-mean, seq-mean-token-sum-norm); applied over each whole minibatch, across ranks."""
    norm_len: int | None = Field(None, ge=1)
    """The constant divisor of "seq-mean-token-sum-norm" (Dr.GRPO divides each sequence's token sum
    by the generation budget, the same every step, not by the batch's longest output). None: in a
    recipe, the role's ``sampling.max_tokens`` (filled in at load by ``cluster.config``); a learner
    built without a recipe then divides by its batch's longest output."""
    lambda_cot: float | None = Field(None, ge=0.0, le=1.0)
    """RL4VLM action log-prob ``lambda * sum logp(CoT) + sum logp(action)`` per turn (gym_cards: 0.5);
    the PPO ratio then is per turn. None: ordinary per-token ratio."""
    tis_cap: float | None = Field(2.0, gt=0.0)
    """Truncated importance-sampling cap on ``pi_learner / pi_sampler`` (Yao et al. 2025); None off."""
    old_logprobs: Literal["recompute", "rollout"] = "recompute"
    """Where the PPO ratio's pi_old comes from. "recompute": a no-grad forward of the learner before
    the update (verl's default; the sampler/learner gap is then corrected by ``tis_cap`` and logged
    as ``mismatch/*``). "rollout": the sampler's own log-probs, i.e. the behaviour policy (original
    PPO; verl's rollout-correction "bypass" mode): saves that forward when no value head or
    reference needs it, and in async mode lets the clip see the one-version lag. Only sound when the
    sampler's log-probs are raw and equal the learner's (fp32 here: measured within 1e-4); the
    mismatch metrics then read 0."""
    reward_placement: Literal["outcome", "per_turn"] = "outcome"
    """"outcome": the episode reward, credited at the role's last turn (dialogues, single answers);
    "per_turn": each turn's own ``Turn.reward`` (environment steps; rewards of turns that are not
    this role's are credited to its preceding turn)."""
    normalize_rewards: bool = False
    """Scale rewards by a running std (gymnasium ``NormalizeReward`` style, seed 001)."""
    reward_clip: float | None = Field(None, gt=0.0)
    """Clip normalised rewards to ``[-reward_clip, reward_clip]``."""
    logit_temperature: float = Field(1.0, gt=0.0)
    """Divide logits by this before the log-softmax. Keep 1 when the sampler returns raw (pre-temperature)
    log-probs (vLLM's default); set it to the sampling temperature when it returns processed ones."""
    epochs: int = Field(1, ge=1)
    """Passes over each batch (RL4VLM: 4)."""
    minibatches: int = Field(1, ge=1)
    """Optimizer steps per epoch; the batch is split into this many equal parts."""
    shuffle: bool = True
    """Shuffle samples before each epoch (seeded by seed, step and epoch; identical on every rank)."""

    @field_validator("advantage_estimator")
    @classmethod
    def _known_estimator(cls, v: str) -> str:
        if v not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"unknown advantage estimator {v!r}; known: {sorted(ADVANTAGE_ESTIMATORS)}")
        return v

    @field_validator("loss_agg")
    @classmethod
    def _known_agg(cls, v: str) -> str:
        if v not in AGG_MODES:
            raise ValueError(f"unknown loss aggregation {v!r}; known: {list(AGG_MODES)}")
        return v

    @model_validator(mode="after")
    def _baseline_has_scores(self) -> AlgoConfig:
        # At turn level, per-turn rewards reach the estimator as dense rewards only (scores=None):
        # REINFORCE++-baseline would subtract the group mean of nothing, i.e. run plain REINFORCE++.
        if (self.advantage_estimator == "reinforce_pp_baseline" and self.reward_placement == "per_turn"
                and self.advantage_level == "turn"):
            raise ValueError("advantage_estimator: 'reinforce_pp_baseline' needs an outcome score to "
                             "baseline, but reward_placement = 'per_turn' at advantage_level = 'turn' "
                             "gives it none (it would silently run plain 'reinforce_pp'); use "
                             "reward_placement = 'outcome', advantage_level = 'token', or 'reinforce_pp'")
        return self

    @property
    def needs_values(self) -> bool:
        """True when the estimator reads critic values (a value head is trained)."""
        return self.advantage_estimator in VALUE_ESTIMATORS

    @property
    def needs_reference(self) -> bool:
        """True when reference log-probs are needed (any KL term)."""
        return self.kl_coef > 0.0


class SFTConfig(_Config):
    """Supervised fine-tuning of the adapter on transcripts (IMMO stage 1)."""

    max_length: int = Field(2048, ge=8)
    """Examples longer than this many tokens are refused with an error (never silently cut)."""
    lr: float | None = Field(None, gt=0.0)
    """Peak learning rate of SFT steps; None uses ``optim.lr``. A warm start usually wants a
    larger rate than RL, whose noisy gradients make Adam take full-size steps regardless. SFT steps
    run at this peak (the value head's rate scaled alike) and do not advance the RL schedule."""
    role_map: dict[str, str] = Field(default_factory=lambda: {"user": "user", "assistant": "assistant",
                                                              "system": "system"})
    """Transcript speaker -> ChatML role; the loss is on ChatML "assistant" messages only."""


class LearnerConfig(_Config):
    """One learner group: the role it trains, the DeepSpeed world, the model heads, and sub-configs."""

    role: str = Field("policy", min_length=1)
    """The role whose trainable turns this learner trains ("policy", "reasoner", "observer", or a
    registered rollout kind's role); other roles' turns are never touched."""
    base_model_id: str = ""
    """Name written into exported adapters' manifests; empty = the model directory's name."""
    zero_stage: Literal[2, 3] = 2
    """DeepSpeed ZeRO stage: 2 shards gradients and optimizer state, 3 also the parameters."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Model and activation precision (optimizer master weights stay fp32)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend of the learner's world: "auto" = nccl on a rank with a GPU, gloo
    on a CPU rank (resolved per rank where it is placed: ``learner.device``); "nccl" on a rank
    without a GPU is an error at start."""
    micro_batch_size: int = Field(4, ge=1)
    """Samples per forward/backward on one rank; gradients accumulate over the micro batches of a
    minibatch (the accumulation count follows from the minibatch size)."""
    value_head_layers: int = Field(3, ge=1)
    """Linear layers in the value head MLP (seed 003: 3; RL4VLM: 3 with widths 1024, 512)."""
    value_head_hidden: int = Field(1024, ge=1)
    """Width of the value head's hidden layers."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (HF ``gradient_checkpointing_enable``)."""
    seed: int = 0
    """Seed of adapter/value-head init, shuffling and dropout (offset by rank for dropout)."""
    lora: LoraConfig = LoraConfig()
    """Adapter shape and targets."""
    optim: OptimConfig = OptimConfig()
    """Optimiser and schedule."""
    algo: AlgoConfig = AlgoConfig()
    """RL algorithm."""
    sft: SFTConfig = SFTConfig()
    """Supervised stage."""
    deepspeed: dict[str, Any] = Field(default_factory=dict)
    """Further DeepSpeed config entries, deep-merged into the learner's own (``learner.ds_config``),
    e.g. ``{"zero_optimization": {"offload_optimizer": {"device": "cpu"}, "reduce_bucket_size": 5e8},
    "communication_data_type": "fp32"}``. Keys the typed fields own are refused, naming the field
    to set instead (``zero_optimization.stage``: ``zero_stage``; ``bf16.enabled``: ``dtype``;
    ``gradient_clipping``: ``optim.grad_clip``; batch sizes, accumulation, ``optimizer`` and
    ``scheduler``: ``micro_batch_size`` / ``optim``)."""

    @field_validator("deepspeed")
    @classmethod
    def _not_owned(cls, v: dict[str, Any]) -> dict[str, Any]:
        conflicts = owned_conflicts(v)
        if conflicts:
            raise ValueError("; ".join(conflicts))
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LearnerConfig:
        if self.algo.lambda_cot is not None and self.algo.advantage_level == "token":
            raise ValueError("algo.lambda_cot (a per-turn ratio) needs algo.advantage_level='turn'")
        return self
