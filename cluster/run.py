"""One training run on Ray, from a validated recipe: start (or join) Ray, place the actors, load the
data, evaluate, warm start, train, evaluate, summarise. ``duet train`` calls :func:`run_training`.

Local mode (``cluster.address`` unset) starts a single-node Ray in this process and shuts it down
at the end; a watchdog process (:mod:`cluster.reaper`) stops every process of that Ray session once
the driver is gone, however it went (SIGKILL included). Under ``ray job submit`` (or with
``address = "auto"``) the job joins the running cluster and leaves it running. Every file of the run
goes under one absolute ``output.dir``, which every node hosting the run's actors must see
(:mod:`cluster.storage`, checked before any model loads); one run at a time holds it
(:func:`run_dir_lock`: a second run given the same directory fails before writing anything).
"""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from cluster import reaper
from cluster.config import Recipe
from cluster.models import resolve_models

MODELS_DIR = Path(os.environ.get("DUET_MODELS", Path(__file__).resolve().parents[1] / ".cache" / "models"))


@dataclass(frozen=True)
class RunSummary:
    completed: bool
    steps: int
    eval: dict[str, dict[str, float]]
    counters: dict[str, int]
    run_dir: str
    wall_s: float
    versions: dict[str, int] = field(default_factory=dict)
    """Adapter -> last version published (and proven on every worker)."""
    served: dict[str, dict[str, int]] = field(default_factory=dict)
    """Rollout worker -> adapter -> version it last proved serving (the weight-sync service's view)."""


def load_items(recipe: Recipe, log) -> tuple[list[Any], list[Any]]:
    """(training items, held-out evaluation items) of ``recipe``'s rollout kind
    (``RolloutKind.items``): tasks of the data source, or env seeds for environment episodes."""
    from rollout.kinds.base import ItemSource

    d = recipe.data
    source = ItemSource(seed=recipe.seed, train_size=d.tasks_per_step * max(recipe.train.steps, 1),
                        eval_size=d.eval_size, tasks=lambda: load_tasks(recipe, log))
    return recipe.rollout.spec.items(source)


def load_tasks(recipe: Recipe, log) -> tuple[list[Any], list[Any]]:
    """(training tasks, held-out tasks) of the recipe's data source: training tasks shuffled by the
    recipe's seed, held-out ones cut to ``data.eval_size``. Bad dataset rows are skipped and counted
    (reported here), never silently used; a task id in both splits is an error."""
    from rollout.tasks import load_task_source
    from rollout.tasks.images import resize_task_images

    splits = []
    for name, kwargs in (("train", recipe.data.train), ("eval", recipe.data.eval)):
        result = load_task_source(recipe.data.source, **kwargs)
        if result.skipped:
            log.event(f"data/{name}: skipped {result.skipped} malformed rows: {dict(result.reasons)}")
        splits.append(resize_task_images(result.tasks, recipe.data.min_pixels, recipe.data.max_pixels))
    train, held_out = splits
    overlap = {t.task_id for t in train} & {t.task_id for t in held_out}
    if overlap:
        raise ValueError(f"data: {len(overlap)} task ids are in both train and eval, e.g. {sorted(overlap)[:3]}")
    random.Random(recipe.seed).shuffle(train)
    return train, held_out[: recipe.data.eval_size]


def saved_by_loop(train, start: int) -> bool:
    """True when the training loop already checkpointed the last step (``checkpoint_every`` divides
    the step count and at least one step ran), so the run does not write it twice."""
    every, end = train.checkpoint_every, train.steps
    return bool(every) and end > start and end % every == 0


def earlier_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of the metrics file an earlier attempt of the run left (kept on resume, not overwritten)."""
    import pyarrow.parquet as pq

    path = run_dir / "metrics.parquet"
    return pq.read_table(path).to_pylist() if path.is_file() else []


def settle(recipe: Recipe, environ: Mapping[str, str] | None = None) -> Recipe:
    """``recipe`` as this process will run it: ``output.dir`` absolute (a relative one is refused
    under ``ray job submit``, see :mod:`cluster.storage`), and a job that names no cluster address
    joins the cluster it was submitted to instead of starting a Ray of its own. Idempotent; runs
    before Ray starts, so a bad run directory costs nothing."""
    from cluster.storage import resolve_run_dir, under_ray_job

    in_job = under_ray_job(environ)
    run_dir = resolve_run_dir(recipe.output.dir.format(name=recipe.name), in_job)
    update = {"output": recipe.output.model_copy(update={"dir": str(run_dir)})}
    if in_job and recipe.cluster.address is None:
        update["cluster"] = recipe.cluster.model_copy(update={"address": "auto"})
    return recipe.model_copy(update=update)


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory (its ``.lock``); nothing of it was touched."""


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` (an exclusive ``flock``, with the holder's pid in the file) for the
    block. Raises :class:`RunDirBusy`, naming the directory and the holder, when another process
    holds it; the kernel drops the lock when its holder exits or dies, so a stale file never blocks."""
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirBusy(f"output.dir {run_dir} is in use by another run (pid {holder}); give this run "
                             f"another output.dir or wait for that one to end") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass
class LocalRay:
    """The single-node Ray this process started, and its watchdog (:mod:`cluster.reaper`)."""

    session_dir: str
    """Ray's session directory (``/tmp/ray/session_...``): the services name it on their command line."""
    watchdog: subprocess.Popen
    """The reaper process: it stops the session's processes once this process is gone or done."""

    def shutdown(self) -> None:
        """``ray.shutdown()``, then the watchdog sweeps any process of the session left and exits."""
        import ray

        try:
            ray.shutdown()
        finally:
            reaper.release(self.watchdog)


class Terminated(BaseException):
    """SIGTERM arrived (:func:`unwind_on_sigterm`). A BaseException, so no ``except Exception`` keeps it."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def unwind_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Terminated` in the main thread, so the run unwinds as on an
    error (actors stopped, Ray shut down, trackers closed as failed). Called once Ray is up:
    ``ray.init`` replaces the handler (Ray's core worker aborts the process on SIGTERM)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)


def init_ray(recipe: Recipe) -> LocalRay | None:
    """Connect to Ray; returns the local instance this call started (to shut down later), else None.
    Either way SIGTERM then unwinds the run (:func:`unwind_on_sigterm`)."""
    import ray

    if ray.is_initialized():
        return None
    if recipe.cluster.address:
        ray.init(address=recipe.cluster.address, log_to_driver=True)
        unwind_on_sigterm()
        return None
    # address="local": always a new instance; with None, ray.init joins the cluster named in
    # /tmp/ray/ray_current_cluster (the last `ray start` or ray.cluster_utils.Cluster of anyone)
    dashboard = recipe.cluster.dashboard
    context = ray.init(address="local", num_cpus=recipe.cluster.num_cpus, include_dashboard=dashboard,
                       dashboard_host="127.0.0.1", log_to_driver=False, configure_logging=False)
    session_dir = context.address_info["session_dir"]
    local = LocalRay(session_dir, reaper.watch(os.getpid(), session_dir))
    unwind_on_sigterm()
    if dashboard:
        info = context.address_info
        print(f"[duet] Ray dashboard: http://{context.dashboard_url}  Prometheus metrics: "
              f"http://{info['node_ip_address']}:{info['metrics_export_port']}/metrics", flush=True)
    return local


@dataclass
class LiveRun:
    """A run whose actors are up: its driver and its data."""

    driver: Any
    """The :class:`cluster.driver.Driver` over the run's actors."""
    train_items: list[Any]
    eval_items: list[Any]
    """Held-out items (tasks or env seeds) of the evaluations."""


@contextmanager
def live_run(recipe: Recipe, log, models: Mapping[str, Path], publish: bool = True) -> Iterator[LiveRun]:
    """The run lifecycle shared by ``duet train`` and the benchmark: start (or join) Ray, load the
    data, place and start every actor (:func:`cluster.assemble.build_runtime`; ``publish=False`` on
    resume), yield; then stop the actors and the Ray this call started, whatever happened."""
    from cluster.assemble import build_runtime

    local = init_ray(recipe)
    try:
        train_items, eval_items = load_items(recipe, log)
        log.event(f"run {recipe.name}: {len(train_items)} training items, {len(eval_items)} held out; "
                  f"run directory {recipe.run_dir()}")
        driver, teardown = build_runtime(recipe, train_items, log, models, publish=publish, eval_items=eval_items)
        try:
            yield LiveRun(driver, train_items, eval_items)
        finally:
            teardown()
    finally:
        if local is not None:
            local.shutdown()


def run_training(recipe: Recipe, resume: bool = False) -> RunSummary:
    """Run ``recipe`` end to end; see the module docstring. Raises :class:`RunDirBusy` (before Ray
    starts, nothing written) when another run holds ``output.dir``."""
    t0 = time.time()
    recipe = settle(recipe)
    models = resolve_models(recipe, MODELS_DIR)  # before Ray and the run directory: a missing model costs nothing
    run_dir = recipe.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(run_dir):  # before anything is written there
        return locked_run(recipe, models, resume, t0)


def locked_run(recipe: Recipe, models: Mapping[str, Path], resume: bool, t0: float) -> RunSummary:
    """:func:`run_training` once the run directory is held: the recipe, the run, the summary."""
    from cluster.plugin_faults import checkpoint_on_failure
    from cluster.progress import RunLog

    run_dir = recipe.run_dir()
    (run_dir / "recipe.json").write_text(recipe.model_dump_json(indent=2))
    earlier = earlier_rows(run_dir) if resume else []
    log = RunLog(run_dir, recipe.output.transcripts_per_step, recipe.output.progress, recipe.output.report,
                 loggers=recipe.output.loggers)
    try:
        with live_run(recipe, log, models, publish=not resume) as live:
            with checkpoint_on_failure(lambda step: live.driver.checkpoint(run_dir, step), run_dir):
                summary = train_run(live, recipe, log, earlier if resume else None, t0)
    except BaseException:
        log.close(failed=True)  # trackers finished (marked failed), the progress bar stopped
        raise
    log.write_summary(asdict(summary))
    log.close()
    return summary


def train_run(live: LiveRun, recipe: Recipe, log, earlier: list[dict[str, Any]] | None, t0: float) -> RunSummary:
    """Restore (``earlier``: the metrics rows of the resumed attempt) or evaluate the base model and
    warm start, then evaluate, train, checkpoint, evaluate; the run's summary."""
    from cluster.metrics import hold_for_export
    from cluster.plugin_faults import count_names
    from cluster.sft_data import sft_examples_for

    driver, eval_items, run_dir = live.driver, live.eval_items, recipe.run_dir()
    start = driver.restore(run_dir) if earlier is not None else 0
    log.rows[:0] = [r for r in earlier or () if r["step"] < start]  # events (-1) and steps before it
    log.trackers.completed(start)  # trackers: the resumed run's syncs and evaluations at step start
    if not driver.warm_started:  # a resumed run whose checkpoint came after them skips both
        driver.evaluate(eval_items, "base", 0)
        if recipe.train.sft.steps:
            driver.warm_start(sft_examples_for(recipe, live.train_items[: recipe.train.sft.num_examples]))
        driver.warm_started = True
    before = driver.evaluate(eval_items, "before_rl", start)
    log.begin_steps(start, recipe.train.steps)
    driver.train(start, recipe.train.steps, lambda step: driver.checkpoint(run_dir, step))
    if not saved_by_loop(recipe.train, start):
        driver.checkpoint(run_dir, recipe.train.steps)
    after = driver.evaluate(eval_items, "after_rl", recipe.train.steps)
    if before and after:
        log.event(f"held-out success before RL {before['success']:.3f} -> after RL "
                  f"{after['success']:.3f} ({100 * (after['success'] - before['success']):+.1f} points)")
    hold_for_export(recipe.output.metrics_flush_s, bool(recipe.cluster.address) or recipe.cluster.dashboard)
    counters = asdict(driver.counters) | count_names(driver.plugin_errors)  # plugin_errors/<kind>/<name>
    return RunSummary(True, recipe.train.steps, log.evals, counters, str(run_dir),
                      time.time() - t0, dict(driver.versions), driver.sync.served_versions())
