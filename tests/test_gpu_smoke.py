"""The prepared GPU smoke script (deploy/gpu_smoke.sh) runs its engine and probe stages on CPU:
``--cpu-dry-run`` exercises the stage functions' plumbing (offline model, learner step and adapter
export, vLLM engine with LoRA, the weight-sync probe scored on both sides) with device cpu, float32
and gloo, so the day a GPU is lent the script fails on the GPU, not on its own arguments.
In fp32 the probe gap must be below 1e-3 (measured here ~1e-6)."""

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
STAGE = re.compile(r"^\[smoke\] stage (\d): (OK|FAIL|SKIP) (.*)$", re.M)


def test_scripts_parse():
    subprocess.run(["bash", "-n", str(ROOT / "deploy" / "gpu_smoke.sh")], check=True)
    compile((ROOT / "deploy" / "gpu_smoke.py").read_text(), "gpu_smoke.py", "exec")


def test_cpu_dry_run_prints_stage_lines_and_a_small_probe_gap():
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "gpu_smoke.sh"), "--cpu-dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout
    print(out)
    stages = {int(n): (status, text) for n, status, text in STAGE.findall(out)}
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    assert sorted(stages) == [2, 3] and {s for s, _ in stages.values()} == {"OK"}, stages
    two = stages[2][1]
    assert "engine cpu/float32" in two and "adapter v1 loaded" in two and "4 samples with LoRA" in two
    assert int(re.search(r"(\d+) tokens in", two).group(1)) > 0
    three = stages[3][1]
    gap = float(re.search(r"max\|vLLM - learner\| = (\S+) with the adapter", three).group(1))
    gap_base = float(re.search(r", (\S+) base model", three).group(1))
    effect = float(re.search(r"adapter moves the probe by (\S+);", three).group(1))
    assert 0.0 <= gap < 1e-3 and 0.0 <= gap_base < 1e-3, three
    assert effect > 10 * gap, three  # the adapter changed the probe far beyond the engine/learner gap
    assert re.search(r"done in \d+s: all stages OK \(2 3\)", out)


def test_a_failing_stage_makes_the_script_fail():
    """Stage 1 on a machine without CUDA fails (with its reason), and so does the script."""
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "gpu_smoke.sh"), "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    stages = {int(n): (status, text) for n, status, text in STAGE.findall(proc.stdout)}
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: stage 1 passes here")
    assert proc.returncode == 1, proc.stdout
    assert stages[1][0] == "FAIL" and "torch.cuda.is_available() is False" in stages[1][1], proc.stdout
    assert "FAILED stages 1" in proc.stdout
