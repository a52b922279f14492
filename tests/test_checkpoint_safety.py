"""Checkpoints are safe to load (issue 14, item 7).

* Unit (no Ray, no DeepSpeed): every committed step carries a manifest (size and sha256 of each of
  its files); a flipped byte, a truncated, missing or extra file is detected, named in one log line,
  and the previous step is used; an old step without a manifest is accepted only where LATEST names it.
  The Driver's restore goes through it: a corrupted newest checkpoint resumes from the one before.
* Integration (real DeepSpeed, tiny model, one rank): a ZeRO-2 checkpoint loaded through the
  restricted unpickler resumes to the same next update; a pickle whose ``__reduce__`` would write a
  marker file, put in the RNG file or in DeepSpeed's optimizer file, is refused and never runs.
"""

import json
import os
from pathlib import Path

import pytest

from cluster.checkpoints import MANIFEST, commit, usable_checkpoint, verify


def write_step(run_dir: Path, step: int, payload: bytes = b"weights") -> Path:
    """A committed checkpoint step with a driver.json and one role file of ``payload``."""
    d = run_dir / "checkpoints" / f"step_{step:06d}"
    (d / "policy").mkdir(parents=True)
    (d / "policy" / "weights.bin").write_bytes(payload * 100)
    (d / "driver.json").write_text(json.dumps({"step": step}))
    commit(run_dir, d)
    return d


@pytest.fixture
def run(tmp_path):
    """A run directory with committed steps 2 and 4 (LATEST -> step_000004)."""
    return tmp_path, write_step(tmp_path, 2), write_step(tmp_path, 4)


@pytest.mark.unit
def test_commit_writes_the_manifest_then_latest(run):
    run_dir, _, newest = run
    listed = json.loads((newest / MANIFEST).read_text())["files"]
    assert sorted(listed) == ["driver.json", "policy/weights.bin"]
    assert listed["policy/weights.bin"]["size"] == 700
    assert (run_dir / "checkpoints" / "LATEST").read_text() == "step_000004"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["LATEST", "step_000002", "step_000004"]
    logged = []
    assert usable_checkpoint(run_dir, logged.append) == newest and logged == []


def flip_byte(path: Path, at: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.unit
@pytest.mark.parametrize("damage, phrase", [
    (lambda d: flip_byte(d / "policy" / "weights.bin"), "policy/weights.bin checksum mismatch"),
    (lambda d: os.truncate(d / "policy" / "weights.bin", 300), "policy/weights.bin has 300 bytes, the manifest says 700"),
    (lambda d: (d / "driver.json").unlink(), "driver.json missing"),
    (lambda d: (d / "policy" / "rng_rank1.pt").write_bytes(b"x"), "policy/rng_rank1.pt not in the manifest"),
    (lambda d: (d / MANIFEST).write_text("{not json"), f"{MANIFEST} unreadable"),
])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(run, damage, phrase):
    run_dir, previous, newest = run
    damage(newest)
    logged = []
    assert usable_checkpoint(run_dir, logged.append) == previous
    assert len(logged) == 1 and logged[0].startswith(f"checkpoint {newest} is not usable: {phrase}")
    assert logged[0].endswith("trying the previous one")


@pytest.mark.unit
def test_no_usable_checkpoint_names_each_problem(run):
    run_dir, previous, newest = run
    flip_byte(newest / "driver.json", 2)
    (previous / "policy" / "weights.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no usable checkpoint") as err:
        usable_checkpoint(run_dir, lambda _: None)
    assert "step_000004: driver.json checksum mismatch" in str(err.value)
    assert "step_000002: policy/weights.bin missing" in str(err.value)


@pytest.mark.unit
def test_a_step_above_latest_is_an_earlier_runs_and_never_taken(tmp_path):
    # an earlier run in this directory reached step 8; this one (a fresh run) has sealed steps 0 and
    # 2 (LATEST -> step_000002); step 2 is damaged: the fallback is this run's step 0, not step 8
    write_step(tmp_path, 8, b"old run")
    write_step(tmp_path, 0)
    damaged = write_step(tmp_path, 2)
    flip_byte(damaged / "policy" / "weights.bin")
    logged = []
    assert usable_checkpoint(tmp_path, logged.append) == tmp_path / "checkpoints" / "step_000000"
    assert len(logged) == 2 and "step_000008 is newer than LATEST" in logged[0] and "step_000002 is not usable" in logged[1]


@pytest.mark.unit
def test_no_checkpoint_at_all(tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint in"):
        usable_checkpoint(tmp_path, lambda _: None)


@pytest.mark.unit
def test_old_checkpoints_without_manifest(run):
    """The step LATEST names (older versions wrote LATEST last) is accepted with a warning; a newer
    step without a manifest is an interrupted save, skipped."""
    run_dir, _, newest = run
    (newest / MANIFEST).unlink()
    logged = []
    assert usable_checkpoint(run_dir, logged.append) == newest
    assert logged == [f"checkpoint {newest} has no {MANIFEST} (written by an older version): its files are not verified"]
    interrupted = run_dir / "checkpoints" / "step_000006"
    (interrupted / "policy").mkdir(parents=True)
    logged.clear()
    assert usable_checkpoint(run_dir, logged.append) == newest
    assert logged[0] == (f"checkpoint {interrupted} is newer than LATEST (step_000004): an interrupted save or an "
                         "earlier run's; not used")


@pytest.mark.unit
def test_verify_accepts_a_whole_step(run):
    assert verify(run[1]) is None and verify(run[2]) is None


@pytest.mark.unit
def test_driver_restore_skips_a_corrupted_checkpoint(tmp_path):
    """Driver.restore resumes from step 2 when step 4's driver.json was damaged after the save."""
    from test_driver import FakeFleet, FakeLearner, FakeLog, FakeSync, make

    from cluster.driver import Driver

    driver, *_ = make(steps=4, **{"train.checkpoint_every": 2})
    driver.train(0, 4, lambda step: driver.checkpoint(tmp_path, step))
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "step_000004" / MANIFEST).is_file() and (ckpts / "step_000002" / MANIFEST).is_file()
    flip_byte(ckpts / "step_000004" / "driver.json", 3)
    fleet = FakeFleet(group=2)
    fresh, log = FakeLearner(), FakeLog()
    resumed = Driver(driver.recipe, fleet, {"policy": fresh}, FakeSync(fleet), log, driver.train_items,
                     {"policy": "policy"})
    assert resumed.restore(tmp_path) == 2
    assert fresh.loaded == [str(ckpts / "step_000002" / "policy")]
    assert log.events[0] == (f"checkpoint {ckpts / 'step_000004'} is not usable: driver.json checksum mismatch "
                             "(sha256 differs from the manifest); trying the previous one")
    assert log.events[-1].startswith(f"resumed from {ckpts / 'step_000002'} at step 2")


# ---- real DeepSpeed: restricted unpickling ---------------------------------------------------------


class WritesMarker:
    """Unpickling this runs ``os.system("touch <marker>")`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def saved(models_dir, tmp_path_factory):
    """A one-rank ZeRO-2 learner after one update, checkpointed; the next update it makes; its world."""
    from test_learner_training import random_batch

    from learner.config import AlgoConfig, LearnerConfig, LoraConfig, OptimConfig
    from learner.local_world import LocalLearnerGroup, LocalWorld

    cfg = LearnerConfig(zero_stage=2, micro_batch_size=2, lora=LoraConfig(dropout=0.1),
                        algo=AlgoConfig(advantage_estimator="grpo", normalize_rewards=True),
                        optim=OptimConfig(lr=5e-3, schedule="cosine", warmup_steps=2, total_steps=6))
    ckpt, model = tmp_path_factory.mktemp("safe") / "ckpt", str(models_dir / "tiny-text-lm")
    with LocalWorld(1) as world:
        a = LocalLearnerGroup(world, "a", cfg, model)
        a.train_step(random_batch(20))
        a.save_checkpoint(ckpt)
        want = a.train_step(random_batch(21))
        a.shutdown()
        yield {"ckpt": ckpt, "want": want, "new": lambda name: LocalLearnerGroup(world, name, cfg, model)}


@pytest.mark.integration
def test_a_zero2_checkpoint_resumes_to_the_same_update(saved):
    from learner.metrics import flatten
    from test_learner_training import random_batch

    b = saved["new"]("b")
    b.load_checkpoint(saved["ckpt"])
    got = b.train_step(random_batch(21))
    b.shutdown()
    for k in ("loss/total", "loss/policy", "optim/grad_norm", "optim/lr", "learner/step"):
        assert flatten(got)[k] == flatten(saved["want"])[k], k


@pytest.mark.integration
@pytest.mark.parametrize("target", ["rng_rank0.pt", "deepspeed/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_malicious_pickle_is_refused_and_never_runs(saved, tmp_path, target):
    import shutil

    import torch

    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved["ckpt"], ckpt)
    marker = tmp_path / "pwned"
    torch.save({"torch": WritesMarker(marker), "optimizer_state_dict": WritesMarker(marker)}, ckpt / target)
    c = saved["new"](f"c{len(target)}")
    with pytest.raises(RuntimeError, match="refused by the restricted unpickler") as err:
        c.load_checkpoint(ckpt)
    c.shutdown()
    assert "UnsafeCheckpoint" in str(err.value) and "posix.system" in str(err.value)
    assert not marker.exists()
