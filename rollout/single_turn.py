"""Group sampling of single replies, and the helpers every rollout kind shares.

For a batch of tasks, :func:`sample_groups` sends ONE engine call holding one request per task with
``n = G`` (the engine shares the prompt's prefill across the G samples, as vLLM's ``n`` does), and
turns the G completions of each task into G :class:`~rollout.types.Episode` records sharing a
``group_id`` (the GRPO group; DeepSeekMath, Shao et al. 2024, eq. 3). Each episode has one
``"policy"`` turn carrying the prompt as the engine saw it (image placeholders expanded), the
sampled ids and log-probs, the adapter version and the latency; its answer is extracted with the
configured :class:`~rollout.config.AnswerFormat` and the reward plugin is applied to it.

Ids are deterministic: ``group_id = "{task_id}@{step}"``, ``episode_id = "{group_id}#{k}"``, and
sampling seeds derive from (base seed, step, task id, sample index, turn), so a rollout can be
replayed and two steps never share an id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import TYPE_CHECKING, Sequence

from rollout.chat import ChatFormat
from rollout.engine.base import Completion, Engine, Request
from rollout.episode_arrow import EpisodeBatch, image_hash
from rollout.guard import call_reward, mark
from rollout.kinds.base import AnswerFormat, Messages, RoleConfig, opening
from rollout.types import Episode, Reward, Task, Turn

if TYPE_CHECKING:
    from rollout.kinds.single_turn import SingleTurnConfig

# ----------------------------------------------------------------------------- shared helpers


def group_id(task_id: str, step: int) -> str:
    """Id of the group of G samples drawn for ``task_id`` at rollout ``step``."""
    return f"{task_id}@{step}"


def episode_id(group: str, k: int) -> str:
    """Id of the ``k``-th sample of ``group``."""
    return f"{group}#{k}"


def derive_seed(*parts: object) -> int:
    """A 31-bit engine seed from ``parts`` (stable across processes, unlike ``hash()``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def format_choices(choices: Sequence[str]) -> str:
    """``"\\nOptions: (A) x (B) y"`` (ScienceQA/IMMO style), or "" without choices."""
    if not choices:
        return ""
    return "\nOptions: " + " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))


def extract_answer(text: str, fmt: AnswerFormat) -> str | None:
    """The answer in ``text``: the first group of the LAST match of ``fmt.pattern``, stripped;
    the whole stripped text when there is no pattern; None when the pattern does not match."""
    regex = fmt.regex()
    if regex is None:
        return text.strip()
    matches = list(regex.finditer(text))
    return matches[-1].group(1).strip() if matches else None


def task_images(task: Task) -> tuple[bytes, ...]:
    return (task.image,) if task.image is not None else ()


def make_turn(role: str, c: Completion, cfg: RoleConfig, images: Sequence[bytes], wall_s: float,
              **extra: object) -> Turn:
    """The :class:`Turn` of completion ``c``; latency is the engine's per-sample figure when it
    reports one, else the wall time of the batched call that produced it."""
    return Turn(role=role, prompt_ids=c.prompt_ids, output_ids=c.output_ids, output_logprobs=c.logprobs,
                adapter_version=c.adapter_version, text=c.text,
                image_hashes=tuple(image_hash(b) for b in images), trainable=cfg.trainable,
                finish_reason=c.finish_reason, latency_s=c.latency_s or wall_s, **extra)


def timed_generate(engine: Engine, requests: Sequence[Request]) -> tuple[list[list[Completion]], float]:
    """``engine.generate(requests)`` and its wall time in seconds (no call for no requests)."""
    if not requests:
        return [], 0.0
    t0 = time.perf_counter()
    out = engine.generate(requests)
    return out, time.perf_counter() - t0


def score(task: Task, episode: Episode, reward: Reward | None, success_component: str | None) -> Episode:
    """``episode`` with the reward's score, components and reason applied, and ``success`` set from
    ``success_component`` (>= 1 means success) when it is given and the reward reports it. A reason
    the rollout already recorded (no parsable answer, a cut-short dialogue) is the root cause and
    is kept over the reward's, except that a reward that raised (:func:`rollout.guard.call_reward`:
    score 0, the episode marked) puts its own reason first."""
    if reward is None:
        return episode
    result = call_reward(reward, task, episode)
    success = episode.success
    if success_component is not None and success_component in result.components:
        success = result.components[success_component] >= 1.0
    reason = result.reason if result.faults else episode.reward_reason or result.reason
    scored = dataclasses.replace(episode, reward=result.score, reward_components=dict(result.components),
                                 reward_reason=reason, success=success)
    return mark(scored, result.faults)


def collect_images(tasks: Sequence[Task]) -> dict[str, bytes]:
    """hash -> bytes of every task image (each stored once)."""
    return {image_hash(t.image): t.image for t in tasks if t.image is not None}


# ----------------------------------------------------------------------------- single turn


def encode_messages(chat: ChatFormat, messages: Messages, num_images: int = 0) -> list[int]:
    """ChatML ids of ``messages``, the ``num_images`` image placeholders in the first user message."""
    ids: list[int] = []
    for role, text in messages:
        ids += chat.message(role, text, num_images if role == "user" else 0)
        num_images = 0 if role == "user" else num_images
    return ids


def prompt_messages(task: Task, cfg: SingleTurnConfig) -> Messages:
    """The policy's messages for ``task``: its system prompt, then the templated user message (the
    rollout's prompt and the SFT warm start's transcript both start with exactly these)."""
    user = cfg.prompt_template.format(question=task.question, choices=format_choices(task.choices))
    return opening(cfg.policy.system_prompt, user)


def build_prompt(chat: ChatFormat, task: Task, cfg: SingleTurnConfig) -> list[int]:
    """:func:`prompt_messages` (with the task's image), then the assistant header."""
    return encode_messages(chat, prompt_messages(task, cfg), len(task_images(task))) + chat.generation_prompt()


def sample_groups(engine: Engine, tasks: Sequence[Task], cfg: SingleTurnConfig, group_size: int, *,
                  reward: Reward | None = None, step: int = 0, seed: int = 0) -> EpisodeBatch:
    """G single-reply episodes per task from one batched engine call (see the module docstring)."""
    chat = ChatFormat(engine.tokenizer)
    requests = [
        Request(tuple(build_prompt(chat, t, cfg)), task_images(t), cfg.policy.adapter,
                cfg.policy.sampling.to_sampling(group_size, derive_seed(seed, step, t.task_id)))
        for t in tasks
    ]
    results, wall = timed_generate(engine, requests)
    episodes = [
        score(task, _episode(task, k, c, cfg, wall, step), reward, cfg.success_component)
        for task, group in zip(tasks, results) for k, c in enumerate(group)
    ]
    return EpisodeBatch(tuple(episodes), collect_images(tasks))


def _episode(task: Task, k: int, c: Completion, cfg: SingleTurnConfig, wall: float, step: int) -> Episode:
    turn = make_turn("policy", c, cfg.policy, task_images(task), wall)
    answer = extract_answer(c.text, cfg.answer)
    gid = group_id(task.task_id, step)
    return Episode(episode_id=episode_id(gid, k), group_id=gid, task_id=task.task_id, turns=(turn,),
                   finish_reason=c.finish_reason, answer=answer or "",
                   reward_reason="" if answer is not None else "no answer in the expected format")
