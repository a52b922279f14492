"""Faulty user code is contained: a plugin that raises on one episode costs that episode, not the run.

A reward must not raise on bad model output (:class:`rollout.types.Reward`), but a user's reward
may still have a bug (a ``KeyError`` on some outputs); an environment may raise in ``reset`` or
``step``. Such an exception used to end the whole run (a ``RayTaskError`` out of the worker). Here:

- :func:`call_reward` calls a reward and turns an exception (or a result that is not a
  :class:`~rollout.types.RewardResult`) into score 0 with the reason ``"reward 'x' raised
  KeyError: ..."`` and a :class:`~rollout.types.PluginFault` (the traceback's last line and its
  text) in ``RewardResult.faults``. ``rewards.composite.WeightedSum`` calls each term through it,
  so one bad term scores 0 and the others keep their scores (the episode is still marked);
- :func:`fault_of` records an environment's exception the same way (``rollout/env_episode.py``);
- :func:`mark` stamps an episode with its faults in ``Episode.metadata`` (``plugin_fault/<plugin>``
  -> the error line, :data:`TRACEBACK_KEY` -> the first traceback), which travels with the episode
  (pickled or through the Arrow codec); :func:`episode_faults` and :func:`fault_counts` read it back.

Only ``Exception`` is caught: ``KeyboardInterrupt``/``SystemExit`` still stop the worker. The
driver counts the marked episodes and stops the run when too many fail
(``cluster.plugin_faults``, ``train.max_plugin_error_fraction``).
"""

from __future__ import annotations

import dataclasses
import traceback as tb
from typing import Iterable, Mapping

from rollout.types import Episode, PluginFault, Reward, RewardResult, Task

FAULT_PREFIX = "plugin_fault/"
"""``Episode.metadata`` key prefix: ``plugin_fault/<kind>/<name>`` -> that plugin's error line."""
TRACEBACK_KEY = "plugin_traceback"
"""``Episode.metadata`` key of the first fault's traceback text."""
MAX_TRACEBACK_CHARS = 4000
"""Tracebacks longer than this keep their last characters (where the error is)."""


def fault_of(kind: str, name: str, err: BaseException) -> PluginFault:
    """The :class:`PluginFault` of plugin ``kind``/``name`` raising ``err`` (its traceback's last
    line, e.g. ``"KeyError: 'k'"``, and the traceback text)."""
    last = tb.format_exception_only(type(err), err)[-1].strip()
    text = "".join(tb.format_exception(type(err), err, err.__traceback__))
    return PluginFault(kind, name, last, text[-MAX_TRACEBACK_CHARS:])


def call_reward(reward: Reward, task: Task, episode: Episode) -> RewardResult:
    """``reward(task, episode)``; if it raises (or returns something else than a RewardResult), score
    0 with components ``{name: 0}``, the fault's reason and the fault itself in ``faults``."""
    name = str(getattr(reward, "name", type(reward).__name__))
    try:
        result = reward(task, episode)
        if not isinstance(result, RewardResult):
            raise TypeError(f"returned {type(result).__name__}, not a RewardResult")
        return result
    except Exception as err:  # noqa: BLE001 - a user's reward may fail in any way; the episode pays
        fault = fault_of("reward", name, err)
        return RewardResult(0.0, {name: 0.0}, fault.reason, (fault,))


def mark(episode: Episode, faults: Iterable[PluginFault]) -> Episode:
    """``episode`` with ``faults`` recorded in its metadata (unchanged when there are none)."""
    faults = tuple(faults)
    if not faults:
        return episode
    metadata = dict(episode.metadata)
    for f in faults:
        metadata.setdefault(FAULT_PREFIX + f.plugin, f.error)
    metadata.setdefault(TRACEBACK_KEY, faults[0].traceback)
    return dataclasses.replace(episode, metadata=metadata)


def episode_faults(episode: Episode) -> dict[str, str]:
    """Plugin (``"<kind>/<name>"``) -> error line of every plugin that raised on ``episode``."""
    return {k[len(FAULT_PREFIX):]: v for k, v in episode.metadata.items() if k.startswith(FAULT_PREFIX)}


def fault_counts(episodes: Iterable[Episode]) -> dict[str, int]:
    """Plugin -> number of ``episodes`` it raised on (sorted by plugin; empty when none did)."""
    counts: dict[str, int] = {}
    for e in episodes:
        for plugin in episode_faults(e):
            counts[plugin] = counts.get(plugin, 0) + 1
    return dict(sorted(counts.items()))


def fault_rows(counts: Mapping[str, int]) -> dict[str, float]:
    """Metric name ``plugin_errors/<kind>/<name>`` -> count, for the metrics file and summaries."""
    return {f"plugin_errors/{p}": float(n) for p, n in counts.items()}
