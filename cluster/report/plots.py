"""Panels drawn as PNG with matplotlib: the only module of the report that imports it.

The object API (``Figure`` + the Agg canvas) is used, never ``pyplot``: no global figure state and
no GUI backend, so a report renders inside a training driver or a thread safely.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cluster.report.series import Panel


def panel_png(panel: Panel, width_in: float = 6.4, height_in: float = 3.4, dpi: int = 100) -> bytes:
    """PNG bytes of one panel: a line per series (markers when points are few), legend, grid."""
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    fig.subplots_adjust(left=0.12, right=0.98, top=0.91, bottom=0.15)  # fixed: half the time of "constrained"
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, s in panel.series.items():
        ax.plot(s.x, s.y, label=label, marker="o" if len(s.x) <= 30 else None, markersize=4, linewidth=1.6)
    if panel.categories:
        ax.set_xticks(range(len(panel.categories)), panel.categories, rotation=20 if len(panel.categories) > 4 else 0)
        ax.set_xlim(-0.5, len(panel.categories) - 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(panel.title, fontsize=11)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
