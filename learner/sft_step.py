"""One supervised step of a :class:`learner.rank.LearnerRank` (collective): token-mean NLL on the
assistant tokens of a list of :class:`learner.sft.SFTExample` (every rank passes the same examples;
each takes its rows), one optimizer step off the RL schedule (``sft.lr`` when set). A step whose
loss or gradient norm is not finite on some rank is skipped and counted, as an RL step is
(:func:`learner.update.optimizer_step`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Sequence

import torch

from learner.metrics import SFTMetrics
from learner.sft import SFTBatch, SFTExample, sft_loss_sums, tokenize_examples
from learner.update import optimizer_step, poison_if_nonfinite

if TYPE_CHECKING:
    from learner.rank import LearnerRank

__all__ = ["sft_step"]


def sft_step(r: LearnerRank, examples: Sequence[SFTExample]) -> SFTMetrics:
    """One optimizer step of token-mean NLL on the assistant tokens of ``examples``."""
    t0 = time.perf_counter()
    batch = tokenize_examples(examples, r.tokenizer, r.pad_id, r.config.sft.max_length,
                              r.image_token_count if r.encoder is not None else None)
    total = max(float(batch.loss_mask.sum()), 1.0)
    nll, finite = 0.0, True
    r.zero.train(True)
    for rows in r.micro_slots(range(batch.num_rows)):
        share, ok = _sft_micro(r, batch, rows, total)
        nll, finite = nll + share, finite and ok
    sft_lr = r.config.sft.lr
    scale = sft_lr / r.config.optim.lr if sft_lr else 1.0
    norm, applied = optimizer_step(r, finite, lambda: r.zero.step_off_schedule(scale))
    r.sft_steps += 1
    r.skipped_steps += not applied
    r.forget_images()
    nll = float(r.zero.all_reduce_sum(torch.tensor([nll], dtype=torch.float64))[0])
    return SFTMetrics(loss=nll, tokens=total, grad_norm=norm, lr=r.config.sft.lr or r.zero.lr(),
                      step_seconds=time.perf_counter() - t0, sft_step=float(r.sft_steps),
                      skipped=0.0 if applied else 1.0)


def _sft_micro(r: LearnerRank, batch: SFTBatch, rows: list[int], total: float) -> tuple[float, bool]:
    """Forward + backward of one micro batch of NLL (a dummy one when ``rows`` is empty); (its
    share, whether its loss was finite)."""
    sel = batch.select(rows)
    lp, _, v = r.zero.forward(**r.inputs(sel, batch.images).forward_kwargs(), use_adapter=True,
                              with_values=r.zero.module.value_head is not None)
    loss = 0.0 * (lp.sum() + (v.sum() if v is not None else 0.0))
    share = 0.0
    if rows:
        n, t = len(rows), sel.input_ids.shape[1]
        s, _ = sft_loss_sums(lp[:n, :t], sel.loss_mask)
        loss = loss + s / total * r.world_size
        share = s.item() / total
    loss, finite = poison_if_nonfinite(loss, lp, v)
    r.zero.backward(loss)
    return share, finite
