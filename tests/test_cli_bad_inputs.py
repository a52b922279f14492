"""Every bad input fails before anything starts (issue 14, bullet 3), through the real ``duet``
command line, for ``duet check`` and ``duet train`` alike: exit status 2, the message names the
recipe field, and nothing started (no Ray, no run directory, nothing on stdout, well under the
> 10 s a Ray start takes here).

Two kinds of message: a problem of the machine (a task file, a model; :mod:`cluster.preflight`,
:mod:`cluster.models`) is ONE line ``duet: <field>: <why>``; a problem of the recipe's values (a
reward or environment name, a reward's keyword; :mod:`cluster.plugin_args`) is the recipe-error
format of ``tests/test_e2e_bad_recipe.py``: the header line, then one line per bad field."""

import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollout.tasks.schema import write_tasks
from rollout.types import Task

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A good task file, one that is not Parquet, one without the ``answer`` column."""
    d = tmp_path_factory.mktemp("task_files")
    write_tasks(d / "good.parquet", [Task("e0", "What colour?", "blue")])
    (d / "text.parquet").write_text("task_id,question,answer\nt0,q,a\n")
    pq.write_table(pa.table({"task_id": ["t0"], "question": ["q"]}), d / "no_answer.parquet")
    return {"dir": d, "good": d / "good.parquet", "text": d / "text.parquet", "no_answer": d / "no_answer.parquet"}


def parquet(train: Path, good: Path) -> tuple[str, ...]:
    return ("data.source=parquet", f'data.train={{path="{train}"}}', f'data.eval={{path="{good}"}}')


def duet(command: str, recipe: str, sets: tuple[str, ...], run_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    args = [x for kv in (*sets, f"output.dir={run_dir}") for x in ("--set", kv)]
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cluster.cli", command, recipe, *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - t0


def refused(command: str, recipe: str, sets: tuple[str, ...], tmp_path: Path) -> list[str]:
    """Run the command as a process; assert exit 2 with nothing started; return its stderr lines."""
    run_dir = tmp_path / "run"
    result, elapsed = duet(command, recipe, sets, run_dir)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout == "" and not run_dir.exists()  # no recipe printed, no run directory made
    assert "Ray" not in result.stderr and elapsed < 60  # Ray never started (it announces itself)
    return result.stderr.splitlines()


@pytest.fixture
def refused_here(capsys, monkeypatch):
    """``refused`` through ``cluster.cli.main`` in this process (the same code, without a Python start
    per case): Ray starting would fail the test (``cluster.run.init_ray`` refuses)."""
    import cluster.run
    from cluster.cli import main

    monkeypatch.setattr(cluster.run, "init_ray", lambda *a, **k: pytest.fail("Ray was started"))

    def run(command: str, recipe: str, sets: tuple[str, ...], tmp_path: Path) -> list[str]:
        run_dir = tmp_path / "run"
        code = main([command, recipe, *[x for kv in (*sets, f"output.dir={run_dir}") for x in ("--set", kv)]])
        out = capsys.readouterr()
        assert code == 2, out.out[-2000:] + out.err[-2000:]
        assert out.out == "" and not run_dir.exists()
        return out.err.splitlines()
    return run


AS_PROCESS = {("parquet_missing", "check"), ("parquet_missing", "train"), ("unknown_reward", "train")}
"""Cases also run as a real ``python -m cluster.cli`` process (the entry point itself); the others
run in this process."""


FILE_CASES = {
    "parquet_missing": (lambda f: parquet(f["dir"] / "nope.parquet", f["good"]),
                        "duet: data.train.path: task file '{dir}/nope.parquet' does not exist"),
    "not_parquet": (lambda f: parquet(f["text"], f["good"]),
                    "duet: data.train.path: cannot read task file {dir}/text.parquet: Parquet magic bytes not "
                    "found in footer. Either the file is corrupted or this is not a parquet file."),
    "missing_column": (lambda f: parquet(f["no_answer"], f["good"]),
                       "duet: data.train.path: {dir}/no_answer.parquet: required column 'answer' is missing "
                       "(columns: ['task_id', 'question'])"),
    "eval_split_too": (lambda f: parquet(f["good"], f["no_answer"]),
                       "duet: data.eval.path: {dir}/no_answer.parquet: required column 'answer' is missing "
                       "(columns: ['task_id', 'question'])"),
    "hf_glob": (lambda f: ("data.source=hf", f'data.train={{path="{f["dir"]}/*.jsonl"}}',
                           f'data.eval={{path="{f["good"]}"}}'),
                "duet: data.train.path: no file matches '{dir}/*.jsonl'"),
    "scienceqa_file": (lambda f: ("data.source=scienceqa", f'data.train={{problems_path="{f["dir"]}/p.json"}}',
                                  f'data.eval={{problems_path="{f["dir"]}/p.json", split="val"}}'),
                       "duet: data.train.problems_path: '{dir}/p.json' does not exist; "
                       "data.eval.problems_path: '{dir}/p.json' does not exist"),
    "model_builtin": (lambda f: ("roles.policy.model=builtin:no-such-model",),
                      "duet: roles.policy.model: built-in model 'no-such-model' is not built in"),
    "model_path": (lambda f: (f"roles.policy.model={f['dir']}/no-model",),
                   "duet: roles.policy.model: model '{dir}/no-model' is neither a local path that exists"),
}


@pytest.mark.parametrize("command", ["check", "train"])
@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_a_bad_file_or_model_is_one_line_naming_the_field(case, command, files, tmp_path, refused_here):
    sets, expected = FILE_CASES[case]
    lines = (refused if (case, command) in AS_PROCESS else refused_here)(command, "smoke", sets(files), tmp_path)
    expected = expected.format(dir=files["dir"])
    assert len(lines) == 1, lines
    assert lines[0] == expected if case not in ("model_builtin", "model_path") else lines[0].startswith(expected)


RECIPE_CASES = {
    "unknown_reward": ("smoke", ('rewards=[{name="exact_macth"}]',),
                       "  rewards.0.name: unknown reward 'exact_macth' (known: "),
    "reward_kwarg": ("smoke", ('rewards=[{name="exact_match", kwargs={max_char=3}}]',),
                     "  rewards.0.kwargs.max_char: not an argument of reward 'exact_match' (known: "),
    "dotted_reward": ("smoke", ('rewards=[{name="no_such_pkg.mod:Reward"}]',),
                      "  rewards.0.name: cannot load reward 'no_such_pkg.mod:Reward': reward spec: cannot import "
                      "module 'no_such_pkg.mod' (No module named 'no_such_pkg')"),
    "unknown_env": ("numberline_ppo", ("rollout.env.env=numberlane",),
                    "  rollout.env.env: Input should be 'numberline', 'ezpoints', 'points24' or 'blackjack'"),
}


@pytest.mark.parametrize("command", ["check", "train"])
@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_a_bad_plugin_name_or_argument_names_its_field(case, command, tmp_path, refused_here):
    recipe, sets, expected = RECIPE_CASES[case]
    lines = (refused if (case, command) in AS_PROCESS else refused_here)(command, recipe, sets, tmp_path)
    assert lines[0].startswith("duet: ") and lines[0].endswith(f"{recipe}.toml: invalid recipe")
    assert len(lines) == 2 and lines[1].startswith(expected), lines


def test_the_good_file_passes_check(files, tmp_path):
    """The control: the same recipe with a usable task file is printed, exit 0."""
    result, _ = duet("check", "smoke", parquet(files["good"], files["good"]), tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert '"source": "parquet"' in result.stdout and result.stderr == ""
