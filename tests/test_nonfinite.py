"""Non-finite updates never reach the rollout workers (issue 14, item 2).

Unit tier: a non-finite micro loss poisons the gradients (so DeepSpeed's overflow check skips the
step); an adapter with a NaN is refused before any bytes are made; the driver's divergence monitor
(skipped updates not published, the stop after ``train.max_skipped_steps`` naming the last complete
checkpoint, warnings once per episode of divergence).

Integration tier (real DeepSpeed, tiny LM): a batch with an infinite reward (its GRPO advantages
NaN, so its loss is NaN) is skipped, counted, and leaves the weights bit-identical; the optimizer
state and LR schedule are untouched too (the next update equals that of a learner that never saw
the bad batch, bit for bit, running reward normalisation included); with 2 ranks (ZeRO-3) a NaN on one rank's rows only skips the step
on both.
"""

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cluster.checkpoints import commit
from cluster.divergence import DivergenceMonitor, TrainingDiverged, last_complete_checkpoint
from learner.export import NonFiniteAdapter, check_finite
from learner.metrics import LossStats, OptimStats, UpdateMetrics
from learner.update import poison_if_nonfinite


class Log:
    def __init__(self):
        self.events = []

    def event(self, text):
        self.events.append(text)


def monitor(tmp_path: Path, max_skipped: int = 3) -> DivergenceMonitor:
    return DivergenceMonitor(max_skipped, tmp_path, Log(), SimpleNamespace(skipped_updates=0, divergence_warnings=0))


def update(skipped: float = 0.0, steps: float = 1.0, entropy: float = 0.5, approx_kl: float = 0.01) -> UpdateMetrics:
    loss = LossStats(policy=0.1, total=0.1, approx_kl=approx_kl, clip_frac=0.0, dual_clip_frac=0.0, entropy=entropy)
    optim = OptimStats(grad_norm=math.inf if skipped else 1.0, grad_norm_max=math.inf if skipped else 1.0,
                       steps=steps, skipped=skipped)
    return UpdateMetrics(loss=loss, optim=optim, samples=4.0, episodes=4.0, entropy_max=math.log(3755))


# ---- unit ------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_a_nonfinite_loss_poisons_every_gradient_even_through_a_constant():
    x = torch.ones(3, requires_grad=True)
    out = 2 * x
    loss = out.sum() + torch.tensor(math.inf)  # non-finite through a constant: the plain gradient is finite
    loss.backward(retain_graph=True)
    assert torch.isfinite(x.grad).all()
    x.grad = None
    poisoned, finite = poison_if_nonfinite(loss, out, None)
    poisoned.backward()
    assert not finite and torch.isnan(x.grad).all()
    same, ok = poison_if_nonfinite(out.sum(), out)
    assert ok and same is not None


@pytest.mark.unit
def test_an_adapter_with_a_nan_is_refused_naming_the_tensor():
    state = {"a.lora_A.weight": torch.zeros(2, 2), "b.lora_B.weight": torch.tensor([[1.0, math.nan], [math.inf, 0]])}
    with pytest.raises(NonFiniteAdapter, match=r"adapter policy v3 refused: tensor 'b.lora_B.weight' has 2 non-finite"):
        check_finite(state, "policy", 3)
    check_finite({"a": torch.ones(2)}, "policy", 3)


@pytest.mark.unit
def test_skipped_updates_are_not_published_and_three_in_a_row_stop_naming_the_last_checkpoint(tmp_path):
    m = monitor(tmp_path)
    assert m.update("policy", 0, update()) is True
    for d in ("step_000001", "step_000002"):
        (tmp_path / "checkpoints" / d).mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_000001" / "driver.json").write_text("{}")
    commit(tmp_path, tmp_path / "checkpoints" / "step_000001")  # sealed; step_000002 never was
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000001"
    assert m.update("policy", 1, update(skipped=1.0)) is False
    assert m.update("policy", 2, update(skipped=1.0)) is False
    m.stop_if_diverged()  # two in a row: not yet
    assert m.update("policy", 3, update(skipped=1.0)) is False
    with pytest.raises(TrainingDiverged) as err:
        m.stop_if_diverged()
    msg = str(err.value)
    assert "\n" not in msg and "steps 2-4" in msg and "train.max_skipped_steps = 3" in msg
    assert msg.endswith(f"last good checkpoint: {tmp_path / 'checkpoints' / 'step_000001'}")
    assert m.counters.skipped_updates == 3
    assert sum("optimizer step(s) skipped" in e for e in m.log.events) == 3


@pytest.mark.unit
def test_an_applied_update_ends_the_streak_and_a_partial_skip_is_published(tmp_path):
    m = monitor(tmp_path, max_skipped=2)
    m.update("policy", 0, update(skipped=1.0))
    assert m.update("policy", 1, update(skipped=1.0, steps=2.0)) is True  # one of two steps applied
    m.update("policy", 2, update(skipped=1.0))
    m.stop_if_diverged()
    with pytest.raises(TrainingDiverged, match="last good checkpoint: none"):
        m.update("policy", 3, update(skipped=1.0))
        m.stop_if_diverged()
    assert m.update("policy", 4, {"policy/loss": 0.5}) is True  # hand-made figures: applied


@pytest.mark.unit
def test_divergence_warnings_once_per_episode(tmp_path):
    m = monitor(tmp_path)
    top = math.log(3755)
    for step, ent in enumerate([0.5, 0.96 * top, top, 0.4, top, math.nan]):
        m.update("policy", step, update(entropy=ent))
    entropy_events = [e for e in m.log.events if "entropy" in e]
    assert len(entropy_events) == 2  # steps 2-3, then 5-6: two episodes
    assert "step 2: policy: policy entropy 7.902 is at its maximum log(vocab) = 8.231" in entropy_events[0]
    m.update("policy", 6, update(approx_kl=3.0))
    m.update("policy", 7, update(approx_kl=4.0))
    assert sum("approx-KL" in e for e in m.log.events) == 1
    assert m.counters.divergence_warnings == 3


@pytest.mark.unit
def test_kl_to_the_reference_doubling_three_times_is_a_runaway(tmp_path):
    m = monitor(tmp_path)
    for step, kl in enumerate([0.02, 0.04, 0.08, 0.16, 0.32]):
        m.update("policy", step, replace(update(), advantage=SimpleNamespace(kl_ref=kl)))
    kl_events = [e for e in m.log.events if "doubled" in e]
    assert len(kl_events) == 1 and "step 4" in kl_events[0] and "to 0.16" in kl_events[0]


# ---- integration: real DeepSpeed ---------------------------------------------------------------------

def batch(rewards: list[float], seed: int = 0):
    """Episodes of 2 groups (``g{i % 2}``), one turn each, fixed token ids."""
    import random

    from rollout.episode_arrow import EpisodeBatch
    from rollout.types import Episode, Turn

    rng = random.Random(seed)
    eps = []
    for i, r in enumerate(rewards):
        prompt = tuple(rng.randrange(20, 3000) for _ in range(5))
        out = tuple(rng.randrange(20, 3000) for _ in range(4))
        eps.append(Episode(f"e{i}", f"g{i % 2}", "t", (Turn("policy", prompt, out, (-8.2,) * 4, 0),), reward=r))
    return EpisodeBatch(tuple(eps))


def weights(group, version: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(group.adapter_ref(version).files["adapter_model.safetensors"])


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def config(zero_stage: int = 2):
    from learner.config import AlgoConfig, LearnerConfig, OptimConfig

    return LearnerConfig(zero_stage=zero_stage, micro_batch_size=2,
                         algo=AlgoConfig(advantage_estimator="grpo", shuffle=False, normalize_rewards=True),
                         optim=OptimConfig(lr=1e-2, schedule="cosine", warmup_steps=1, total_steps=5))


GOOD, BAD, NEXT = [1.0, 0.0, 0.0, 1.0], [math.inf, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def world1():
    """One single-rank LocalWorld (one spawned process) for this module's one-rank learners: several
    learner groups share a world, each under its own key."""
    from learner.local_world import LocalWorld

    with LocalWorld(1) as world:
        yield world


@pytest.mark.integration
def test_a_nonfinite_step_is_skipped_and_changes_nothing(models_dir, world1):
    from learner.local_world import LocalLearnerGroup

    model = str(models_dir / "tiny-text-lm")
    a = LocalLearnerGroup(world1, "a", config(), model)
    first = a.train_step(batch(GOOD))
    assert first.optim.skipped == 0 and not first.all_skipped
    before = weights(a, 1)
    bad = a.train_step(batch(BAD))
    assert bad.optim.skipped == bad.optim.steps == 1 and bad.all_skipped
    assert not math.isfinite(bad.loss.total) and math.isinf(bad.optim.grad_norm)
    assert bad.lr == first.lr  # the LR schedule did not move
    assert identical(weights(a, 2), before)  # bit-identical weights
    after_a = a.train_step(batch(NEXT))
    assert after_a.optim.skipped == 0
    # a learner that never saw the bad batch: same optimizer state, schedule and reward
    # normaliser, so the same update
    b = LocalLearnerGroup(world1, "b", config(), model)
    b.train_step(batch(GOOD))
    after_b = b.train_step(batch(NEXT))
    assert identical(weights(a, 3), weights(b, 3)) and not identical(weights(a, 3), before)
    assert after_a.lr == after_b.lr and after_a.loss.total == after_b.loss.total
    a.shutdown()
    b.shutdown()


@pytest.mark.integration
def test_a_nan_on_one_rank_skips_the_step_on_both_zero3(models_dir):
    from learner.local_world import LocalLearnerGroup, LocalWorld

    with LocalWorld(2) as world:
        g = LocalLearnerGroup(world, "z3", config(zero_stage=3), str(models_dir / "tiny-text-lm"))
        g.train_step(batch(GOOD))
        before = weights(g, 1)
        # rank 0 takes rows 0, 2 (group g0, its reward inf: NaN advantages), rank 1 rows 1, 3 (finite)
        bad = g.train_step(batch(BAD))
        assert bad.all_skipped and identical(weights(g, 2), before)
        assert g.train_step(batch(NEXT)).optim.skipped == 0 and not identical(weights(g, 3), before)
        g.shutdown()


@pytest.mark.integration
def test_an_sft_step_that_blows_up_is_skipped_after_it(models_dir, world1):
    """``sft.lr = 1e6``: the first step is finite but wrecks the adapter; the next one's gradient
    norm is infinite, so it is skipped, counted, and leaves the weights as they were."""
    from learner.config import LearnerConfig, SFTConfig
    from learner.local_world import LocalLearnerGroup
    from learner.sft import SFTExample

    examples = [SFTExample((("user", "say yes"), ("assistant", "yes"))),
                SFTExample((("user", "colour of the sky?"), ("assistant", "blue")))]
    g = LocalLearnerGroup(world1, "sft", LearnerConfig(sft=SFTConfig(lr=1e6)), str(models_dir / "tiny-text-lm"))
    assert g.sft_step(examples).skipped == 0.0
    before = weights(g, 1)
    second = g.sft_step(examples)
    assert second.skipped == 1.0 and not math.isfinite(second.grad_norm)
    assert identical(weights(g, 2), before)
    g.shutdown()


@pytest.mark.unit
def test_a_skipped_sft_step_is_one_event(tmp_path):
    from learner.metrics import SFTMetrics

    m = monitor(tmp_path)
    sft = SFTMetrics(loss=8.2, tokens=4.0, grad_norm=math.inf, lr=1e-4, step_seconds=0.1, sft_step=2.0, skipped=1.0)
    m.sft_step("policy", 1, sft)
    m.sft_step("policy", 2, replace(sft, skipped=0.0, grad_norm=1.0))
    m.sft_step("policy", 3, SimpleNamespace(loss=0.25))
    assert m.log.events == ["SFT step 2: policy: skipped (loss or gradient norm not finite; grad norm inf); "
                            "weights and optimizer state unchanged"]


@pytest.mark.unit
def test_a_rewind_forgets_the_run_of_skips(tmp_path):
    # two skips, a learner restart (rewind), two more: never three in a row, no stop; both counted
    m = monitor(tmp_path)
    for step in (1, 2):
        m.update("policy", step, update(skipped=1.0))
    m.rewind()
    for step in (1, 2):
        m.update("policy", step, update(skipped=1.0))
    m.stop_if_diverged()
    assert m.counters.skipped_updates == 4
