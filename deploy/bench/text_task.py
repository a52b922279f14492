"""The text task of the compute-bound comparison (issue 13, item 2): two-digit additions.

"What is 37 + 48? Reply with the number only." -> "85". Generated (no data set to ship), text only,
so it runs on a text LM (SmolLM2-135M); the reply's last integer is the answer and duet's
``exact_match`` reward scores it, on both systems. Written as two Parquet files of the task schema
(:mod:`rollout.tasks.schema`, the ``parquet`` source) so duet-rl and TRL read the same rows.
"""

from __future__ import annotations

import random
from pathlib import Path

from rollout.types import Task

SOURCE = "bench_addition"
ANSWER_PATTERN = r"(-?\d+)"
"""The reply's answer: its last integer (:func:`rollout.single_turn.extract_answer` takes the last match)."""
TRAIN_SIZE, EVAL_SIZE = 2000, 16


def addition_tasks(n: int, seed: int, prefix: str) -> list[Task]:
    """``n`` tasks "What is a + b?" with a, b uniform in 10..99 drawn by ``random.Random(seed)``;
    ids ``f"{prefix}-{i}"``."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        tasks.append(Task(f"{prefix}-{i}", f"What is {a} + {b}? Reply with the number only.", str(a + b),
                          source=SOURCE))
    return tasks


def write_task_files(directory: Path) -> tuple[Path, Path]:
    """(train, eval) Parquet files under ``directory`` (written once; the same rows every time)."""
    from rollout.tasks.schema import write_tasks

    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "addition-train.parquet", directory / "addition-eval.parquet"
    for path, tasks in zip(paths, (addition_tasks(TRAIN_SIZE, 1, "train"), addition_tasks(EVAL_SIZE, 2, "eval"))):
        if not path.is_file():
            write_tasks(path, tasks)
    return paths


def data_overrides(directory: Path) -> dict[str, str]:
    """``--set`` values (dotted key -> TOML value) that make a recipe train on the task's files."""
    train, held_out = write_task_files(directory)
    return {"data.source": '"parquet"', "data.train": f'{{ path = "{train}" }}',
            "data.eval": f'{{ path = "{held_out}" }}',
            "rollout.single_turn.answer.pattern": f"'{ANSWER_PATTERN}'"}
