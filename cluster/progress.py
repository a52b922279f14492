"""What a run shows and keeps: one line per step on stdout, Ray dashboard metrics, a Parquet metrics
file (long format: step, scope, name, value), readable transcripts per step, a final summary.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.schedule import component_means, summarize
from cluster.metrics import DuetMetrics, RaySink, Recorder
from cluster.console import Display
from cluster.loggers import Trackers
from cluster.report.transcripts import save_images
from learner.metrics import UpdateMetrics, flatten
from rollout.episode_arrow import EpisodeBatch
from rollout.guard import fault_counts, fault_rows

METRICS_SCHEMA = pa.schema([("step", pa.int64()), ("scope", pa.string()), ("name", pa.string()),
                            ("value", pa.float64()), ("time_s", pa.float64())])


def learner_values(update: UpdateMetrics | Mapping[str, float]) -> dict[str, float]:
    """Metric name -> value of one learner update (:func:`learner.metrics.flatten`); figures that
    already carry their names (hand-made ones) pass as they are."""
    return dict(update) if isinstance(update, Mapping) else flatten(update)


def _recipe_of(run_dir: Path) -> tuple[str, dict[str, Any]]:
    """(run name, resolved recipe) from the run's ``recipe.json`` (the trackers' run name and config)."""
    path = run_dir / "recipe.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    return str(config.get("name", run_dir.name)), config


class RunLog:
    """Collects a run's figures; ``print_lines`` is off when a progress display is not wanted."""

    def __init__(self, run_dir: Path, transcripts_per_step: int, print_lines: bool = True,
                 report: bool = False, loggers: Sequence[str] = ("console",)) -> None:
        self.run_dir = run_dir
        self.transcripts_dir = run_dir / "transcripts"
        self.transcripts_dir.mkdir(parents=True, exist_ok=True)
        self.transcripts_per_step = transcripts_per_step
        self.print_lines = print_lines
        self.report = report
        self.recorder = Recorder()
        self.metrics = DuetMetrics(RaySink(), self.recorder)
        self.rows: list[dict[str, Any]] = []
        self.evals: dict[str, dict[str, float]] = {}
        self.t0 = time.time()
        self.display = Display(print_lines and "console" in loggers)
        self.trackers = Trackers(run_dir, loggers, *_recipe_of(run_dir))
        self.total_steps = 0

    def say(self, text: str) -> None:
        self.display.line(text)

    def event(self, text: str) -> None:
        self.say(f"[duet] {text}")
        self._row(-1, "event", text, 1.0)

    def _row(self, step: int, scope: str, name: str, value: float) -> None:
        self.rows.append({"step": step, "scope": scope, "name": name, "value": float(value),
                          "time_s": time.time() - self.t0})
        self.trackers.add(step, scope, name, value, time.time())

    def sync(self, report: Any) -> None:
        self._row(-1, f"sync/{report.role}", "latency_s", report.latency_s)
        self._row(-1, f"sync/{report.role}", "version", report.version)
        self._row(-1, f"sync/{report.role}", "proven_workers", len(report.proven))
        self._row(-1, f"sync/{report.role}", "probe_gap", report.probe_gap)

    def loop(self, step: int, produced: int, dropped: int, staleness: Mapping[str, float], in_flight: int) -> None:
        """The driver loop's figures of ``step``, before its update: episodes collected and dropped as
        stale, the trained episodes' mean staleness per role, episodes in flight for the next step
        (async mode; 0 in sync mode). Rows in metrics.parquet and Ray metrics alike."""
        self.metrics.episodes_produced(produced)
        self.metrics.episodes_dropped("stale", dropped)
        self._row(step, "rollout", "dropped/stale", dropped)
        self._row(step, "rollout", "queue_depth/in_flight", in_flight)
        self.metrics.queue_depth("in_flight", in_flight)
        for role, lag in staleness.items():
            self._row(step, "rollout", f"staleness/{role}", lag)
            self.metrics.staleness(role, lag)

    def step(self, step: int, batch: EpisodeBatch, stats: Sequence[Any], updates: Mapping[str, UpdateMetrics],
             syncs: Mapping[str, Any], versions: Mapping[str, int], timings: Mapping[str, float]) -> None:
        """Step ``step``'s rows and gauges: the rollout's figures, then each role's learner update
        (``updates``) under its metric names (:func:`learner_values`)."""
        updates = {role: learner_values(m) for role, m in updates.items()}
        summary = summarize(batch.episodes)
        tokens = sum(s.tokens_per_s for s in stats)
        faults = fault_rows(fault_counts(batch.episodes))  # plugins that raised on the trained episodes
        for name, value in {**summary, **component_means(batch.episodes), **timings, "tokens_per_s": tokens,
                            **faults}.items():
            self._row(step, "rollout", name, value)
        for role, metrics in updates.items():
            for name, value in metrics.items():
                self._row(step, f"learner/{role}", name, value)
            self.metrics.learner_update(role, metrics)  # entropy, approx-KL, KL to the reference
        if len(batch):  # an empty (all stale) batch has no reward, and success only where defined
            self.metrics.reward(summary["reward"])
            if any(e.success is not None for e in batch.episodes):
                self.metrics.success_rate(summary["success"])
        self.metrics.tokens_per_s(tokens)
        self._save_transcripts(f"step_{step:05d}", batch)
        self.flush()
        self.say(self._line(step, summary, updates, syncs, versions, timings))
        self._advance(step, summary)

    def _line(self, step, summary, updates, syncs, versions, timings) -> str:
        parts = [f"step {step + 1:>4}", f"reward {summary['reward']:+.3f}", f"success {summary['success']:.2f}"]
        for role, m in updates.items():
            parts.append(f"{role}: loss {m.get('loss/policy', 0.0):+.4f} ent {m.get('policy/entropy', 0.0):.3f} "
                         f"kl {m.get('kl/ref', 0.0):.4f}")
        for role, rep in syncs.items():
            parts.append(f"sync {role} v{rep.version} {rep.latency_s:.2f}s {len(rep.proven)} proven")
        parts.append(f"{timings['time/step']:.1f}s")
        return " | ".join(parts)

    def evaluation(self, label: str, result: Mapping[str, float], batch: EpisodeBatch) -> None:
        self.evals[label] = dict(result)
        for name, value in {**result, **component_means(batch.episodes)}.items():
            self._row(-1, f"eval/{label}", name, value)
        self._save_transcripts(f"eval_{label}", batch)
        self.flush()
        self.draw_report()
        self.say(f"[eval] {label:<10} success {result['success']:.3f}  reward {result['reward']:+.3f}  "
                 f"({int(result['episodes'])} held-out episodes)")

    def _save_transcripts(self, name: str, batch: EpisodeBatch) -> None:
        if not self.transcripts_per_step:
            return
        kept = [e for e in batch.episodes[: self.transcripts_per_step] if e.metadata.get("transcript")]
        (self.transcripts_dir / f"{name}.txt").write_text("\n\n".join(e.metadata["transcript"] for e in kept) + "\n")
        save_images(self.transcripts_dir / name, kept, batch.images)  # transcripts/<name>/<hash>.png

    def draw_report(self) -> None:
        """Redraw ``report/`` (cluster/report) when asked for; a failure is one line, never the run's end."""
        if not self.report:
            return
        try:
            from cluster.report import write_report

            write_report(self.run_dir)
        except Exception as err:  # noqa: BLE001 - a report must not kill a run
            print(f"[duet] report not drawn: {type(err).__name__}: {err}", file=sys.stderr, flush=True)

    def begin_steps(self, start: int, total: int) -> None:
        """RL steps ``start .. total-1`` are about to run: their bar (on a terminal) begins, and
        later step -1 rows go to the trackers at step ``start`` until a step is done."""
        self.total_steps = total
        self.trackers.completed(start)
        self.display.begin("RL steps", total, start)

    def rewind(self, step: int, faults: Mapping[str, float]) -> None:
        """The run went back to step ``step`` (a learner restart): the rows of steps ``step`` and
        later are dropped (they are run again; events, ``-1``, stay), ``faults`` (name -> count so
        far) recorded under scope ``faults``."""
        self.rows[:] = [r for r in self.rows if r["step"] < step]
        for name, value in faults.items():
            self._row(-1, "faults", name, value)
        self.trackers.completed(step)
        self.flush()

    def _advance(self, step: int, summary: Mapping[str, float]) -> None:
        self.trackers.completed(step + 1)
        self.display.advance(step + 1, f"reward {summary['reward']:+.3f} success {summary['success']:.2f}")
        if step + 1 >= self.total_steps:
            self.display.end()

    def sft_begin(self, role: str, total: int) -> None:
        """``role``'s SFT stage of ``total`` steps begins (its bar, on a terminal)."""
        self.display.begin(f"SFT {role}", total)

    def sft_step(self, role: str, step: int, total: int, loss: float) -> None:
        """SFT step ``step`` (0-based) of ``total`` done: a line every 10 steps and the last, a bar on a terminal."""
        self.display.advance(step + 1, f"loss {loss:.4f}")
        if step % 10 == 0 or step + 1 == total:
            self.say(f"[sft] {role} step {step + 1:>4}/{total} loss {loss:.4f}")
        if step + 1 == total:
            self.display.end()

    def close(self, failed: bool = False) -> None:
        """End the display and finish the trackers (``failed``: the run raised)."""
        self.display.end()
        self.trackers.close(failed)

    def flush(self) -> None:
        pq.write_table(pa.Table.from_pylist(self.rows, schema=METRICS_SCHEMA), self.run_dir / "metrics.parquet")
        self.trackers.flush()

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        self.say("[duet] summary: " + json.dumps(summary, default=str))
        sys.stdout.flush()
        self.draw_report()
