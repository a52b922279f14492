"""What a benchmark hands back (:class:`Section`) and how the suite writes it: one Markdown table per
section, a table of the issue's targets, and a JSON file with every raw figure.

Pure formatting (standard library only): unit tested on hand-built sections.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

Cell = str | int | float | None


@dataclass(frozen=True)
class Check:
    """One target of the issue, against what this run measured."""

    target: str
    """The target in words, e.g. "end-to-end samples/s >= 3x TRL"."""
    measured: str
    """The measured figure in words, e.g. "1.42x"."""
    met: bool | None
    """True/False; None when the figure could not be measured."""
    key: str = ""
    """Which of :data:`ISSUE_TARGETS` this checks ("" for none)."""


ISSUE_TARGETS: tuple[tuple[str, str, str], ...] = (
    ("e2e-tiny", "end-to-end GRPO samples/s >= 2x TRL GRPOTrainer (tiny VLM)", "e2e"),
    ("e2e-smollm2", "end-to-end GRPO samples/s >= 3x TRL GRPOTrainer (SmolLM2-135M)", "e2e-smollm2"),
    ("rollout-tiny-qwen2-vl", "rollout worker tokens/s >= 1.5x transformers generate() (tiny-qwen2-vl)", "rollout"),
    ("rollout-small-qwen2-vl", "rollout worker tokens/s >= 1.5x transformers generate() (small-qwen2-vl)", "rollout"),
    ("rollout-smollm2-135m", "rollout worker tokens/s >= 1.5x transformers generate() (smollm2-135m)", "rollout"),
    ("sync-p50", "adapter sync during async training p50 <= 0.1 s", "overlap"),
    ("sync-smollm2", "SmolLM2-135M adapter sync (load + proof) >= 10x faster than a full-weight reload", "sync"),
    ("async-step", "async step <= 1.1x max(generation, training)", "overlap"),
    ("default-240", "the default run's RL phase (240 steps) <= 4 minutes at an unchanged held-out gain", ""),
)
"""Issue 13's targets: (key, target in words, the section that measures it; "" for none of them)."""


@dataclass(frozen=True)
class Section:
    """The result of one benchmark: a table, the targets it checks, notes and raw figures."""

    name: str
    """Short name, as on the command line ("e2e", "sync", ...)."""
    title: str
    header: tuple[str, ...] = ()
    rows: tuple[tuple[Cell, ...], ...] = ()
    """Table rows, each as long as ``header``."""
    checks: tuple[Check, ...] = ()
    notes: tuple[str, ...] = ()
    """What was measured and how, caveats; one bullet each."""
    data: Mapping[str, Any] = field(default_factory=dict)
    """Raw figures (per-step times, settings) for the JSON file."""
    error: str = ""
    """Why the benchmark failed ("" when it ran)."""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"section {self.name}: row {row!r} has {len(row)} cells, header {len(self.header)}")

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Section:
        """Inverse of ``dataclasses.asdict`` (JSON turns tuples into lists)."""
        return Section(d["name"], d["title"], tuple(d.get("header", ())), tuple(tuple(r) for r in d.get("rows", ())),
                       tuple(Check(**c) for c in d.get("checks", ())), tuple(d.get("notes", ())),
                       dict(d.get("data", {})), d.get("error", ""))


def failed(name: str, title: str, error: str) -> Section:
    """The section of a benchmark that did not finish."""
    return Section(name, title, error=error)


def fmt(value: Cell) -> str:
    """A table cell: None -> "-", integers as is, floats to 3 significant digits (plain notation
    from 0.001 to 1e6, else scientific), strings unchanged."""
    if value is None:
        return "-"
    if isinstance(value, bool) or isinstance(value, (int, str)):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        digits = max(0, 2 - int(math.floor(math.log10(abs(value))))) if value else 0
        return f"{value:.{digits}f}"
    return f"{value:.2e}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """A GitHub Markdown table (``|`` in cells escaped)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(list(header)), "|" + "|".join("---" for _ in header) + "|"]
    out += [line([fmt(c) for c in row]) for row in rows]
    return "\n".join(out)


def met_word(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "not measured"}[met]


def unmeasured(key_section: str, sections: Sequence[Section]) -> str:
    """Why a target of :data:`ISSUE_TARGETS` has no figure in ``sections``."""
    if not key_section:
        return "not measured here: the default run is `duet train` (the README's main command), not a benchmark"
    failed = [s for s in sections if s.name == key_section and s.error]
    if failed:
        return f"not measured: the {key_section} benchmark failed ({failed[0].error.strip().splitlines()[-1][:120]})"
    if any(s.name == key_section for s in sections):
        return f"not measured: the {key_section} benchmark ran without this figure"
    return f"not measured: the {key_section} benchmark was not run"


def targets_table(sections: Sequence[Section]) -> str:
    """Every check of ``sections`` (issue 13's targets in their order first), then a row per target
    of :data:`ISSUE_TARGETS` that no section measured, saying why."""
    checks = [c for s in sections for c in s.checks]
    rows = []
    for key, target, where in ISSUE_TARGETS:
        found = [c for c in checks if c.key == key]
        rows += ([(c.target, c.measured, met_word(c.met)) for c in found]
                 or [(target, unmeasured(where, sections), met_word(None))])
    rows += [(c.target, c.measured, met_word(c.met)) for c in checks if c.key not in {k for k, _, _ in ISSUE_TARGETS}]
    return markdown_table(("target (issue 13)", "measured: median (range, repetitions)", "met"), rows)


def section_markdown(section: Section) -> str:
    parts = [f"## {section.title}", ""]
    if section.error:
        parts += [f"**Failed:** `{section.error.strip()[-1500:]}`", ""]
    if section.header:
        parts += [markdown_table(section.header, section.rows), ""]
    parts += [f"- {n}" for n in section.notes]
    return "\n".join(parts).rstrip() + "\n"


def machine_markdown(machine: Mapping[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    load = machine.get("load_average", {})
    per = "; ".join(f"{name} {v.get('start')} -> {v.get('end')} ({fmt(v.get('wall_s'))} s)"
                    for name, v in load.get("per_benchmark", {}).items())
    return "\n".join([
        f"- CPU: {machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores; "
        f"RAM {fmt(machine.get('ram_gib'))} GiB; {machine.get('platform', '')}; "
        f"scheduler autogroup {machine.get('sched_autogroup', '?')}",
        f"- load average (1/5/15 min) at start {load.get('start')}, at end {load.get('end')}"
        + (f"; per benchmark, start -> end: {per}" if per else ""),
        f"- versions: {versions}",
        f"- commit {machine.get('commit', '?')}; run {machine.get('started', '?')}, "
        f"{fmt(machine.get('wall_s'))} s in all",
    ])


def render_markdown(machine: Mapping[str, Any], sections: Sequence[Section], command: str) -> str:
    """The whole results file: machine, targets, then one part per section."""
    parts = ["# duet-rl benchmark results", "",
             f"Written by `{command}`. Every figure and ratio below was measured in this one run; "
             "nothing is carried over from earlier runs.", "", "## Machine", "", machine_markdown(machine), "",
             "## Targets", "", targets_table(sections), ""]
    parts += [section_markdown(s) for s in sections]
    return "\n".join(parts)


def render_json(machine: Mapping[str, Any], sections: Sequence[Section]) -> str:
    return json.dumps({"machine": dict(machine), "sections": [asdict(s) for s in sections]}, indent=2,
                      default=str) + "\n"
