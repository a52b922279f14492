"""Reward plugin interface: specs, one explicit registry and the helpers the built-in rewards share.

The protocol :class:`Reward` and its :class:`RewardResult` are defined in :mod:`rollout.types` and
re-exported here (``from rewards.base import Reward, RewardResult`` keeps working).

A reward is any object with a ``name`` and ``__call__(task, episode) -> RewardResult``. Rewards
grade model output, so **bad output (empty, unparseable, huge, garbage text) is a score with a
reason, never an exception**; a malformed *task* (e.g. a cryptogram without its coded message) is a
configuration error and raises ``ValueError``.

Built-in rewards register themselves with :func:`register_reward` when ``rewards`` is imported.
A user's own reward needs no registration: :func:`build_reward` also accepts a dotted path
``"package.module:ClassOrFactory"``, called with the spec's kwargs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# Reward and RewardResult are defined in rollout.types, beside the Episode/Task they grade (so the
# rollout side imports nothing from rewards/); re-exported here for plugins written against rewards.base.
from rollout.types import Episode, Reward, RewardResult, Task

DEFAULT_MAX_CHARS = 50_000
"""Outputs longer than this are scored 0 ("output too long") by the text rewards."""


@dataclass(frozen=True)
class RewardSpec:
    """Which reward to build: a registered ``name`` or a dotted path ``"pkg.mod:Factory"``.

    ``weight`` is used only when the spec is a term of a weighted composite.
    """

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    weight: float = 1.0


RewardFactory = Callable[..., Reward]
_REGISTRY: dict[str, RewardFactory] = {}


def register_reward(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Decorator: register a reward class/factory under ``name`` (unique)."""

    def deco(factory: RewardFactory) -> RewardFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"register_reward: {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def registered_rewards() -> tuple[str, ...]:
    """Names of all registered rewards, sorted."""
    return tuple(sorted(_REGISTRY))


def as_spec(spec: RewardSpec | Mapping[str, Any] | str) -> RewardSpec:
    """Coerce a spec given as a name, a mapping ``{name, kwargs?, weight?}`` or a RewardSpec."""
    if isinstance(spec, RewardSpec):
        return spec
    if isinstance(spec, str):
        return RewardSpec(name=spec)
    if isinstance(spec, Mapping) and "name" in spec:
        unknown = set(spec) - {"name", "kwargs", "weight"}
        if unknown:
            raise ValueError(f"reward spec: unknown keys {sorted(unknown)} in {dict(spec)}")
        return RewardSpec(spec["name"], dict(spec.get("kwargs", {})), float(spec.get("weight", 1.0)))
    raise ValueError(f"reward spec: expected a name, a RewardSpec or a mapping with 'name', got {spec!r}")


def _load_dotted(path: str) -> RewardFactory:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward spec: dotted path must look like 'package.module:Name', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward spec: cannot import module {module_name!r} ({e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward spec: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def reward_factory(name: str) -> RewardFactory:
    """The factory a spec's ``name`` refers to: a registered reward, or ``"pkg.mod:Factory"``
    imported now; an unknown name or a path that does not import raises ValueError."""
    if ":" in name:
        return _load_dotted(name)
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown reward {name!r}; known rewards: {', '.join(registered_rewards())} "
            "(or give a dotted path 'package.module:ClassOrFactory')"
        )
    return _REGISTRY[name]


def build_reward(spec: RewardSpec | Mapping[str, Any] | str) -> Reward:
    """Instantiate the reward a spec names (registered name or ``"pkg.mod:Factory"`` path)."""
    spec = as_spec(spec)
    reward = reward_factory(spec.name)(**spec.kwargs)
    if not isinstance(reward, Reward) or not isinstance(getattr(reward, "name", None), str):
        raise ValueError(f"reward spec {spec.name!r}: built {reward!r}, which has no str `name` / __call__")
    return reward


# ----------------------------------------------------------------------------- shared helpers


def leaf(name: str, score: float, reason: str = "", **extra: float) -> RewardResult:
    """Result of a leaf reward: components ``{name: score}`` plus ``{name}/{key}`` diagnostics."""
    components = {name: float(score)} | {f"{name}/{k}": float(v) for k, v in extra.items()}
    return RewardResult(float(score), components, reason)


def zero(name: str, reason: str) -> RewardResult:
    """Score 0 with a reason (bad or missing output)."""
    return leaf(name, 0.0, reason)


def clean_text(text: object, max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str, str]:
    """Return ``(text, problem)``: the output made safe to process, or a non-empty problem.

    Problems: not a str, longer than ``max_chars``, blank, or mostly undecodable (more than half
    of it lone surrogates, U+FFFD or control characters, i.e. bytes that were never text). A few
    such characters (a token cut mid-UTF-8 at the length limit) are repaired, not rejected: lone
    surrogates become "?" and NULs U+FFFD, so regexes, rapidfuzz and tokenizers accept the text.
    """
    if not isinstance(text, str):
        return "", f"output is not text ({type(text).__name__})"
    if len(text) > max_chars:
        return "", f"output too long ({len(text)} chars > {max_chars})"
    bad = sum(1 for c in text if _is_garbage(c))
    if bad * 2 > len(text):
        return "", f"output is mostly undecodable ({bad} of {len(text)} chars)"
    text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    if not text.strip():
        return "", "empty output"
    return text, ""


def _is_garbage(c: str) -> bool:
    """Lone surrogate, replacement character, or a control character other than tab/newline/CR."""
    o = ord(c)
    return 0xD800 <= o <= 0xDFFF or o == 0xFFFD or (o < 32 and c not in "\t\n\r") or o == 0x7F


def final_text(episode: Episode) -> object:
    """Text of the episode's last turn (what single-turn format/parse rewards grade), or ""."""
    return episode.turns[-1].text if episode.turns else ""
