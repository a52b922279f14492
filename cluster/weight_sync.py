"""Weight-sync service: publish a LoRA adapter version once, load it on every rollout worker, prove it.

One sync of role R to version v::

    learner rank 0 --ray.put(artifact)--> object store; driver gets [ObjectRef] (LearnerGroup.adapter_ref)
    driver --publish(StoredArtifact(R, v, [ObjectRef]), expected)--> WeightSyncService
    for every registered worker (in parallel, via the transport, same object-store handle):
        verify + materialize to node-local disk -> load_adapter -> score(probe) -> SyncAck
    service: ack.version == v and |ack.probe_logprobs - expected| <= tol  =>  worker proven
    -> SyncReport(role, v, acks, latency_s, all_proven, failures)

The artifact (:class:`rollout.adapter_artifact.AdapterArtifact`) goes into the object store once,
on the learner's rank 0; the driver and the service hold only its reference, inside a
:class:`StoredArtifact` (with the role and version it was published as). ``publish`` also takes
the record itself, which it puts into the transport first. Ray's object store is per node: the first worker on a node that needs the object pulls it from the
owner's node, later workers on that node read the same local copy (shared memory), so bytes on the
network grow with the number of *nodes*, not workers (``tests/test_weight_sync_ray.py`` measures
it: syncing 4 workers on 2 nodes creates exactly 2 x the object's size in the cluster's object
stores, and ``ray.experimental.get_object_locations`` lists each node once). Each worker still
writes the files to its node's disk, but :func:`cluster.adapter_store.materialize` is idempotent:
all workers of a node share one directory.

The proof is end to end: the learner scores a fixed probe (token ids) with the adapter it exported
and passes the log-probs with the publish; every worker scores the same probe with the version it now
serves (``Engine.score``). Agreement within the publish's tolerance means the worker serves exactly
those weights. The tolerance follows the dtypes of the two sides (:func:`proof_tolerance`): vLLM and
the learner agree to ~1e-5 in fp32 but only to a few hundredths in bf16 (a log-prob near -7 has a
bf16 spacing of 1/32), so a bf16 run gets a looser bound; each report keeps the largest gap seen
(``SyncReport.probe_gap``) so the margin is visible per sync.

Reasoner and Observer (and "policy") are separate roles, each with its own version sequence; the
service keeps the handle of the latest proven artifact of each role so a new or restarted worker
can be brought up to date with :meth:`WeightSyncService.catch_up`. Failures (refused artifacts, probe disagreement,
stale versions, unreachable workers) are listed in the report, never dropped.

This module is plain Python (no Ray): :class:`LocalTransport` runs everything in-process for unit
tests; the Ray actor wrappers live in :mod:`cluster.actors`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Generic, Literal, Mapping, Protocol, Sequence, TypeVar

from cluster.adapter_store import gc_versions, materialize
from cluster.metrics import DuetMetrics
from rollout.adapter_artifact import AdapterArtifact
from rollout.engine.base import AdapterRef


@dataclass(frozen=True)
class Probe:
    """The fixed scoring probe of a sync: log p(target_ids | prompt_ids) under the synced adapter."""

    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    """(T,) scored tokens; a sync compares T log-probs per worker."""

    def __post_init__(self) -> None:
        if not self.target_ids:
            raise ValueError("Probe.target_ids: must not be empty")
        object.__setattr__(self, "prompt_ids", tuple(self.prompt_ids))
        object.__setattr__(self, "target_ids", tuple(self.target_ids))


@dataclass(frozen=True)
class SyncAck:
    """A worker's answer to one sync."""

    worker_id: str
    node_id: str
    role: str
    version: int
    """Version of ``role`` the worker serves after the attempt (the old one if it refused)."""
    probe_logprobs: tuple[float, ...]
    """(T,) the probe scored with the served version; empty if the role was never loaded."""
    load_s: float
    """Seconds spent materializing and loading (0 if already served)."""
    error: str = ""
    """Why the worker refused the artifact ("" when it loaded it)."""


@dataclass(frozen=True)
class SyncFailure:
    """A worker that did not prove the published version, and why."""

    worker_id: str
    reason: str
    """Human-readable cause, e.g. "stale: serves v3, expected v4"."""
    kind: Literal["unreachable", "timeout", "rejected", "stale", "probe", "no_answer"] = "rejected"
    """Machine-readable cause: "unreachable" means the worker process failed or died (Ray restarts
    it; the driver waits and syncs again), "timeout" that it did not answer in time, "rejected" that
    it refused the artifact, "stale" / "probe" that it answered but does not prove the version."""


@dataclass(frozen=True)
class SyncReport:
    """Outcome of syncing one role to one version across the registered workers."""

    role: str
    version: int
    acks: tuple[SyncAck, ...]
    latency_s: float
    """From the start of the publish to the last answer (or timeout)."""
    all_proven: bool
    """Every targeted worker answered, serves ``version`` and agreed on the probe."""
    failures: tuple[SyncFailure, ...] = ()
    probe_gap: float = 0.0
    """Largest |log-prob| gap to the learner's probe scores among the workers that served ``version``."""
    tolerance: float = 0.0
    """The bound the gap was judged against."""

    @property
    def proven(self) -> tuple[str, ...]:
        """Ids of the workers that proved the version."""
        failed = {f.worker_id for f in self.failures}
        return tuple(a.worker_id for a in self.acks if a.worker_id not in failed)


class Servable(Protocol):
    """What a worker offers to be synced (:class:`rollout.worker.RolloutWorker`; an engine also fits)."""

    def load_adapter(self, ref: AdapterRef) -> None: ...

    def adapter_versions(self) -> Mapping[str, int]: ...

    def score(self, prompt_ids: Sequence[int], target_ids: Sequence[int], adapter: str) -> list[float]: ...


@dataclass(frozen=True)
class StoredArtifact:
    """An adapter artifact already in the transport's store: the identity it was published under and
    its handle.

    Under Ray ``ref`` is what the learner group's rank 0 left in the object store
    (``learner.group.LearnerGroup.adapter_ref``: a one-element list holding the ObjectRef). Ray
    resolves only top-level arguments, so a ``StoredArtifact`` passed to ``publish.remote`` arrives
    with its reference intact, and the bytes go from the object store straight to the workers,
    never through the driver or the service. ``role`` and ``version`` are those the learner was
    asked for; every worker acknowledges the ones it found in the artifact, so a wrong claim fails
    the proof instead of passing silently.
    """

    role: str
    """Adapter name the artifact was built for."""
    version: int
    """Version the artifact was built as (>= 1)."""
    ref: object
    """Transport handle of the artifact: a Ray ObjectRef, alone or in a one-element list or tuple;
    in-process the artifact itself."""

    @classmethod
    def of(cls, artifact: AdapterArtifact, ref: object) -> StoredArtifact:
        """The stored form of ``artifact`` whose handle is ``ref``."""
        return cls(artifact.role, artifact.version, ref)


@dataclass(frozen=True)
class SyncSite:
    """Where a worker runs and keeps adapters."""

    worker_id: str
    node_id: str
    adapter_root: str
    """Node-local directory shared by the workers of the node (see :mod:`cluster.adapter_store`)."""
    keep_versions: int = 3
    """Versions per role kept on disk (>= 2 when workers share a node)."""


def apply_artifact(target: Servable, artifact: AdapterArtifact, probe: Probe, site: SyncSite,
                   clock: Callable[[], float] = time.perf_counter) -> SyncAck:
    """Worker side of a sync: verify and materialize, load (unless already served), probe, acknowledge.

    A refused artifact (:class:`AdapterRejected`: checksum, rank, older version; or ``ValueError``:
    the worker has no role using this adapter) is reported in the ack's ``error``; the worker keeps
    serving its previous version. The checksum is computed once per load (in :func:`materialize`).
    """
    t0, error = clock(), ""
    if target.adapter_versions().get(artifact.role, 0) != artifact.version:
        try:
            target.load_adapter(materialize(artifact, site.adapter_root))
        except ValueError as e:  # AdapterRejected is a ValueError
            error = str(e)
        gc_versions(site.adapter_root, artifact.role, site.keep_versions)
    load_s = clock() - t0
    version = target.adapter_versions().get(artifact.role, 0)
    logprobs = target.score(probe.prompt_ids, probe.target_ids, artifact.role) if version else []
    return SyncAck(site.worker_id, site.node_id, artifact.role, version, tuple(logprobs), load_s, error)


class AdapterHost:
    """A :class:`Servable` at a :class:`SyncSite`: what a worker process holds to answer syncs."""

    def __init__(self, target: Servable, site: SyncSite) -> None:
        self.target = target
        self.site = site

    def sync_adapter(self, artifact: AdapterArtifact, probe: Probe) -> SyncAck:
        return apply_artifact(self.target, artifact, probe, self.site)


W = TypeVar("W")


class SyncTransport(Protocol[W]):
    """Moves an artifact to workers of type ``W`` and collects their acks."""

    def put(self, artifact: AdapterArtifact) -> object:
        """Store the artifact once; return a handle every worker can fetch it by."""
        ...

    def fanout(self, workers: Mapping[str, W], handle: object, probe: Probe,
               timeout_s: float) -> dict[str, SyncAck | SyncFailure]:
        """Ask every worker to sync to the artifact behind ``handle``; one answer per worker id."""
        ...


class LocalTransport:
    """In-process transport over :class:`AdapterHost`-like objects (unit tests, single process)."""

    def put(self, artifact: AdapterArtifact) -> object:
        return artifact

    def fanout(self, workers: Mapping[str, AdapterHost], handle: object, probe: Probe,
               timeout_s: float) -> dict[str, SyncAck | SyncFailure]:
        out: dict[str, SyncAck | SyncFailure] = {}
        for wid, worker in workers.items():
            try:
                out[wid] = worker.sync_adapter(handle, probe)
            except Exception as e:  # a crashing worker is reported, not fatal to the sync
                out[wid] = SyncFailure(wid, f"unreachable: {type(e).__name__}: {e}", "unreachable")
        return out


@dataclass(frozen=True)
class _Latest:
    role: str
    version: int
    handle: object
    """Transport handle of the artifact (the service keeps no other copy of the bytes)."""
    expected: tuple[float, ...]
    tolerance: float


PROOF_TOLERANCE = {"float32": 1e-4, "bfloat16": 0.15, "float16": 0.02}
"""Largest |log-prob| gap that still proves a sync, by the less precise dtype of engine and learner.
fp32: measured within 1e-5 (stack.md), 1e-4 leaves room. bf16 (8-bit mantissa): both sides round
the logits and hidden states, each ~2^-8 relative; measured on CPU with the tiny Qwen2-VL (vLLM
bf16 vs the DeepSpeed learner in bf16, tests/test_e2e_bf16.py): 0.010, 0.026, 0.013 over 3 syncs,
so 0.15 leaves a margin for GPU kernels (FlashAttention has no fp32 path). fp16 has 3 more
mantissa bits. A GPU run whose gap exceeds these is reported, not silently accepted: set
``roles.<role>.proof_tolerance`` after reading the measured ``sync/<role>/probe_gap``."""

_DTYPE = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16", "auto": "bfloat16"}
"""Engine (vLLM names) and learner (``fp32``/``bf16``) dtypes on one scale; "auto" follows the
checkpoint, usually bf16 for released models, so it gets bf16's bound."""


def proof_tolerance(*dtypes: str) -> float:
    """The proof bound for a sync between sides of these dtypes: the loosest of their bounds."""
    return max(PROOF_TOLERANCE[_DTYPE[d]] for d in dtypes)


def probe_gap(answer: SyncAck, expected: Sequence[float]) -> float:
    """Largest |log-prob difference| between a worker's probe scores and the learner's."""
    return max((abs(a - b) for a, b in zip(answer.probe_logprobs, expected)), default=0.0)


def judge(answer: SyncAck | SyncFailure, version: int, expected: Sequence[float],
          tolerance: float, role: str | None = None) -> SyncFailure | None:
    """None if ``answer`` proves ``version`` (of ``role`` when given: served, probe within
    ``tolerance``), else the failure."""
    if isinstance(answer, SyncFailure):
        return answer
    wid = answer.worker_id
    if role is not None and answer.role != role:
        return SyncFailure(wid, f"rejected: the artifact is {answer.role!r}, published as {role!r}", "rejected")
    if answer.error:
        return SyncFailure(wid, f"rejected (serves v{answer.version}): {answer.error}", "rejected")
    if answer.version != version:
        return SyncFailure(wid, f"stale: serves v{answer.version}, expected v{version}", "stale")
    if len(answer.probe_logprobs) != len(expected):
        return SyncFailure(wid, f"probe length {len(answer.probe_logprobs)} != expected {len(expected)}", "probe")
    diff = probe_gap(answer, expected)
    if diff > tolerance:
        return SyncFailure(wid, f"probe mismatch: max |logprob diff| {diff:.3g} > tolerance {tolerance:.3g}",
                           "probe")
    return None


class WeightSyncService(Generic[W]):
    """Publishes adapter versions to registered workers and proves each worker serves them.

    Plain class; :mod:`cluster.actors` runs it as a Ray actor with a Ray transport. Not thread-safe:
    one sync at a time (a Ray actor serializes calls).
    """

    def __init__(self, transport: SyncTransport[W], probe: Probe, tolerance: float = 1e-4,
                 timeout_s: float = 120.0, metrics: DuetMetrics | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.transport = transport
        self.probe = probe
        self.tolerance = tolerance
        self.timeout_s = timeout_s
        self.metrics = metrics or DuetMetrics()
        self.clock = clock
        self._workers: dict[str, W] = {}
        self._served: dict[str, dict[str, int]] = {}
        self._latest: dict[str, _Latest] = {}

    def register(self, worker_id: str, worker: W) -> None:
        """Add (or replace) a worker; call :meth:`catch_up` to bring it to the current versions."""
        self._workers[worker_id] = worker
        self._served.setdefault(worker_id, {})

    def unregister(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)
        self._served.pop(worker_id, None)

    def publish(self, artifact: AdapterArtifact | StoredArtifact, expected_logprobs: Sequence[float],
                tolerance: float | None = None) -> SyncReport:
        """Sync every registered worker to ``artifact``; it becomes the role's latest version once at
        least one worker proved it (an artifact every worker refused is not kept for catch-up).
        ``artifact`` is the record itself (put into the transport here) or a :class:`StoredArtifact`
        already in the store; ``tolerance`` bounds the probe gap (None: the service's default)."""
        t0 = self.clock()
        stored = artifact if isinstance(artifact, StoredArtifact) else StoredArtifact.of(
            artifact, self.transport.put(artifact))
        latest = _Latest(stored.role, stored.version, stored.ref, tuple(expected_logprobs),
                         self.tolerance if tolerance is None else tolerance)
        report = self._sync(latest, self._workers, t0)
        if report.proven:
            self._latest[stored.role] = latest
            self.metrics.adapter_version(stored.role, stored.version)
        return report

    def catch_up(self, worker_id: str) -> list[SyncReport]:
        """Bring one worker to the latest version of every role (one report per role)."""
        worker = {worker_id: self._workers[worker_id]}
        return [self._sync(latest, worker, self.clock()) for _, latest in sorted(self._latest.items())]

    def _sync(self, latest: _Latest, workers: Mapping[str, W], t0: float) -> SyncReport:
        answers = self.transport.fanout(workers, latest.handle, self.probe, self.timeout_s)
        version, role = latest.version, latest.role
        failures = []
        for wid in workers:
            answer = answers.get(wid, SyncFailure(wid, "no answer", "no_answer"))
            failure = judge(answer, version, latest.expected, latest.tolerance, role)
            self._record(wid, role, answer)
            failures += [failure] if failure else []
        latency = self.clock() - t0
        self.metrics.sync_latency(role, latency)
        acks = tuple(a for a in answers.values() if isinstance(a, SyncAck))
        gap = max((probe_gap(a, latest.expected) for a in acks if a.version == version and not a.error), default=0.0)
        return SyncReport(role, version, acks, latency, not failures, tuple(failures), gap, latest.tolerance)

    def _record(self, worker_id: str, role: str, answer: SyncAck | SyncFailure) -> None:
        if isinstance(answer, SyncAck):
            self._served.setdefault(worker_id, {})[role] = answer.version
        else:  # unknown state: forget what we believed it served
            self._served[worker_id] = {}

    def served_versions(self) -> dict[str, dict[str, int]]:
        """worker id -> role -> version it acknowledged serving (as last reported)."""
        return {w: dict(v) for w, v in self._served.items()}

    def latest_versions(self) -> dict[str, int]:
        """role -> latest proven version."""
        return {r: latest.version for r, latest in self._latest.items()}

    def latest_handle(self, role: str) -> object:
        """Transport handle of the role's latest artifact (a Ray ObjectRef under Ray)."""
        return self._latest[role].handle
