"""TensorBoard: event files under ``RUN_DIR/tensorboard/`` (``tensorboard --logdir RUN_DIR/tensorboard``).

Written with TensorBoard's own event-file writer and protos (no torch or TensorFlow needed); one
``simple_value`` scalar per point (TensorBoard stores scalars as float32). Extra: ``duet-rl[tensorboard]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from cluster.loggers import Point


class TensorBoardTracker:
    """One event file per run attempt in ``RUN_DIR/tensorboard`` (a resumed run adds a file beside)."""

    def __init__(self, run_dir: Path) -> None:
        self.logdir = run_dir / "tensorboard"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.writer = EventFileWriter(str(self.logdir))

    def write(self, points: Sequence[Point]) -> None:
        for p in points:
            summary = Summary(value=[Summary.Value(tag=p.tag, simple_value=p.value)])
            self.writer.add_event(Event(wall_time=p.wall_time, step=p.step, summary=summary))
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()
