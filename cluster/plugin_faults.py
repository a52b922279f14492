"""The driver's side of contained plugin faults: count them, stop the run when too many episodes fail.

A reward or environment that raises on an episode scores it 0 and marks it inside the rollout
worker (:mod:`rollout.guard`). The driver calls :func:`tally` on every collected step batch and
every evaluation: it adds the batch's faults per plugin to the run's totals (the summary's
``plugin_errors/<kind>/<name>`` counters) and, when more than ``train.max_plugin_error_fraction``
of the batch's episodes are marked, raises :class:`PluginFailed`: a plugin failing that often is
a bug to fix, not noise to train on. :func:`checkpoint_on_failure` (around the run, in
``cluster.run``) writes a checkpoint before the error leaves, and ``duet train`` prints
:meth:`PluginFailed.line` (one line) and exits 1.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, MutableMapping, Sequence

from rollout.guard import episode_faults, fault_counts
from rollout.types import Episode


class PluginFailed(RuntimeError):
    """Too many episodes of one batch failed in a plugin; ``step``: RL steps completed (the step a
    checkpoint written now is saved as); ``checkpoint``: where it was written, once it is."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint: str | None = None

    def line(self) -> str:
        """The one line ``duet train`` prints: the message and the checkpoint written."""
        where = f"; checkpoint written: {self.checkpoint}" if self.checkpoint else ""
        return f"{self}{where}"


def worst_plugin(episodes: Sequence[Episode]) -> tuple[str, str, int]:
    """(plugin, its first error line, episodes it failed) of the plugin that failed most often
    (the first one seen among equals); ``("", "", 0)`` when none failed."""
    counts = fault_counts(episodes)
    if not counts:
        return "", "", 0
    plugin = max(counts, key=lambda p: counts[p])
    error = next(episode_faults(e)[plugin] for e in episodes if plugin in episode_faults(e))
    return plugin, error, counts[plugin]


def failure_message(episodes: Sequence[Episode], limit: float, what: str) -> str | None:
    """Why ``episodes`` stop the run: more than ``limit`` of them marked as plugin failures; None
    when within the limit (or empty)."""
    failed = sum(1 for e in episodes if episode_faults(e))
    if not episodes or failed / len(episodes) <= limit:
        return None
    plugin, error, n = worst_plugin(episodes)
    kind, _, name = plugin.partition("/")
    return (f"{kind} {name!r} raised {error} on {n} of {len(episodes)} episodes of {what} "
            f"({failed} failed in a plugin, more than train.max_plugin_error_fraction = {limit:g})")


def tally(episodes: Sequence[Episode], totals: MutableMapping[str, int] | None, limit: float,
          what: str, step: int) -> dict[str, int]:
    """Plugin -> episodes of ``episodes`` it failed, added into ``totals`` (when given) before
    :class:`PluginFailed` is raised for a batch over ``limit`` (see :func:`failure_message`)."""
    counts = fault_counts(episodes)
    if totals is not None:
        for plugin, n in counts.items():
            totals[plugin] = totals.get(plugin, 0) + n
    message = failure_message(episodes, limit, what)
    if message is not None:
        raise PluginFailed(message, step)
    return counts


def count_names(totals: MutableMapping[str, int]) -> dict[str, int]:
    """``plugin_errors/<kind>/<name>`` -> count: the run summary's counters of ``totals``."""
    return {f"plugin_errors/{p}": n for p, n in sorted(totals.items())}


@contextmanager
def checkpoint_on_failure(checkpoint: Callable[[int], object], run_dir: Path) -> Iterator[None]:
    """Run the body; on :class:`PluginFailed`, ``checkpoint(err.step)`` and record the directory
    ``checkpoints/LATEST`` then names in ``err.checkpoint`` before the error goes on (a checkpoint
    that fails is named in the error's line instead; the plugin's error still ends the run)."""
    try:
        yield
    except PluginFailed as err:
        try:
            checkpoint(err.step)
            latest = run_dir / "checkpoints" / "LATEST"
            err.checkpoint = str(run_dir / "checkpoints" / latest.read_text().strip())
        except Exception as failed:  # noqa: BLE001 - the plugin's error is the one to report
            err.checkpoint = f"none (the checkpoint failed: {type(failed).__name__}: {failed})"
        raise
