"""Episodes -> the padded token batch one learner trains on: one row per trainable turn of ONE role.

A row is ``prompt_ids + output_ids`` of one :class:`~rollout.types.Turn`, right-padded. Every
per-token array is aligned with ``input_ids`` (column t describes token t): ``loss_mask`` is 1 on
that turn's output tokens only -- prompts, image placeholders, other roles' text and environment
text are all part of the prompt and masked -- and ``rollout_logprobs[t]`` is the sampler's
``log pi_old(token t | tokens < t)``. Turns of other roles, and turns marked ``trainable=False``,
never become rows: training one role's batch cannot touch another role's tokens.

Episodes keep a second, episode-level view (:class:`EpisodeTable`, one row per episode of the
batch, even one where the role never spoke, so GRPO group statistics see every sample). Turn-level
advantages (RL4VLM: each turn is one step, its value read on the last prompt token) live on an
``(E, S)`` grid of episodes x the role's turns; :meth:`RoleBatch.to_steps` / :meth:`RoleBatch.from_steps`
move per-row scalars onto that grid and back.

Shapes are documented per field and checked on construction (OpenRLHF ``experience.py`` style).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from rollout.types import Episode, Turn

__all__ = ["EpisodeTable", "RoleBatch", "build_bootstrap_batch", "build_role_batch", "take_rows"]


@dataclass(frozen=True)
class EpisodeTable:
    """Episode-level view of a batch for one role; E = number of episodes."""

    group_ids: tuple[str, ...]
    """(E,) GRPO group of each episode (the G samples of one task share it)."""
    rewards: torch.Tensor
    """(E,) float32 ``Episode.reward``: the outcome the estimators see."""
    num_steps: torch.Tensor
    """(E,) int64 number of this role's trainable turns in each episode (may be 0)."""

    def __post_init__(self) -> None:
        E = len(self.group_ids)
        for name in ("rewards", "num_steps"):
            if tuple(getattr(self, name).shape) != (E,):
                raise ValueError(f"EpisodeTable.{name}: shape {tuple(getattr(self, name).shape)} != ({E},)")

    @property
    def num_episodes(self) -> int:
        return len(self.group_ids)

    @property
    def max_steps(self) -> int:
        """S: width of the (E, S) step grid (at least 1)."""
        return max(1, int(self.num_steps.max())) if self.num_episodes else 1

    def step_mask(self) -> torch.Tensor:
        """(E, S) bool: step s of episode e exists."""
        return torch.arange(self.max_steps)[None, :] < self.num_steps[:, None]


_TOKEN_FIELDS = ("input_ids", "attention_mask", "loss_mask", "rollout_logprobs", "cot_mask", "action_mask")
_ROW_FIELDS = ("prompt_lens", "output_lens", "step_rewards", "episode_index", "step_index")


@dataclass(frozen=True)
class RoleBatch:
    """Padded rows of one role's trainable turns; B rows, T = longest ``prompt + output``."""

    role: str
    """The role every row belongs to."""
    input_ids: torch.Tensor
    """(B, T) int64 ``prompt_ids + output_ids``, right-padded with the pad id."""
    attention_mask: torch.Tensor
    """(B, T) bool, True on real tokens."""
    loss_mask: torch.Tensor
    """(B, T) bool, True on the turn's output tokens (positions ``prompt_len .. prompt_len + out_len - 1``)."""
    rollout_logprobs: torch.Tensor
    """(B, T) float32 sampler log-prob of token t at output positions, 0 elsewhere."""
    cot_mask: torch.Tensor
    """(B, T) bool chain-of-thought tokens (RL4VLM scales their log-prob by lambda); subset of loss_mask."""
    action_mask: torch.Tensor
    """(B, T) bool action tokens; the whole output when the turn has neither span; subset of loss_mask."""
    prompt_lens: torch.Tensor
    """(B,) int64 T_in; the value of a turn is read at position ``prompt_len - 1`` (last prompt token)."""
    output_lens: torch.Tensor
    """(B,) int64 T_out."""
    step_rewards: torch.Tensor
    """(B,) float32 ``Turn.reward`` credited to this step (plus rewards of following non-role turns)."""
    episode_index: torch.Tensor
    """(B,) int64 row of the episode in :attr:`episodes`."""
    step_index: torch.Tensor
    """(B,) int64 position of this turn among the role's trainable turns of its episode."""
    image_hashes: tuple[tuple[str, ...], ...]
    """(B,) content hashes of the images in each row's prompt, in prompt order."""
    episodes: EpisodeTable
    """Episode-level view (shared by every selection of rows)."""

    def __post_init__(self) -> None:
        B, T = self.input_ids.shape
        for name in _TOKEN_FIELDS:
            if tuple(getattr(self, name).shape) != (B, T):
                raise ValueError(f"RoleBatch.{name}: shape {tuple(getattr(self, name).shape)} != ({B}, {T})")
        for name in _ROW_FIELDS:
            if tuple(getattr(self, name).shape) != (B,):
                raise ValueError(f"RoleBatch.{name}: shape {tuple(getattr(self, name).shape)} != ({B},)")
        if len(self.image_hashes) != B:
            raise ValueError(f"RoleBatch.image_hashes: {len(self.image_hashes)} entries != {B} rows")
        if bool((self.loss_mask & ~self.attention_mask).any()):
            raise ValueError("RoleBatch.loss_mask: set on padding")
        if bool(((self.cot_mask | self.action_mask) & ~self.loss_mask).any()):
            raise ValueError("RoleBatch.cot_mask/action_mask: must lie inside loss_mask")
        if B and int(self.episode_index.max()) >= self.episodes.num_episodes:
            raise ValueError("RoleBatch.episode_index: points past the episode table")

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_output_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def select(self, rows: Sequence[int]) -> RoleBatch:
        """The given rows (in that order), columns trimmed to their longest sequence."""
        idx = torch.as_tensor(list(rows), dtype=torch.int64)
        T = int((self.prompt_lens[idx] + self.output_lens[idx]).max()) if len(idx) else 1
        fields = {n: take_rows(getattr(self, n), idx, T) for n in _TOKEN_FIELDS}
        fields |= {n: getattr(self, n)[idx] for n in _ROW_FIELDS}
        hashes = tuple(self.image_hashes[i] for i in idx.tolist())
        return RoleBatch(self.role, **fields, image_hashes=hashes, episodes=self.episodes)

    def to_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row scalars (B,) -> the (E, S) step grid (0 where no row)."""
        out = torch.zeros(self.episodes.num_episodes, self.episodes.max_steps, dtype=x.dtype)
        out[self.episode_index, self.step_index] = x
        return out

    def from_steps(self, grid: torch.Tensor) -> torch.Tensor:
        """The (E, S) step grid -> per-row scalars (B,)."""
        return grid[self.episode_index, self.step_index]

    def row_groups(self) -> tuple[str, ...]:
        """(B,) group id of each row's episode."""
        return tuple(self.episodes.group_ids[i] for i in self.episode_index.tolist())


def take_rows(x: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """``x[rows, :width]`` for (B, T, ...) tensors."""
    return x[rows][:, :width]


@dataclass(frozen=True)
class _Row:
    turn: Turn
    episode: int
    step: int
    reward: float


def _role_rows(e: Episode, ei: int, role: str) -> list[_Row]:
    """This role's trainable turns of one episode, each credited with its reward and the rewards of
    the turns after it up to the role's next trainable turn (what followed the action)."""
    rows: list[_Row] = []
    for t in e.turns:
        if t.role == role and t.trainable:
            rows.append(_Row(t, ei, len(rows), 0.0))
        if rows:
            last = rows[-1]
            rows[-1] = _Row(last.turn, ei, last.step, last.reward + t.reward)
    return rows


def _span_mask(T: int, offset: int, start: int, end: int) -> torch.Tensor:
    m = torch.zeros(T, dtype=torch.bool)
    m[offset + start: offset + end] = True
    return m


def _row_tensors(t: Turn, T: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Token-aligned arrays of one row (length T)."""
    p, o = len(t.prompt_ids), len(t.output_ids)
    ids = torch.full((T,), pad_id, dtype=torch.int64)
    ids[: p + o] = torch.as_tensor(t.prompt_ids + t.output_ids, dtype=torch.int64)
    lp = torch.zeros(T, dtype=torch.float32)
    lp[p: p + o] = torch.as_tensor(t.output_logprobs, dtype=torch.float32)
    out_mask = _span_mask(T, p, 0, o)
    cot = _span_mask(T, p, t.cot_span.start, t.cot_span.end) if t.cot_span else torch.zeros(T, dtype=torch.bool)
    if t.action_span is not None:
        act = _span_mask(T, p, t.action_span.start, t.action_span.end)
    else:
        act = out_mask.clone() if t.cot_span is None else torch.zeros(T, dtype=torch.bool)
    return {"input_ids": ids, "attention_mask": _span_mask(T, 0, 0, p + o), "loss_mask": out_mask,
            "rollout_logprobs": lp, "cot_mask": cot, "action_mask": act}


def build_role_batch(episodes: Sequence[Episode], role: str, pad_id: int) -> RoleBatch:
    """One :class:`RoleBatch` of ``role``'s trainable turns over ``episodes`` (in episode, then turn
    order). Every episode gets a row in the episode table, whether or not the role spoke in it."""
    rows = [r for ei, e in enumerate(episodes) for r in _role_rows(e, ei, role)]
    T = max((r.turn.num_tokens for r in rows), default=1)
    per_row = [_row_tensors(r.turn, T, pad_id) for r in rows]
    tokens = {n: (torch.stack([pr[n] for pr in per_row]) if rows else _empty(n, T)) for n in _TOKEN_FIELDS}
    table = EpisodeTable(
        group_ids=tuple(e.group_id for e in episodes),
        rewards=torch.tensor([e.reward for e in episodes], dtype=torch.float32),
        num_steps=torch.tensor([sum(1 for r in rows if r.episode == i) for i in range(len(episodes))],
                               dtype=torch.int64),
    )
    return RoleBatch(
        role=role,
        **tokens,
        prompt_lens=torch.tensor([len(r.turn.prompt_ids) for r in rows], dtype=torch.int64),
        output_lens=torch.tensor([len(r.turn.output_ids) for r in rows], dtype=torch.int64),
        step_rewards=torch.tensor([r.reward for r in rows], dtype=torch.float32),
        episode_index=torch.tensor([r.episode for r in rows], dtype=torch.int64),
        step_index=torch.tensor([r.step for r in rows], dtype=torch.int64),
        image_hashes=tuple(r.turn.image_hashes for r in rows),
        episodes=table,
    )


def build_bootstrap_batch(episodes: Sequence[Episode], role: str, pad_id: int) -> tuple[RoleBatch, list[int]] | None:
    """(one prompt-only row per episode whose ``bootstrap`` state belongs to ``role``, those episodes'
    indices), or None if there is none: the critic reads V(s_T) of truncated episodes on these rows
    (last prompt token, as for every step)."""
    index = [i for i, e in enumerate(episodes) if e.bootstrap is not None and e.bootstrap.role == role]
    if not index:
        return None
    states = [Episode(episodes[i].episode_id, episodes[i].group_id, episodes[i].task_id,
                      (replace(episodes[i].bootstrap, trainable=True),)) for i in index]
    return build_role_batch(states, role, pad_id), index


def _empty(name: str, T: int) -> torch.Tensor:
    dtype = {"input_ids": torch.int64, "rollout_logprobs": torch.float32}.get(name, torch.bool)
    return torch.zeros((0, T), dtype=dtype)
