"""One data-parallel rank of a learner group: its model, tokenizer, optimizer state and counters,
plus the collective forward pieces every capability shares. A plain class (``cluster/`` runs it in
a Ray actor, :mod:`learner.local_world` in a spawned process).

What a rank does is written by capability, each a module of functions ``fn(rank, *args)`` that
:class:`learner.group.LearnerGroup` runs on every rank at once:

* :mod:`learner.update` -- the RL update (``train_step``) and scoring (``logprobs``, the probe);
* :mod:`learner.sft_step` -- one supervised step;
* :mod:`learner.rank_io` -- the adapter artifact, exports and checkpoints.

Every rank receives the same arguments and works on its own rows (``rows[rank::world_size]``,
deterministic). A rank with fewer rows runs dummy micro batches (zero-weighted) so that every rank
makes the same collective calls (ZeRO-3 gathers parameters per module call).
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import AutoProcessor, AutoTokenizer

from learner.algos import RunningMeanStd
from learner.batch import RoleBatch
from learner.config import LearnerConfig
from learner.deepspeed_engine import ZeroEngine, init_world, zero3_init
from learner.device import RankDevice
from learner.inputs import ImageEncoder, ModelInputs, VisionSpec, make_inputs
from learner.model import build_policy_model
from learner.sft import SFTBatch

__all__ = ["LearnerRank"]


class LearnerRank:
    """One rank of one learner group (one trained model/role). Every capability function is
    collective: all ranks must call the same ones in the same order with the same arguments.

    State: ``config``, ``rank``, ``world_size``, ``tokenizer``, ``pad_id``, ``encoder`` (images,
    VLMs only), ``zero`` (the DeepSpeed engine), ``step`` (RL updates done), ``sft_steps``,
    ``skipped_steps`` (non-finite optimizer steps skipped), ``reward_stats`` (running reward
    normalisation), ``init_seconds``."""

    def __init__(self, config: LearnerConfig, rank: int, world_size: int, master_addr: str, master_port: int,
                 model_dir: str | Path, device: RankDevice) -> None:
        """``device``: this rank's local device index and resolved backend, decided where the rank
        was placed (:mod:`learner.device`). Under ZeRO-3 the model is built partitioned."""
        t0 = time.perf_counter()
        self.config, self.rank, self.world_size = config, rank, world_size
        self.model_dir = str(model_dir)
        init_world(rank, world_size, master_addr, master_port, device.backend, device.local_rank)
        torch.manual_seed(config.seed * 7919 + rank)  # dropout stream of this rank
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with zero3_init(config, world_size):
            model = build_policy_model(model_dir, config, temperature=config.algo.logit_temperature)
        self.encoder = self._image_encoder(model)
        self.zero = ZeroEngine(model, config, world_size)
        self.step = 0
        self.sft_steps = 0
        self.skipped_steps = 0  # optimizer steps skipped as non-finite (learner.update), RL and SFT
        self.reward_stats = RunningMeanStd()
        self.init_seconds = time.perf_counter() - t0

    def _image_encoder(self, model) -> ImageEncoder | None:
        cfg = model.hf_model.config
        if not hasattr(cfg, "vision_config"):
            return None
        return ImageEncoder(AutoProcessor.from_pretrained(self.model_dir).image_processor, VisionSpec.from_config(cfg))

    @property
    def base_model_id(self) -> str:
        return self.config.base_model_id or Path(self.model_dir).name

    def micro_slots(self, rows: Sequence[int]) -> Iterator[list[int]]:
        """This rank's rows of ``rows`` in micro batches; every rank yields the same number of slots
        (empty ones where it has run out)."""
        mine = list(rows)[self.rank::self.world_size]
        m = self.config.micro_batch_size
        n = math.ceil(math.ceil(len(rows) / self.world_size) / m)
        for i in range(n):
            yield mine[i * m:(i + 1) * m]

    def inputs(self, sel: RoleBatch | SFTBatch, images) -> ModelInputs:
        """The model inputs of the rows ``sel`` (images encoded through this rank's encoder)."""
        return make_inputs(sel.input_ids, sel.attention_mask, sel.prompt_lens, sel.image_hashes, images,
                           self.encoder, self.pad_id)

    @torch.no_grad()
    def score(self, rb: RoleBatch, images, use_adapter: bool, with_values: bool):
        """(log-probs (B, T), values (B, T) or None) of every row, assembled on every rank."""
        self.zero.train(False)
        B, T = rb.input_ids.shape
        logp = torch.zeros(B, T)
        vals = torch.zeros(B, T) if with_values else None
        for rows in self.micro_slots(range(B)):
            sel = rb.select(rows)
            lp, _, v = self.zero.forward(**self.inputs(sel, images).forward_kwargs(), use_adapter=use_adapter,
                                         with_values=with_values)
            r, t = len(rows), sel.input_ids.shape[1]
            logp[rows, :t] = lp[:r, :t].float()
            if vals is not None:
                vals[rows, :t] = v[:r, :t].float()
        logp = self.zero.all_reduce_sum(logp)
        return logp, (self.zero.all_reduce_sum(vals) if vals is not None else None)

    def forget_images(self) -> None:
        """Drop the per-batch image cache (images are cached by hash only within one call)."""
        if self.encoder is not None:
            self.encoder.clear()

    def image_token_count(self, data: bytes) -> int:
        """Image placeholder tokens the model's processor gives the encoded image ``data``."""
        _, grid = self.encoder.encode(hashlib.sha256(data).hexdigest(), data)
        return self.encoder.num_tokens(grid)
