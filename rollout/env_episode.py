"""Multi-step environment episodes (RL4VLM, Zhai et al., NeurIPS 2024) on the gym_cards envs.

G episodes per environment seed (all G start from the same state: one GRPO group). Each step, for
every live episode: render the observation to PNG, write the env package's prompt for the current
state, and make ONE batched engine call for all live episodes; then parse each reply's action
(``rollout.envs.step_with_text``: an invalid reply plays a random action or takes a penalty, as
configured), step the env and record the step reward on the turn. An episode ends when the env
terminates or truncates (the env enforces ``max_steps``); a truncated one keeps its final state as
``Episode.bootstrap`` (the next step's prompt, no output) so that the critic can bootstrap GAE
from V(s_T) instead of treating the time limit as the end of the task.

As in RL4VLM, every step is a FRESH single-turn prompt holding only the current image (no history
of earlier steps), so each turn's ``prompt_ids`` is self-contained.

Episode reward = undiscounted return (sum of step rewards), unless a reward plugin is given;
success = return > 0 (the paper's criterion). An environment that raises in ``reset`` or ``step``
ends that episode only (finish reason "error", reward 0, reason ``"env 'x' raised ..."``, marked as
a plugin failure by :mod:`rollout.guard`); the other episodes of the batch go on. Each turn's ``cot_span``/``action_span`` are TOKEN
spans of ``output_ids`` (see :func:`reply_token_spans`), for the lambda-scaled CoT log-prob.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from PIL import Image

from rollout.chat import ChatFormat, expand_image_pads
from rollout.engine.base import Completion, Engine, Request
from rollout.envs import (
    CardsEnv,
    InvalidActionPolicy,
    build_prompt,
    find_reply_spans,
    make_env,
    step_with_text,
)
from rollout.envs.spans import CharSpan
from rollout.episode_arrow import EpisodeBatch, image_hash
from rollout.single_turn import derive_seed, episode_id, group_id, make_turn, score, timed_generate
from rollout.guard import fault_of, mark
from rollout.types import Episode, PluginFault, Reward, Span, Task, Turn

if TYPE_CHECKING:
    from rollout.kinds.env import EnvEpisodeConfig


def encode_png(observation: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 observation (deterministic for equal pixels)."""
    buf = io.BytesIO()
    Image.fromarray(observation).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- char -> token spans


def _prefix_len(tokenizer: Any, ids: Sequence[int], i: int) -> int:
    """Characters decoded from ``ids[:i]`` (a token cut mid-character decodes to U+FFFD)."""
    return len(tokenizer.decode(list(ids[:i]), skip_special_tokens=True))


def _complete_len(tokenizer: Any, ids: Sequence[int], i: int, full: str) -> int:
    """Characters of ``full`` that ``ids[:i]`` decodes completely (a trailing partial character,
    decoded as U+FFFD, does not count)."""
    return len(os.path.commonprefix([tokenizer.decode(list(ids[:i]), skip_special_tokens=True), full]))


def _bisect(lo: int, hi: int, pred: Callable[[int], bool]) -> int:
    """Smallest i in [lo, hi] with ``pred(i)`` for a monotone ``pred`` (hi if none)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def token_start(tokenizer: Any, ids: Sequence[int], char: int) -> int:
    """Index of the first token holding (a byte of) character ``char`` of the decoded text: the
    largest i with ``len(decode(ids[:i])) <= char``. Binary search over prefix decodes: O(log T)
    decodes, valid for tokenizers whose prefix decodes are prefixes of the full decode up to a
    trailing partial character (byte-level BPE, SentencePiece, character tokenizers)."""
    return _bisect(0, len(ids), lambda i: _prefix_len(tokenizer, ids, i + 1) > char)


def token_end(tokenizer: Any, ids: Sequence[int], char: int) -> int:
    """The smallest j such that ``ids[:j]`` decodes characters ``[:char]`` completely."""
    full = tokenizer.decode(list(ids), skip_special_tokens=True)
    return _bisect(0, len(ids), lambda j: _complete_len(tokenizer, ids, j, full) >= char)


def token_span(tokenizer: Any, ids: Sequence[int], span: CharSpan) -> Span:
    """Smallest token range whose decode covers character range ``span``; it decodes to exactly
    the characters when both ends fall on token boundaries (always for a character tokenizer)."""
    start = token_start(tokenizer, ids, span.start)
    return Span(start, max(start, token_end(tokenizer, ids, span.end)))


def reply_token_spans(tokenizer: Any, ids: Sequence[int], mode: str) -> tuple[Span | None, Span | None]:
    """(cot_span, action_span) of a reply's ``ids``; (None, None) without an "action" key.

    "rl4vlm": CoT = every token before the one holding the "action" key's opening quote, action =
    that token to the end of ``ids`` (stop token included), as RL4VLM's code splits the reply.
    "values": the tokens covering the "thoughts" value and the "action" value only.
    """
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    spans = find_reply_spans(text)
    if spans.action_key is None:
        return None, None
    if mode == "rl4vlm":
        split = token_start(tokenizer, ids, spans.action_key)
        return Span(0, split), Span(split, len(ids))
    thoughts = None if spans.thoughts is None else token_span(tokenizer, ids, spans.thoughts)
    action = None if spans.action is None else token_span(tokenizer, ids, spans.action)
    return thoughts, action


# ----------------------------------------------------------------------------- episodes


@dataclass
class _Run:
    """Mutable state of one running episode (never leaves this module)."""

    env: CardsEnv
    env_seed: int
    k: int
    group: str
    rng: np.random.Generator
    observation: np.ndarray
    info: dict[str, Any]
    turns: list[Turn] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    """Action string played at each step ("?" for an invalid reply in penalty mode)."""
    invalid: int = 0
    """Replies the parser rejected."""
    finish: str = ""
    bootstrap: Turn | None = None
    """Set when the time limit truncates the episode: the final state's prompt (no output)."""
    fault: PluginFault | None = None
    """The environment raised in ``reset`` or ``step``: the episode ended there (finish "error")."""


def env_task_id(env: str, env_seed: int) -> str:
    """Task id of the episodes of ``env`` started from ``env_seed``."""
    return f"{env}:{env_seed}"


def run_env_episodes(engine: Engine, env_seeds: Sequence[int], cfg: EnvEpisodeConfig, group_size: int,
                     *, reward: Reward | None = None, step: int = 0, seed: int = 0) -> EpisodeBatch:
    """G episodes per env seed, one batched engine call per environment step (module docstring)."""
    runs = [_start(cfg, s, k, step, seed) for s in env_seeds for k in range(group_size)]
    chat = ChatFormat(engine.tokenizer)
    images: dict[str, bytes] = {}
    while live := [r for r in runs if not r.finish]:
        pngs = [encode_png(r.observation) for r in live]
        images.update((image_hash(p), p) for p in pngs)
        requests = [_request(chat, r, png, cfg, step, seed) for r, png in zip(live, pngs)]
        results, wall = timed_generate(engine, requests)
        for r, png, [c] in zip(live, pngs, results):
            _advance(r, engine, cfg, c, png, wall)
            if r.finish == "truncated":
                final = encode_png(r.observation)
                images[image_hash(final)] = final
                r.bootstrap = _bootstrap_turn(chat, r, cfg, c, final, engine.image_token_id)
    return EpisodeBatch(tuple(_episode(r, cfg, reward) for r in runs), images)


def _start(cfg: EnvEpisodeConfig, env_seed: int, k: int, step: int, seed: int) -> _Run:
    kwargs: dict[str, Any] = {"image_size": cfg.image_size}
    if cfg.max_steps is not None:
        kwargs["max_steps"] = cfg.max_steps
    env = make_env(cfg.env, **kwargs)
    rng = np.random.default_rng(derive_seed(seed, step, env_seed, k, "invalid-actions"))
    gid = group_id(env_task_id(cfg.env, env_seed), step)
    try:
        observation, info = env.reset(seed=env_seed)
    except Exception as err:  # noqa: BLE001 - an environment's bug costs this episode only
        return _Run(env, env_seed, k, gid, rng, np.zeros((1, 1, 3), np.uint8), {}, finish="error",
                    fault=fault_of("env", cfg.env, err))
    return _Run(env, env_seed, k, gid, rng, observation, info)


def _request(chat: ChatFormat, r: _Run, png: bytes, cfg: EnvEpisodeConfig, step: int, seed: int) -> Request:
    """A fresh prompt: system message, the env's task prompt for the current state, the image."""
    prompt = chat.prompt(cfg.policy.system_prompt, build_prompt(cfg.env, r.info, cfg.cot), num_images=1)
    s = derive_seed(seed, step, r.env_seed, r.k, len(r.turns))
    return Request(tuple(prompt), (png,), cfg.policy.adapter,
                   cfg.policy.sampling.to_sampling(1, s))


def _advance(r: _Run, engine: Engine, cfg: EnvEpisodeConfig, c: Completion, png: bytes,
             wall: float) -> None:
    """Parse and play one reply, record its turn (with step reward and token spans)."""
    policy = InvalidActionPolicy(cfg.invalid_action, cfg.invalid_penalty)
    cot, action = reply_token_spans(engine.tokenizer, c.output_ids, cfg.span_mode)
    try:
        ts = step_with_text(r.env, c.text, policy, r.rng)
    except Exception as err:  # noqa: BLE001 - an environment's bug costs this episode only
        r.turns.append(make_turn("policy", c, cfg.policy, [png], wall, cot_span=cot, action_span=action))
        r.finish, r.fault = "error", fault_of("env", cfg.env, err)
        return
    r.turns.append(make_turn("policy", c, cfg.policy, [png], wall, reward=ts.reward,
                             cot_span=cot, action_span=action))
    r.actions.append("?" if ts.executed is None else r.env.ACTIONS[ts.executed])
    r.invalid += not ts.parsed.valid
    r.observation, r.info = ts.observation, ts.info
    if ts.done:
        r.finish = "terminated" if ts.terminated else "truncated"


def _bootstrap_turn(chat: ChatFormat, r: _Run, cfg: EnvEpisodeConfig, last: Completion, png: bytes,
                    image_token_id: int | None) -> Turn:
    """The prompt the next step would have had (fresh prompt, final image), its image placeholder
    expanded as the engine expanded the last step's; no output, never trained."""
    prompt = chat.prompt(cfg.policy.system_prompt, build_prompt(cfg.env, r.info, cfg.cot), num_images=1)
    pads = sum(1 for t in last.prompt_ids if t == image_token_id) if image_token_id is not None else 1
    ids = tuple(expand_image_pads(prompt, image_token_id, pads))
    return Turn(role="policy", prompt_ids=ids, output_ids=(), output_logprobs=(),
                adapter_version=last.adapter_version, image_hashes=(image_hash(png),), trainable=False)


def _episode(r: _Run, cfg: EnvEpisodeConfig, reward: Reward | None) -> Episode:
    """Episode with reward = return (or the plugin's score) and success = return > 0; an episode
    whose environment raised: reward 0 with the fault's reason, marked (no reward plugin called)."""
    ret = math.fsum(t.reward for t in r.turns)
    task = Task(task_id=env_task_id(cfg.env, r.env_seed), question=cfg.env, answer="", source=cfg.env)
    if r.fault is not None:
        return mark(Episode(
            episode_id=episode_id(r.group, r.k), group_id=r.group, task_id=task.task_id,
            turns=tuple(r.turns), reward=0.0, reward_components={"env_return": 0.0}, finish_reason="error",
            success=False, reward_reason=r.fault.reason, metadata={"env": cfg.env, "env_seed": str(r.env_seed)},
        ), [r.fault])
    episode = Episode(
        episode_id=episode_id(r.group, r.k), group_id=r.group, task_id=task.task_id, turns=tuple(r.turns),
        reward=ret, reward_components={"env_return": ret}, finish_reason=r.finish, success=ret > 0,
        reward_reason="" if ret > 0 else "no positive return",
        metadata={"env": cfg.env, "env_seed": str(r.env_seed), "actions": " ".join(r.actions),
                  "invalid_replies": str(r.invalid)},
        bootstrap=r.bootstrap,
    )
    return score(task, episode, reward, None)
