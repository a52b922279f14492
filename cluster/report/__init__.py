"""``duet report RUN_DIR``: a run directory as one self-contained HTML page plus its plots as PNG.

:func:`write_report` reads ``metrics.parquet`` (:mod:`cluster.report.series` turns it into panels,
as data), the transcripts and their images (:mod:`cluster.report.transcripts`), ``recipe.json``
and ``summary.json``, draws the panels with matplotlib (:mod:`cluster.report.plots`, imported only
here, when a report is drawn) and writes ``RUN_DIR/report/index.html`` and ``RUN_DIR/report/*.png``.
The page embeds every plot and image as a ``data:`` URI, so it is one file to open, copy or attach.
It can be drawn during a run (``duet train`` redraws it after each evaluation and at the end): files
are replaced atomically, so a reader never sees half a page.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from cluster.report.html import Figure, PageData, page
from cluster.report.series import Panel, events, eval_panels, evaluations, read_rows, step_panels, sync_panels
from cluster.report.transcripts import load_transcripts

__all__ = ["write_report", "NoMetrics"]


class NoMetrics(FileNotFoundError):
    """The directory holds no ``metrics.parquet`` (not a run directory, or a run not started)."""


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _draw(panels: list[Panel], out: Path) -> list[Figure]:
    from cluster.report.plots import panel_png

    figs = [Figure(p.title, f"{_slug(p.title)}.png", panel_png(p)) for p in panels]
    for f in figs:
        _write_atomic(out / f.filename, f.png)
    return figs


def _rows(metrics: Path, tries: int = 3) -> list:
    """The metrics rows; a file caught mid-write by a running ``duet train`` is read again."""
    import pyarrow as pa

    for attempt in range(tries):
        try:
            return read_rows(metrics)
        except (pa.ArrowInvalid, OSError):
            if attempt == tries - 1:
                raise
            time.sleep(0.5)
    return []


def write_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Draw the report of ``run_dir`` into ``out_dir`` (default ``run_dir/report``); returns the
    path of ``index.html``. Raises :class:`NoMetrics` when there is no ``metrics.parquet``."""
    run = Path(run_dir)
    metrics = run / "metrics.parquet"
    if not metrics.is_file():
        raise NoMetrics(f"{run}: no metrics.parquet (not a run directory, or the run has not written a step yet)")
    out = Path(out_dir) if out_dir is not None else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(metrics)
    evals = evaluations(rows)
    eval_figs, step_figs, sync_figs = (_draw(p, out) for p in (eval_panels(rows), step_panels(rows), sync_panels(rows)))
    keep = {f.filename for f in (*eval_figs, *step_figs, *sync_figs)}
    for old in out.glob("*.png"):
        if old.name not in keep:
            old.unlink()
    recipe = _json(run / "recipe.json")
    title = f"duet-rl run report: {recipe.get('name', run.name) if isinstance(recipe, dict) else run.name}"
    generated = f"{run.resolve()} - drawn {time.strftime('%Y-%m-%d %H:%M:%S')} from {len(rows)} metric rows"
    data = PageData(title, generated, evals, eval_figs, step_figs, sync_figs,
                    load_transcripts(run, tuple(evals)), recipe, _json(run / "summary.json"), events(rows))
    index = out / "index.html"
    _write_atomic(index, page(data).encode("utf-8"))
    return index
