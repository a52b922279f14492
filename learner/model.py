"""The trained model: a frozen Hugging Face base (Qwen2-VL family or a text LM), PEFT LoRA adapters,
and an optional value head; one forward gives per-token log-probs, entropies and values.

The reference policy is the same module with the adapter switched off (``disable_adapter()``), so
no second copy of the base weights is held (as verl does for LoRA: ``ref_in_actor``). The value head
is an MLP on the last hidden state (RL4VLM and seed 003: three linear layers); for turn-level
advantages its output is read on each turn's last prompt token.

Alignment: every output tensor is (B, T) and aligned with ``input_ids``: ``logprobs[:, t]`` is
``log p(input_ids[t] | input_ids[< t])`` (0 for t = 0 and for positions before ``logits_from + 1``),
``entropy[:, t]`` the entropy of that same distribution, ``values[:, t]`` = V(h_t), the value of the
state after reading token t.

No deepspeed here; this module is built first and handed to :mod:`learner.deepspeed_engine`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PreTrainedModel

from learner.algos import entropy_from_logits, logprobs_from_logits
from learner.config import LearnerConfig, LoraConfig

__all__ = ["ValueHead", "PolicyModel", "build_policy_model", "is_vision_model", "load_base_model", "apply_lora"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def is_vision_model(model_dir: str | Path) -> bool:
    """True when the checkpoint's config has a vision tower (Qwen2-VL family)."""
    return hasattr(AutoConfig.from_pretrained(model_dir), "vision_config")


def load_base_model(model_dir: str | Path, dtype: str) -> PreTrainedModel:
    """The base checkpoint in ``dtype``, every parameter frozen (VLM or causal LM by its config)."""
    cls = AutoModelForImageTextToText if is_vision_model(model_dir) else AutoModelForCausalLM
    model = cls.from_pretrained(model_dir, dtype=DTYPES[dtype])
    model.requires_grad_(False)
    return model


def apply_lora(model: PreTrainedModel, cfg: LoraConfig, seed: int) -> PeftModel:
    """Wrap ``model`` with LoRA adapters on ``cfg``'s targets; the adapter init is seeded so every
    rank starts from the same weights. Raises if no module matched."""
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=cfg.target_regex(), bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, peft_cfg)
    if not any(p.requires_grad for p in peft_model.parameters()):
        raise ValueError(f"LoRA matched no module of the model for targets {cfg.target_regex()!r}")
    return peft_model


class ValueHead(nn.Module):
    """MLP ``hidden -> 1``: ``layers - 1`` (Linear, ReLU) blocks of width ``width``, then a Linear."""

    def __init__(self, hidden_size: int, layers: int, width: int) -> None:
        super().__init__()
        dims = [hidden_size] + [width] * (layers - 1)
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*blocks, nn.Linear(dims[-1], 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, T) float32 values."""
        return self.mlp(hidden).squeeze(-1).float()


class PolicyModel(nn.Module):
    """LoRA-wrapped base model plus optional value head, behind one forward.

    ``forward`` returns a tuple ``(logprobs, entropy, values)`` of (B, T) float32 tensors (``entropy``
    / ``values`` None unless asked); tuples keep DeepSpeed ZeRO-3's output hooks simple.
    """

    def __init__(self, peft_model: PeftModel, value_head: ValueHead | None, temperature: float = 1.0) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.value_head = value_head
        self.temperature = temperature

    @property
    def hf_model(self) -> PreTrainedModel:
        return self.peft_model.get_base_model()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_from: int = 0,
        use_adapter: bool = True,
        with_entropy: bool = False,
        with_values: bool = False,
        **vision: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per-token log-probs (and entropies/values) of ``input_ids`` (B, T) under the adapter (or,
        ``use_adapter=False``, the base model). Logits are computed only for positions
        ``>= logits_from`` (the earliest output token minus one), saving the prompt's vocab matmul.
        ``vision``: ``pixel_values``, ``image_grid_thw``, ``mm_token_type_ids`` for VLM batches."""
        if use_adapter:
            hidden = self._hidden(input_ids, attention_mask, vision)
        else:
            with self.peft_model.disable_adapter():
                hidden = self._hidden(input_ids, attention_mask, vision)
        logits = self.hf_model.get_output_embeddings()(hidden[:, logits_from:-1])
        if self.temperature != 1.0:
            logits = logits / self.temperature
        B, T = input_ids.shape
        logp = torch.zeros(B, T, dtype=torch.float32, device=hidden.device)
        logp[:, logits_from + 1:] = logprobs_from_logits(logits, input_ids[:, logits_from + 1:])
        ent = None
        if with_entropy:
            ent = torch.zeros(B, T, dtype=torch.float32, device=hidden.device)
            ent[:, logits_from + 1:] = entropy_from_logits(logits)
        values = self.value_head(hidden) if (with_values and self.value_head is not None) else None
        return logp, ent, values

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, vision: dict) -> torch.Tensor:
        backbone = getattr(self.hf_model, self.hf_model.base_model_prefix)
        out = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **vision)
        return out.last_hidden_state


def hidden_size(model: PreTrainedModel) -> int:
    cfg = model.config
    return cfg.text_config.hidden_size if hasattr(cfg, "text_config") else cfg.hidden_size


def build_policy_model(model_dir: str | Path, config: LearnerConfig, temperature: float = 1.0) -> PolicyModel:
    """Base model + LoRA + (if the estimator reads values) a seeded value head, in config dtype."""
    base = load_base_model(model_dir, config.dtype)
    if config.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    peft_model = apply_lora(base, config.lora, config.seed)
    head = None
    if config.algo.needs_values:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + 1)
            head = ValueHead(hidden_size(base), config.value_head_layers, config.value_head_hidden)
        head = head.to(DTYPES[config.dtype])
    return PolicyModel(peft_model, head, temperature)
