"""Reasoner/Observer dialogues (IMMO, "Inner Monologue Multi-Modal Optimization", arXiv 2308.09970).

Two roles, each with its own engine (possibly the same engine object with two adapters, or two
engines with different base models and tokenizers) and its own ChatML context in token space:

- the **Observer** (a VLM) sees the image, captions it, then answers the Reasoner's questions;
- the **Reasoner** (a text LM) never sees the image: it reads the caption, asks up to K questions
  and gives the final answer in the configured answer format (it may answer early, which ends the
  dialogue).

Flow for each dialogue (IMMO section 3): Observer caption -> K x (Reasoner question -> Observer
answer) -> Reasoner final answer. After the K-th Observer answer the final-answer request
(``final_prompt``) is appended to that same user message.

Token-in/token-out holds within a role: a role's context is its previous prompt, its sampled ids
and the closing ids, then the next user message and the assistant header; sampled ids are never
re-tokenised. Text crossing to the other role is the decoded text of the turn (special-token
strings such as ``<|image_pad|>`` removed, so one role can never inject markup or image
placeholders into the other's context), encoded by the receiving role's tokenizer as a new user
message. The Observer's context keeps the whole conversation with the image once, in its first
message, so every Observer request carries that one image. A role that SAMPLES its engine's image
placeholder token would break its own next prompt (more placeholders than images: "image features
and image tokens do not match"), so such a dialogue ends there with finish reason "error".

Context budget: a role's next prompt must leave room in its engine's ``max_model_len``. Its length
is known exactly before the call (the context ids, plus the image tokens the engine expanded the
placeholder into on that role's first turn); a dialogue whose next prompt would not fit ends there
with finish reason "length" (verl's multi-turn rollout does the same), no answer and reward 0, and
the reason recorded. Truncating the context instead would break token-in/token-out.

Batching: each phase (caption, questions of round r, answers of round r, final answers) is ONE
engine call holding every live dialogue of that role; dialogues that answered early drop out.
Group sampling: G whole dialogues per task, every turn sampled with n=1 and its own seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from rollout.chat import ChatFormat
from rollout.engine.base import Engine, Request
from rollout.episode_arrow import EpisodeBatch
from rollout.kinds.base import Messages, RoleConfig, opening
from rollout.single_turn import (
    collect_images,
    derive_seed,
    encode_messages,
    episode_id,
    extract_answer,
    format_choices,
    group_id,
    make_turn,
    score,
    task_images,
    timed_generate,
)
from rollout.types import Episode, Reward, Task, Turn

if TYPE_CHECKING:
    from rollout.kinds.dialogue import DialogueConfig

_SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>")


def crossing_text(text: str) -> str:
    """Text handed from one role to the other: special-token strings removed, whitespace stripped."""
    return _SPECIAL.sub("", text).strip()


def observer_opening(cfg: DialogueConfig) -> Messages:
    """The Observer's first messages: its system prompt, the caption request (the image goes there)."""
    return opening(cfg.observer.system_prompt, cfg.caption_prompt)


def reasoner_opening(task: Task, cfg: DialogueConfig, caption: str) -> Messages:
    """The Reasoner's first messages for ``task`` given the Observer's ``caption``: its system prompt,
    the templated task (with the final-answer request at once when K = 0). The rollout and the SFT
    warm start (``DialogueConfig.sft_examples``) both build these messages here."""
    first = cfg.reasoner_template.format(question=task.question, choices=format_choices(task.choices),
                                         caption=caption)
    return opening(cfg.reasoner.system_prompt, _with_final(first, cfg) if cfg.max_questions == 0 else first)


@dataclass
class _Dialogue:
    """Mutable state of one dialogue while it runs (never leaves this module)."""

    task: Task
    k: int
    group: str
    ctx: dict[str, list[int]] = field(default_factory=lambda: {"observer": [], "reasoner": []})
    """Each role's messages so far (closed), without the assistant header."""
    turns: list[Turn] = field(default_factory=list)
    answer: str | None = None
    questions: int = 0
    error: str = ""
    """Why the dialogue was cut short by an error, empty if it was not."""
    full: str = ""
    """Why the dialogue ended for lack of context room, empty if it did not."""
    expanded: dict[str, int] = field(default_factory=dict)
    """Role -> tokens the engine added to that role's prompts by expanding image placeholders
    (learned from its first completion; the same for every later turn of the dialogue)."""

    @property
    def live(self) -> bool:
        return self.answer is None and not self.error and not self.full


class _Side:
    """One role: its engine, ChatML encoder and settings; runs one batched turn for many dialogues."""

    def __init__(self, role: str, engine: Engine, cfg: RoleConfig, images: bool) -> None:
        self.role, self.engine, self.cfg, self.images = role, engine, cfg, images
        self.chat = ChatFormat(engine.tokenizer)

    def open(self, d: _Dialogue, messages: Messages, num_images: int = 0) -> None:
        """Start this role's context with its first ``messages`` (images in the first user message)."""
        d.ctx[self.role] = encode_messages(self.chat, messages, num_images)

    def add_user(self, d: _Dialogue, text: str) -> None:
        """Append a user message to this role's context."""
        d.ctx[self.role] += self.chat.message("user", text)

    def turn(self, dialogues: Sequence[_Dialogue], seed: int, step: int) -> list[tuple[_Dialogue, str]]:
        """One engine call for those of ``dialogues`` whose next prompt fits the engine (the others
        end, see the module docstring): record each turn, extend each context with the sampled ids
        and the closing ids; return (dialogue, crossing text) for every dialogue that took its turn."""
        running = [(d, req) for d in dialogues if self._fits(d, req := self._request(d, seed, step))]
        results, wall = timed_generate(self.engine, [req for _, req in running])
        out = []
        for (d, req), [c] in zip(running, results):
            d.turns.append(make_turn(self.role, c, self.cfg, req.images, wall))
            d.expanded.setdefault(self.role, len(c.prompt_ids) - len(req.prompt_ids))
            d.ctx[self.role] = list(req.prompt_ids) + list(c.output_ids) + self.chat.close_reply(c.output_ids)
            if self.engine.image_token_id is not None and self.engine.image_token_id in c.output_ids:
                d.error = f"the {self.role} sampled an image placeholder token"
            out.append((d, c.text))
        return out

    def _fits(self, d: _Dialogue, req: Request) -> bool:
        """True if the prompt leaves at least one token of room; else marks the dialogue full."""
        limit = self.engine.max_model_len
        length = len(req.prompt_ids) + d.expanded.get(self.role, 0)
        if limit is None or length < limit:
            return True
        d.full = f"context full: the {self.role}'s prompt has {length} tokens, max_model_len is {limit}"
        return False

    def _request(self, d: _Dialogue, seed: int, step: int) -> Request:
        s = derive_seed(seed, step, d.task.task_id, d.k, len(d.turns))
        images = task_images(d.task) if self.images else ()
        prompt = tuple(d.ctx[self.role] + self.chat.generation_prompt())
        return Request(prompt, images, self.cfg.adapter, self.cfg.sampling.to_sampling(1, s))


def run_dialogues(reasoner: Engine, observer: Engine, tasks: Sequence[Task], cfg: DialogueConfig,
                  group_size: int, *, reward: Reward | None = None, step: int = 0,
                  seed: int = 0) -> EpisodeBatch:
    """G Reasoner/Observer dialogues per task, batched by phase (see the module docstring)."""
    obs = _Side("observer", observer, cfg.observer, images=True)
    rsn = _Side("reasoner", reasoner, cfg.reasoner, images=False)
    ds = [_Dialogue(t, k, group_id(t.task_id, step)) for t in tasks for k in range(group_size)]
    for d in ds:
        obs.open(d, observer_opening(cfg), len(task_images(d.task)))
    for d, caption in obs.turn(ds, seed, step):
        if d.live:
            rsn.open(d, reasoner_opening(d.task, cfg, crossing_text(caption)))
    for r in range(1, cfg.max_questions + 1):
        asking = _ask(rsn, obs, [d for d in ds if d.live], cfg, seed, step)
        for d, reply in obs.turn(asking, seed, step):
            if not d.live:
                continue
            relay = cfg.reply_template.format(answer=crossing_text(reply))
            rsn.add_user(d, _with_final(relay, cfg) if r == cfg.max_questions else relay)
    final = [d for d in ds if d.live]
    for d, text in rsn.turn(final, seed, step):
        d.answer = extract_answer(text, cfg.answer)
    episodes = tuple(score(d.task, _episode(d), reward, cfg.success_component) for d in ds)
    return EpisodeBatch(episodes, collect_images(tasks))


def _with_final(message: str, cfg: DialogueConfig) -> str:
    return f"{message}\n{cfg.final_prompt}"


def _ask(rsn: _Side, obs: _Side, live: list[_Dialogue], cfg: DialogueConfig, seed: int,
         step: int) -> list[_Dialogue]:
    """One Reasoner round: a reply in the answer format ends its dialogue, any other reply is a
    question relayed to the Observer. Returns the dialogues that asked."""
    asking = []
    for d, text in rsn.turn(live, seed, step):
        d.answer = extract_answer(text, cfg.answer)
        if d.live:
            d.questions += 1
            obs.add_user(d, cfg.question_template.format(question=crossing_text(text)))
            asking.append(d)
    return asking


def _episode(d: _Dialogue) -> Episode:
    """The finished dialogue as an Episode: "answered" if the answer parsed, "error" if it was cut
    short by an error, "length" if it ran out of context, else "max_turns"."""
    answered = d.answer is not None
    finish = "answered" if answered else "error" if d.error else "length" if d.full else "max_turns"
    reason = "" if answered else d.error or d.full or "no answer in the expected format"
    return Episode(
        episode_id=episode_id(d.group, d.k), group_id=d.group, task_id=d.task.task_id,
        turns=tuple(d.turns), finish_reason=finish, answer=d.answer or "", reward_reason=reason,
        metadata={"questions": str(d.questions)},
    )
