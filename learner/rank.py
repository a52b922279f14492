"""One data-parallel rank of a learner group: a plain class (``cluster/`` wraps it in a Ray actor).

Every rank receives the same whole batch; all of them build the same :class:`~learner.batch.RoleBatch`
and each works on its own rows (``rows[rank::world_size]``, deterministic). One ``train_step``:

1. **build** the role's rows from the episodes (other roles' turns are never rows);
2. **old forward** (no grad): log pi_old and values on each rank's rows, summed across ranks so
   every rank holds the whole (B, T) tensors; **reference forward** with the adapter disabled when a
   KL term is configured;
3. **advantages** on the whole batch (identical on every rank): rewards (+ KL in reward, running
   normalisation), estimator by name, truncated IS weights against the sampler's log-probs;
4. **update**: epochs x minibatches; each minibatch's rows are split across ranks and micro batches,
   each micro loss scaled so all of them add up to the minibatch loss; one optimizer step per
   minibatch.

A rank with fewer rows runs dummy micro batches (zero-weighted) so that every rank makes the same
collective calls (ZeRO-3 gathers parameters per module call).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch
from transformers import AutoProcessor, AutoTokenizer

from learner import checkpoint
from learner.algos import RunningMeanStd
from learner.batch import RoleBatch, build_bootstrap_batch, build_role_batch
from learner.config import LearnerConfig
from learner.deepspeed_engine import ZeroEngine, init_world, zero3_init
from learner.device import RankDevice
from learner.experience import Experience, compute_experience
from learner.export import ExportedAdapter, adapter_files, write_adapter
from learner.inputs import ImageEncoder, ModelInputs, VisionSpec, make_inputs
from learner.model import build_policy_model
from learner.ppo import micro_loss, minibatch_denominators
from learner.sft import SFTBatch, SFTExample, sft_loss_sums, tokenize_examples
from rollout.episode_arrow import EpisodeBatch

__all__ = ["LearnerRank"]


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0


def as_episode_batch(batch: EpisodeBatch | tuple[pa.Table, pa.Table]) -> EpisodeBatch:
    """Accept an EpisodeBatch or its two Arrow tables (episodes, images)."""
    return batch if isinstance(batch, EpisodeBatch) else EpisodeBatch.from_arrow(*batch)


class LearnerRank:
    """One rank of one learner group (one trained model/role). All ranks must call the same methods
    in the same order with the same arguments (every method is collective).

    API: :meth:`train_step` (RL update, returns metrics), :meth:`sft_step`, :meth:`logprobs`
    (score turns, e.g. the weight-sync probe), :meth:`adapter_files` (PEFT files + manifest as
    bytes, on rank 0), :meth:`export_adapter` (atomic directory), :meth:`value_head_state`,
    :meth:`save_checkpoint` / :meth:`load_checkpoint`; attributes ``step``, ``init_seconds``."""

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

    # ---- RL ------------------------------------------------------------------------------------

    def train_step(self, batch: EpisodeBatch | tuple[pa.Table, pa.Table]) -> dict[str, float]:
        """One RL update on ``batch`` for this learner's role; returns global metrics (same on all ranks)."""
        timer, algo = _Timer(), self.config.algo
        t_start = time.perf_counter()
        with timer("build"):
            eb = as_episode_batch(batch)
            rb = build_role_batch(eb.episodes, self.config.role, self.pad_id)
        if rb.num_rows == 0:
            return {"batch/samples": 0.0, "batch/episodes": float(len(eb.episodes))}
        old, values = rb.rollout_logprobs * rb.loss_mask, None  # pi_old = the sampler ("rollout")
        if algo.old_logprobs == "recompute" or algo.needs_values:
            with timer("old_forward"):
                learner_old, values = self._score(rb, eb.images, use_adapter=True, with_values=algo.needs_values)
            if algo.old_logprobs == "recompute":
                old = learner_old
        ref = None
        if algo.needs_reference:
            with timer("ref_forward"):
                ref, _ = self._score(rb, eb.images, use_adapter=False, with_values=False)
        next_values = None
        if values is not None and algo.advantage_level == "turn":
            with timer("bootstrap_forward"):
                next_values = self._bootstrap_values(eb)
        with timer("advantages"):
            exp, self.reward_stats, diag = compute_experience(rb, old, ref, values, algo, self.reward_stats,
                                                              next_values)
        with timer("update"):
            upd = self._update(rb, eb.images, exp)
        self.step += 1
        self._forget_images()
        return {**diag, **upd, **self._batch_metrics(rb, timer, time.perf_counter() - t_start)}

    def _bootstrap_values(self, eb: EpisodeBatch) -> torch.Tensor | None:
        """(E,) V(s_T) read on the last prompt token of each truncated episode's final state (0 for
        the others), or None when no episode was truncated; collective."""
        boot = build_bootstrap_batch(eb.episodes, self.config.role, self.pad_id)
        if boot is None:
            return None
        bb, index = boot
        _, v = self._score(bb, eb.images, use_adapter=True, with_values=True)
        out = torch.zeros(len(eb.episodes))
        out[index] = v[torch.arange(bb.num_rows), bb.prompt_lens - 1]
        return out

    def logprobs(self, batch: EpisodeBatch | tuple[pa.Table, pa.Table], use_adapter: bool = True) -> list[list[float]]:
        """Log-probs of the output tokens of each of this role's trainable turns (rows in
        :func:`build_role_batch` order) under the current adapter, or the base model; collective."""
        eb = as_episode_batch(batch)
        rb = build_role_batch(eb.episodes, self.config.role, self.pad_id)
        if rb.num_rows == 0:
            return []
        logp, _ = self._score(rb, eb.images, use_adapter=use_adapter, with_values=False)
        self._forget_images()
        return [logp[i][rb.loss_mask[i]].tolist() for i in range(rb.num_rows)]

    def _batch_metrics(self, rb: RoleBatch, timer: _Timer, total: float) -> dict[str, float]:
        tokens = float(rb.attention_mask.sum())
        out = {f"time/{k}": v for k, v in timer.seconds.items()}
        return out | {"time/step": total, "batch/samples": float(rb.num_rows),
                      "batch/episodes": float(rb.episodes.num_episodes), "batch/tokens": tokens,
                      "batch/output_tokens": float(rb.num_output_tokens),
                      "perf/tokens_per_s": tokens * (self.config.algo.epochs + 1) / max(total, 1e-9),
                      "learner/step": float(self.step), "optim/lr": self.zero.lr()}

    def _micro_slots(self, rows: Sequence[int]) -> Iterator[list[int]]:
        """This rank's rows of ``rows`` in micro batches; every rank yields the same number of slots
        (empty ones where it has run out)."""
        mine = list(rows)[self.rank::self.world_size]
        m = self.config.micro_batch_size
        n = math.ceil(math.ceil(len(rows) / self.world_size) / m)
        for i in range(n):
            yield mine[i * m:(i + 1) * m]

    def _inputs(self, sel: RoleBatch | SFTBatch, images) -> ModelInputs:
        return make_inputs(sel.input_ids, sel.attention_mask, sel.prompt_lens, sel.image_hashes, images,
                           self.encoder, self.pad_id)

    @torch.no_grad()
    def _score(self, rb: RoleBatch, images, use_adapter: bool, with_values: bool):
        """(log-probs (B, T), values (B, T) or None) of every row, assembled on every rank."""
        self.zero.train(False)
        B, T = rb.input_ids.shape
        logp = torch.zeros(B, T)
        vals = torch.zeros(B, T) if with_values else None
        for rows in self._micro_slots(range(B)):
            sel = rb.select(rows)
            lp, _, v = self.zero.forward(**self._inputs(sel, images).forward_kwargs(), use_adapter=use_adapter,
                                         with_values=with_values)
            r, t = len(rows), sel.input_ids.shape[1]
            logp[rows, :t] = lp[:r, :t].float()
            if vals is not None:
                vals[rows, :t] = v[:r, :t].float()
        logp = self.zero.all_reduce_sum(logp)
        return logp, (self.zero.all_reduce_sum(vals) if vals is not None else None)

    def _order(self, n: int, epoch: int) -> np.ndarray:
        if not self.config.algo.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.config.seed, self.step, epoch]).permutation(n)

    def _update(self, rb: RoleBatch, images, exp: Experience) -> dict[str, float]:
        algo = self.config.algo
        norm_len = int(rb.output_lens.max())
        sums: dict[str, float] = defaultdict(float)
        norms, n_steps = [], 0
        self.zero.train(True)
        for epoch in range(algo.epochs):
            for mb in np.array_split(self._order(rb.num_rows, epoch), algo.minibatches):
                if len(mb) == 0:
                    continue
                mb_rows = mb.tolist()
                sel_mb = rb.select(mb_rows)
                den = minibatch_denominators(sel_mb, exp.select(torch.as_tensor(mb_rows), sel_mb.input_ids.shape[1]),
                                             algo, norm_len)
                for rows in self._micro_slots(mb_rows):
                    for k, v in self._micro_backward(rb, images, exp, rows, den).items():
                        sums[k] += v
                norms.append(self.zero.step())
                n_steps += 1
        out = self._reduce_means(sums, n_steps)
        return out | {"optim/grad_norm": float(np.mean(norms)), "optim/grad_norm_max": float(np.max(norms)),
                      "optim/steps": float(n_steps)}

    def _micro_backward(self, rb: RoleBatch, images, exp: Experience, rows: list[int], den) -> dict[str, float]:
        """Forward + backward of one micro batch (possibly a dummy one); returns its metric shares."""
        algo = self.config.algo
        sel = rb.select(rows)
        lp, ent, v = self.zero.forward(**self._inputs(sel, images).forward_kwargs(), use_adapter=True,
                                       with_entropy=True, with_values=algo.needs_values)
        anchor = 0.0 * (lp.sum() + ent.sum() + (v.sum() if v is not None else 0.0))
        stats: dict[str, float] = {}
        loss = anchor
        if rows:
            r, t = len(rows), sel.input_ids.shape[1]
            e = exp.select(torch.as_tensor(rows), t)
            loss_r, stats = micro_loss(lp[:r, :t], ent[:r, :t], v[:r, :t] if v is not None else None, sel, e, den,
                                       algo, self.world_size)
            loss = loss + loss_r
        self.zero.backward(loss)
        return stats

    def _reduce_means(self, sums: dict[str, float], n_steps: int) -> dict[str, float]:
        """Sum per-rank metric shares over ranks, then average over the optimizer steps."""
        keys = sorted(self._metric_keys())
        vec = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64)
        vec = self.zero.all_reduce_sum(vec) / max(n_steps, 1)
        return {k: float(x) for k, x in zip(keys, vec.tolist())}

    def _metric_keys(self) -> set[str]:
        algo = self.config.algo
        keys = {"loss/policy", "loss/total", "policy/entropy", "policy/clip_frac", "policy/dual_clip_frac",
                "policy/approx_kl"}
        if algo.kl_coef > 0 and algo.kl_in == "loss":
            keys.add("loss/kl")
        if algo.needs_values:
            keys |= {"loss/value", "value/clip_frac"}
        return keys

    # ---- SFT -----------------------------------------------------------------------------------

    def sft_step(self, examples: Sequence[SFTExample]) -> dict[str, float]:
        """One optimizer step of token-mean NLL on the assistant tokens of ``examples`` (all ranks
        pass the same examples; each takes its rows)."""
        t0 = time.perf_counter()
        batch = tokenize_examples(examples, self.tokenizer, self.pad_id, self.config.sft.max_length,
                                  self._image_token_count if self.encoder is not None else None)
        total = max(float(batch.loss_mask.sum()), 1.0)
        nll = 0.0
        self.zero.train(True)
        for rows in self._micro_slots(range(batch.num_rows)):
            nll += self._sft_micro(batch, rows, total)
        sft_lr = self.config.sft.lr
        norm = self.zero.step_off_schedule(sft_lr / self.config.optim.lr if sft_lr else 1.0)
        self.sft_steps += 1
        self._forget_images()
        nll = float(self.zero.all_reduce_sum(torch.tensor([nll], dtype=torch.float64))[0])
        return {"sft/loss": nll, "sft/tokens": total, "optim/grad_norm": norm, "optim/lr": self.config.sft.lr or self.zero.lr(),
                "time/step": time.perf_counter() - t0, "learner/sft_step": float(self.sft_steps)}

    def _sft_micro(self, batch: SFTBatch, rows: list[int], total: float) -> float:
        sel = batch.select(rows)
        lp, _, v = self.zero.forward(**self._inputs(sel, batch.images).forward_kwargs(), use_adapter=True,
                                     with_values=self.zero.module.value_head is not None)
        loss = 0.0 * (lp.sum() + (v.sum() if v is not None else 0.0))
        share = 0.0
        if rows:
            r, t = len(rows), sel.input_ids.shape[1]
            s, _ = sft_loss_sums(lp[:r, :t], sel.loss_mask)
            loss = loss + s / total * self.world_size
            share = s.item() / total
        self.zero.backward(loss)
        return share

    def _forget_images(self) -> None:
        """Drop the per-batch image cache (images are cached by hash only within one call)."""
        if self.encoder is not None:
            self.encoder.clear()

    def _image_token_count(self, data: bytes) -> int:
        _, grid = self.encoder.encode(hashlib.sha256(data).hexdigest(), data)
        return self.encoder.num_tokens(grid)

    # ---- adapters and checkpoints --------------------------------------------------------------

    def adapter_files(self, version: int) -> dict[str, bytes] | None:
        """PEFT files + manifest of the current adapter as bytes on rank 0, None on the other ranks
        (every rank must call: under ZeRO-3 all of them take part in the gather; only rank 0
        serialises, so only one copy of the bytes ever leaves the group)."""
        state = self.zero.lora_state_dict()
        if self.rank != 0:
            return None
        peft_cfg = self.zero.module.peft_model.peft_config["default"]
        return adapter_files(state, peft_cfg, role=self.config.role, version=version,
                             base_model_id=self.base_model_id, step=self.step)

    def export_adapter(self, out_dir: str | Path, version: int) -> ExportedAdapter | None:
        """Write the adapter atomically to ``out_dir``; rank 0 writes and returns what it wrote, the
        other ranks return None once it is written (every rank must call)."""
        files = self.adapter_files(version)
        result = write_adapter(files, out_dir) if self.rank == 0 else None
        self.zero.barrier()
        return result

    def value_head_state(self) -> dict[str, torch.Tensor]:
        """Full value-head weights (empty without one); every rank must call."""
        return self.zero.value_head_state()

    def save_checkpoint(self, directory: str | Path) -> str:
        """Save everything needed to resume (every rank must call); returns the directory."""
        state = {"step": self.step, "sft_steps": self.sft_steps, "reward_stats": self.reward_stats.state_dict(),
                 "config": self.config.model_dump(mode="json")}
        return checkpoint.save(self.zero, directory, state, self.rank)

    def load_checkpoint(self, directory: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` with the same world size."""
        state = checkpoint.load(self.zero, directory, self.rank, self.config.model_dump(mode="json"))
        self.step, self.sft_steps = int(state["step"]), int(state["sft_steps"])
        self.reward_stats = RunningMeanStd.from_state_dict(state["reward_stats"])
