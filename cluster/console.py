"""The run's display on stdout: its lines always (``step    1 | reward ...``, ``[sft] ...``,
``[eval] ...``, ``[duet] ...``, exactly as in a job log), and, when stdout is an interactive
terminal, a progress bar under them for the stage that is running (the SFT warm start, the RL
steps) with the step count, elapsed time and an ETA. Without a terminal (job logs, CI, a pipe)
nothing but the lines is written. rich is imported only when a bar is drawn.
"""

from __future__ import annotations

import sys
import time
from typing import Any


def format_seconds(seconds: float) -> str:
    """``H:MM:SS`` (3725.2 -> "1:02:05")."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def eta_seconds(elapsed: float, done: int, left: int) -> float | None:
    """Time to finish ``left`` more steps at the mean pace of the ``done`` ones taken in
    ``elapsed`` seconds; None before the first step of the stage is done."""
    if done <= 0:
        return None
    return elapsed / done * left


def _eta_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class EtaColumn(ProgressColumn):
        """``ETA H:MM:SS``: the mean pace of the steps done since the bar began (a resumed run's
        earlier steps do not count) times the steps left, less the time since the last step."""

        def render(self, task: Any) -> Text:
            f = task.fields
            eta = eta_seconds(f["done_at"], int(task.completed - f["first"]), int(task.total - task.completed))
            if eta is not None:  # counts down between steps
                eta = max(0.0, eta - (time.monotonic() - f["t0"] - f["done_at"]))
            return Text("ETA " + ("-:--:--" if eta is None else format_seconds(eta)))

    return EtaColumn()


class Display:
    """Lines on stdout, and a progress bar per stage when ``interactive`` (default: stdout is a TTY)."""

    def __init__(self, enabled: bool = True, interactive: bool | None = None) -> None:
        self.enabled = enabled
        self.interactive = enabled and (sys.stdout.isatty() if interactive is None else interactive)
        self.progress: Any = None
        self.task: Any = None

    def line(self, text: str) -> None:
        """One line, as in a job log (above the bar while one is drawn)."""
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
        else:
            print(text, flush=True)

    def begin(self, label: str, total: int, completed: int = 0) -> None:
        """Start the bar of a stage of ``total`` steps, ``completed`` of them already done."""
        if not self.interactive or total <= completed:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.end()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), _eta_column(), TextColumn("{task.fields[info]}"))
        self.progress.start()
        self.task = self.progress.add_task(label, total=total, completed=completed, first=completed, info="",
                                           t0=time.monotonic(), done_at=0.0)

    def advance(self, completed: int, info: str = "") -> None:
        """``completed`` steps of the stage are done; ``info``: a short figure shown after the ETA."""
        if self.progress is not None:
            t0 = self.progress.tasks[0].fields["t0"]
            self.progress.update(self.task, completed=completed, info=info, done_at=time.monotonic() - t0)

    def end(self) -> None:
        """Stop the bar (its last state stays on the terminal)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = self.task = None
