"""One stage of the GPU smoke checks (issue 10, part 5), run in its own process by deploy/gpu_smoke.sh.

    python deploy/gpu_smoke.py STAGE [--cpu] [--work DIR]

Each stage prints exactly one line ``[smoke] stage N: OK|FAIL <what> <figures> (<seconds>s)`` and
exits 0 (OK) or 1 (FAIL). One process per stage: vLLM freezes its environment at the first engine of
a process, and a stage's GPU memory is released when its process ends.

Stages (GPU settings; ``--cpu``: device cpu, float32, fp32 learner over gloo, no GPU fractions):

1. CUDA import: torch.cuda, the device's name and memory, NCCL's version, ``import vllm``.
2. One vLLM engine (``VLLMEngine``, gpu_memory_utilization 0.3) on the offline tiny Qwen2-VL with
   LoRA: the learner (``LocalLearnerGroup``) takes one GRPO step and exports its adapter; the engine
   loads it and samples 4 replies to an image prompt with it.
3. The probe gap: the same exported adapter scored on the weight-sync probe (``cluster.assemble.PROBE``)
   by vLLM (``Engine.score``) and by the learner (``learner.update.probe_batch``); prints
   max |logprob difference| with the adapter and with the base model.
4. Two learner ranks on one GPU: ``cluster.learner_group.LearnerGroup`` with 2 ranks x 0.5 GPU as
   Ray actors, backend "auto" (gloo for ranks sharing a GPU: NCCL refuses them), bf16, one train
   step, the adapter gathered from rank 0.
5. Two engines on one GPU in one process (what a rollout worker of the IMMO recipe holds: a text LM
   and a VLM), gpu_memory_utilization 0.3 each, both generating.
6. One short run of the default recipe in bf16 through the real CLI (``duet train default --set ...``:
   cuda/bf16/nccl, 0.5 GPU per rollout worker and learner rank, 4 RL steps, a 2-step warm start).

Nothing is downloaded: the models are the offline ones (``deploy.offline_models``, built by
``deploy/setup.sh`` or the image into ``$DUET_MODELS``) and HF_HUB_OFFLINE is set.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODELS = Path(os.environ.get("DUET_MODELS", ROOT / ".cache" / "models"))
VLM, TEXT_LM = "builtin:tiny-qwen2-vl", "builtin:tiny-text-lm"
GAP_LIMIT = {"float32": 1e-3, "bfloat16": 0.1}
"""Stage 3 passes when the probe gap is below this (fp32: CPU measured ~1e-6; bf16: CPU measured
~0.02, GPU unknown -- the figure is what the stage is for)."""


@dataclass(frozen=True)
class Mode:
    """Device settings of the stages: GPU (default) or the CPU dry run."""

    cpu: bool

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"

    @property
    def dtype(self) -> str:
        return "float32" if self.cpu else "bfloat16"

    @property
    def learner_dtype(self) -> str:
        return "fp32" if self.cpu else "bf16"

    @property
    def backend(self) -> str:
        return "gloo" if self.cpu else "nccl"

    def engine_config(self, **kw):
        from rollout.engine.config import EngineConfig

        base = dict(device=self.device, dtype=self.dtype, gpu_memory_utilization=0.3, kv_cache_gib=0.25,
                    max_model_len=512, max_lora_rank=8, max_loras=1, enforce_eager=True, seed=0)
        return EngineConfig(**(base | kw))

    def learner_config(self, backend: str | None = None):
        from learner.config import AlgoConfig, LearnerConfig, LoraConfig, OptimConfig

        return LearnerConfig(role="policy", dtype=self.learner_dtype, backend=backend or self.backend, micro_batch_size=4,
                             lora=LoraConfig(r=8, alpha=16), optim=OptimConfig(lr=2e-2),
                             algo=AlgoConfig(advantage_estimator="grpo"))


def model_dir(ref: str) -> str:
    from deploy.offline_models import resolve_model

    return str(resolve_model(ref, MODELS))


def random_batch(seed: int, n: int = 8):
    """GRPO episodes of random text tokens (ids valid in the tiny models' 3769-token vocabulary)."""
    from rollout.episode_arrow import EpisodeBatch
    from rollout.types import Episode, Turn

    rng = random.Random(seed)
    episodes = []
    for i in range(n):
        prompt = tuple(rng.randrange(20, 3000) for _ in range(rng.randrange(4, 10)))
        out = tuple(rng.randrange(20, 3000) for _ in range(rng.randrange(3, 8)))
        turn = Turn("policy", prompt, out, tuple(-8.0 for _ in out), adapter_version=0)
        episodes.append(Episode(f"e{i}", f"g{i // 4}", "t", (turn,), reward=float(i % 2)))
    return EpisodeBatch(tuple(episodes))


def png(seed: int = 1, h: int = 56, w: int = 84) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def trained_adapter(mode: Mode, world, out_dir: Path):
    """A learner on ``world`` that took one GRPO step, and its exported adapter (version 1)."""
    from learner.local_world import LocalLearnerGroup
    from learner.metrics import flatten

    learner = LocalLearnerGroup(world, "policy", mode.learner_config(), model_dir(VLM))
    metrics = flatten(learner.train_step(random_batch(0)))
    exported = learner.export_adapter(out_dir / "policy" / "v1", version=1)
    return learner, metrics, exported


def gpu_memory() -> str:
    import torch

    if not torch.cuda.is_available():
        return ""
    free, total = torch.cuda.mem_get_info()
    return f", GPU memory used {(total - free) / 2**30:.1f}/{total / 2**30:.1f} GiB"


# ---- stages ----------------------------------------------------------------------------------------

def stage1(mode: Mode, work: Path) -> str:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} (CUDA {torch.version.cuda}): torch.cuda.is_available() is False")
    props = torch.cuda.get_device_properties(0)
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "?"
    import vllm

    return (f"torch {torch.__version__} CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s), "
            f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}), "
            f"NCCL {nccl}, bf16 {torch.cuda.is_bf16_supported()}, vllm {vllm.__version__}")


def stage2(mode: Mode, work: Path) -> str:
    from learner.local_world import LocalWorld
    from rollout.chat import ChatFormat
    from rollout.engine.base import AdapterRef, Request, Sampling
    from rollout.engine.vllm_engine import VLLMEngine

    with LocalWorld(1) as world:
        _, metrics, exported = trained_adapter(mode, world, work / "adapters2")
    engine = VLLMEngine(model_dir(VLM), mode.engine_config())
    engine.load_adapter(AdapterRef("policy", 1, exported.path, exported.sha256))
    fmt = ChatFormat(engine.tokenizer)
    prompt = fmt.prompt(None, "What colour is the picture?", num_images=1)
    t0 = time.perf_counter()
    samples = engine.generate([Request(tuple(prompt), (png(),), "policy", Sampling(n=4, temperature=1.0, max_tokens=16, seed=0))])[0]
    gen_s = time.perf_counter() - t0
    tokens = sum(len(c.output_ids) for c in samples)
    if len(samples) != 4 or {c.adapter_version for c in samples} != {1} or tokens == 0:
        raise RuntimeError(f"bad samples: {[(c.adapter_version, len(c.output_ids)) for c in samples]}")
    if not all(math.isfinite(lp) for c in samples for lp in c.logprobs):
        raise RuntimeError("non-finite sampled log-probs")
    return (f"engine {mode.device}/{mode.dtype} up in {engine.start_s:.1f}s, adapter v1 loaded "
            f"(learner loss {metrics.get('loss/total', float('nan')):.4f}), 4 samples with LoRA, {tokens} tokens "
            f"in {gen_s:.2f}s, image prompt of {len(samples[0].prompt_ids)} tokens{gpu_memory()}")


def stage3(mode: Mode, work: Path) -> str:
    from cluster.assemble import PROBE
    from learner.update import probe_batch
    from learner.local_world import LocalWorld
    from rollout.engine.base import AdapterRef
    from rollout.engine.vllm_engine import VLLMEngine

    with LocalWorld(1) as world:
        learner, _, exported = trained_adapter(mode, world, work / "adapters3")
        batch = probe_batch(PROBE, "policy")
        lp_adapter = learner.logprobs(batch)[0]
        lp_base = learner.logprobs(batch, use_adapter=False)[0]
        engine = VLLMEngine(model_dir(VLM), mode.engine_config())
        engine.load_adapter(AdapterRef("policy", 1, exported.path, exported.sha256))
        vl_adapter = engine.score(PROBE.prompt_ids, PROBE.target_ids, "policy")
        vl_base = engine.score(PROBE.prompt_ids, PROBE.target_ids, None)
    gap = max(abs(a - b) for a, b in zip(vl_adapter, lp_adapter))
    gap_base = max(abs(a - b) for a, b in zip(vl_base, lp_base))
    effect = max(abs(a - b) for a, b in zip(lp_adapter, lp_base))
    line = (f"probe gap max|vLLM - learner| = {gap:.3e} with the adapter, {gap_base:.3e} base model, "
            f"over {len(PROBE.target_ids)} tokens ({mode.dtype}; adapter moves the probe by {effect:.3e}; "
            f"limit {GAP_LIMIT[mode.dtype]:g})")
    if not (len(vl_adapter) == len(lp_adapter) == len(PROBE.target_ids)) or not gap < GAP_LIMIT[mode.dtype]:
        raise RuntimeError(line)
    return line


def stage4(mode: Mode, work: Path) -> str:
    import ray

    from cluster.learner_group import LearnerGroup
    from learner.metrics import flatten

    gpus = 0.0 if mode.cpu else 0.5
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True, configure_logging=False)
    try:
        t0 = time.perf_counter()
        # backend "auto": nccl on a rank's own GPU, gloo when ranks share one -- NCCL refuses two ranks
        # of one world on a device ("Duplicate GPU detected"), and learner.device refuses an explicit
        # nccl there. SMOKE_LEARNER_BACKEND=nccl shows that refusal.
        backend = os.environ.get("SMOKE_LEARNER_BACKEND", "auto")
        group = LearnerGroup("policy", mode.learner_config(backend), model_dir(VLM), ranks=2, num_cpus=1, num_gpus=gpus)
        init_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = flatten(group.train_step(random_batch(0)))
        step_s = time.perf_counter() - t0
        files = ray.get(group.adapter_ref(1)[0]).files  # put by rank 0's actor
        group.shutdown()
    finally:
        ray.shutdown()
    if "adapter_model.safetensors" not in files or not math.isfinite(metrics.get("loss/total", float("nan"))):
        raise RuntimeError(f"bad step: files {sorted(files)}, metrics {metrics}")
    return (f"2 learner ranks x {gpus:g} GPU (backend {backend}, {mode.learner_dtype}) up in {init_s:.1f}s, "
            f"one step in {step_s:.2f}s: loss {metrics['loss/total']:.4f}, grad norm "
            f"{metrics.get('optim/grad_norm', float('nan')):.3e}, {metrics.get('batch/samples', 0):.0f} samples, "
            f"adapter {len(files['adapter_model.safetensors'])} bytes from rank 0")


def stage5(mode: Mode, work: Path) -> str:
    from rollout.chat import ChatFormat
    from rollout.engine.base import Request, Sampling
    from rollout.engine.vllm_engine import VLLMEngine

    text = VLLMEngine(model_dir(TEXT_LM), mode.engine_config(max_images_per_prompt=0))
    mem_one = gpu_memory()
    vision = VLLMEngine(model_dir(VLM), mode.engine_config())
    mem_two = gpu_memory()
    sampling = Sampling(n=2, temperature=1.0, max_tokens=12, seed=0)
    a = text.generate([Request(tuple(ChatFormat(text.tokenizer).prompt(None, "Ask about the image.")), (), None, sampling)])[0]
    b = vision.generate([Request(tuple(ChatFormat(vision.tokenizer).prompt(None, "Describe it.", num_images=1)),
                                 (png(),), None, sampling)])[0]
    tokens = [sum(len(c.output_ids) for c in x) for x in (a, b)]
    if min(tokens) == 0:
        raise RuntimeError(f"an engine produced no tokens: {tokens}")
    return (f"text LM engine up in {text.start_s:.1f}s{mem_one}; VLM engine up in {vision.start_s:.1f}s{mem_two}; "
            f"both generated ({tokens[0]} + {tokens[1]} tokens), gpu_memory_utilization 0.3 each")


def stage6(mode: Mode, work: Path) -> str:
    gpu = [] if mode.cpu else [
        "roles.policy.engine.device=cuda", "roles.policy.engine.dtype=bfloat16",
        "roles.policy.engine.gpu_memory_utilization=0.3",
        "roles.policy.learner.dtype=bf16", "roles.policy.learner.backend=nccl",
        "cluster.rollout_gpus=0.5", "cluster.learner_gpus=0.5"]
    overrides = ["name=gpu_smoke", f"output.dir={work}/runs/{{name}}", "train.steps=4", "train.sft.steps=2",
                 "data.tasks_per_step=8", "data.eval_size=32", "output.progress=true", *gpu]
    cmd = [sys.executable, "-m", "cluster.cli", "train", "default", *[x for o in overrides for x in ("--set", o)]]
    print("[smoke] stage 6 runs: " + " ".join(cmd[1:]), flush=True)
    log = work / "stage6.log"
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
    summary_file = work / "runs" / "gpu_smoke" / "summary.json"
    if proc.returncode != 0 or not summary_file.is_file():
        tail = log.read_text()[-1500:]
        raise RuntimeError(f"duet train exited {proc.returncode}; last output:\n{tail}")
    s = json.loads(summary_file.read_text())
    ev = s.get("eval", {})
    succ = {k: v.get("success") for k, v in ev.items() if isinstance(v, dict)}
    if not s.get("completed"):
        raise RuntimeError(f"run not completed: {s}")
    return (f"default recipe ({mode.dtype}/{mode.learner_dtype}/{mode.backend}) {s.get('steps')} steps in "
            f"{s.get('wall_s', float('nan')):.0f}s, versions {s.get('versions')}, served {s.get('served')}, "
            f"held-out success {succ}")


STAGES: dict[int, tuple[str, Callable[[Mode, Path], str]]] = {
    1: ("CUDA import", stage1), 2: ("one engine with LoRA", stage2), 3: ("bf16 probe gap", stage3),
    4: ("two learner ranks on one GPU", stage4), 5: ("two engines on one GPU", stage5),
    6: ("default recipe in bf16", stage6),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", type=int, choices=sorted(STAGES))
    p.add_argument("--cpu", action="store_true", help="CPU settings (device cpu, float32, gloo)")
    p.add_argument("--work", default=None, help="scratch directory (default: a new temporary one)")
    args = p.parse_args(argv)
    mode = Mode(cpu=args.cpu)
    work = Path(args.work or tempfile.mkdtemp(prefix="duet-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    name, fn = STAGES[args.stage]
    t0 = time.perf_counter()
    try:
        line = fn(mode, work)
    except BaseException as err:  # noqa: BLE001 - every failure becomes the stage's FAIL line
        traceback.print_exc()
        msg = " ".join(f"{type(err).__name__}: {err}".split())[:600]
        print(f"[smoke] stage {args.stage}: FAIL {name}: {msg} ({time.perf_counter() - t0:.1f}s)", flush=True)
        return 1
    print(f"[smoke] stage {args.stage}: OK {name}: {line} ({time.perf_counter() - t0:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
