"""A local data-parallel world without Ray: N spawned processes, one per rank, each keeping state
between calls. Used by tests and single-machine scripts; ``cluster/`` uses Ray actors instead.
:class:`LocalRanks` runs a learner group's ranks there (:class:`LocalLearnerGroup`).

    with LocalWorld(2) as world:
        world.run(make_learner, config, model_dir)      # fn(ctx, *args) on every rank
        metrics = world.run(train, batch)               # -> [result of rank 0, result of rank 1]

``fn`` must be importable by the child processes (a module-level function). ``ctx`` is a
:class:`RankContext` with the rank, world size, rendezvous address and a ``state`` dict that
persists across calls in that process. Values cross the process boundary pickled as bytes.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import socket
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Callable

from learner.group import LearnerGroup

__all__ = ["LocalWorld", "LocalRanks", "LocalLearnerGroup", "RankContext", "free_port"]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RankContext:
    rank: int
    world_size: int
    master_addr: str
    master_port: int
    state: dict = field(default_factory=dict)


def _worker(conn, rank: int, world_size: int, addr: str, port: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    ctx = RankContext(rank, world_size, addr, port)
    while True:
        msg = conn.recv_bytes()
        if msg == b"stop":
            return
        fn, args = pickle.loads(msg)
        try:
            out = (True, fn(ctx, *args))
        except BaseException:  # report, keep serving
            out = (False, traceback.format_exc())
        conn.send_bytes(pickle.dumps(out))


class LocalWorld:
    """``world_size`` spawned rank processes (see module doc)."""

    def __init__(self, world_size: int, timeout_s: float = 900.0, threads: int = 1, grace_s: float = 30.0) -> None:
        self.world_size, self.timeout_s, self.grace_s = world_size, timeout_s, grace_s
        self.master_addr, self.master_port = "127.0.0.1", free_port()
        ctx = mp.get_context("spawn")
        self._conns, self._procs = [], []
        for r in range(world_size):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, r, world_size, self.master_addr, self.master_port, threads),
                            daemon=True)
            p.start()
            self._conns.append(parent)
            self._procs.append(p)

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(ctx, *args)`` on every rank at once; the results by rank. Raises if any rank failed;
        when one failed and the others do not answer within ``grace_s`` (stuck in a collective), the
        world is torn down."""
        msg = pickle.dumps((fn, args))
        for c in self._conns:
            c.send_bytes(msg)
        results: dict[int, tuple[bool, Any]] = {}
        deadline = time.monotonic() + self.timeout_s
        while len(results) < self.world_size:
            failed = any(not ok for ok, _ in results.values())
            limit = min(deadline, time.monotonic() + self.grace_s) if failed else deadline
            pending = {c: r for r, c in enumerate(self._conns) if r not in results}
            ready = wait(list(pending), timeout=max(limit - time.monotonic(), 0.0))
            if not ready:
                self.close()
                errors = [f"rank {r}:\n{out}" for r, (ok, out) in sorted(results.items()) if not ok]
                raise TimeoutError("ranks " + str(sorted(pending.values())) + " did not answer; " + "\n".join(errors))
            for c in ready:
                results[pending[c]] = pickle.loads(c.recv_bytes())
        errors = [f"rank {r}:\n{out}" for r, (ok, out) in sorted(results.items()) if not ok]
        if errors:
            raise RuntimeError("\n".join(errors))
        return [results[r][1] for r in range(self.world_size)]

    def close(self) -> None:
        for c, p in zip(self._conns, self._procs):
            try:
                c.send_bytes(b"stop")
            except (BrokenPipeError, OSError):
                pass
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)

    def __enter__(self) -> LocalWorld:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- the ranks of learner groups on a LocalWorld (cluster.learner_group.RayRanks is the Ray one) ---


def _create(ctx: RankContext, key: str, config, model_dir: str) -> float:
    import torch

    from learner.device import local_process_device
    from learner.rank import LearnerRank

    device = local_process_device(config.backend, ctx.rank, torch.cuda.device_count())
    ctx.state[key] = LearnerRank(config, ctx.rank, ctx.world_size, ctx.master_addr, ctx.master_port, model_dir,
                                 device)
    return ctx.state[key].init_seconds


def _on_learner(ctx: RankContext, key: str, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(ctx.state[key], *args)


def _drop(ctx: RankContext, key: str) -> None:
    ctx.state.pop(key, None)


class LocalRanks:
    """The ranks of one learner group on a :class:`LocalWorld` (a :class:`learner.group.Ranks`):
    rank r's :class:`~learner.rank.LearnerRank` lives in the world's process r under ``key``, so
    several groups may share a world."""

    def __init__(self, world: LocalWorld, key: str, config, model_dir: str) -> None:
        self.world, self.key = world, key
        self.init_seconds = max(world.run(_create, key, config, str(model_dir)))

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """``fn(learner, *args)`` on every rank; the results by rank."""
        return self.world.run(_on_learner, self.key, fn, *args)

    def keep(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """:meth:`run` (the results are here already)."""
        return self.run(fn, *args)

    def close(self) -> None:
        """Drop the learner on every rank (frees its engine); the world keeps running."""
        self.world.run(_drop, self.key)


class LocalLearnerGroup(LearnerGroup):
    """A :class:`learner.group.LearnerGroup` on :class:`LocalRanks`."""

    def __init__(self, world: LocalWorld, key: str, config, model_dir: str) -> None:
        super().__init__(LocalRanks(world, key, config, model_dir))
