"""The engine step loop (rollout.engine.engine_loop) on a fake step engine: a job from a second
thread starts between two steps of a job in flight and returns before it; conditions hold jobs back
in order; LoRA ids in use are retired, not removed, and the spare slot is never taken."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from rollout.engine.engine_loop import EngineLoop, LoraSwap

pytestmark = pytest.mark.unit


class StepFake:
    """Each request finishes after the number of steps it was added with; ``hold`` blocks one step."""

    def __init__(self) -> None:
        self.left: dict[str, int] = {}
        self.steps = 0
        self.hold: tuple[int, threading.Event, threading.Event] | None = None
        """(step number, set when it starts, waited for before it ends)."""
        self.gates: dict[int, threading.Event] = {}
        """Step number -> an event that step waits for first."""
        self.fail_at: int | None = None

    def add(self, **requests: int) -> None:
        self.left.update(requests)

    def step(self) -> list[tuple[str, str]]:
        if self.steps + 1 in self.gates:
            assert self.gates[self.steps + 1].wait(5), f"step {self.steps + 1} was never let through"
        self.steps += 1
        if self.hold and self.hold[0] == self.steps:
            self.hold[1].set()
            assert self.hold[2].wait(5)
        if self.fail_at == self.steps:
            raise RuntimeError("engine died")
        self.left = {r: n - 1 for r, n in self.left.items()}
        done = [r for r, n in self.left.items() if n == 0]
        for r in done:
            del self.left[r]
        return [(r, f"out-{r}@{self.steps}") for r in done]


def in_thread(fn, eng: StepFake) -> tuple[threading.Thread, dict]:
    """Run ``fn`` in a thread; its box gets "value" (or "error") and "at_step", the engine's step count
    when it returned."""
    box: dict = {"returned": threading.Event()}

    def body():
        try:
            box["value"] = fn()
        except Exception as e:
            box["error"] = e
        box["at_step"] = eng.steps
        box["returned"].set()

    t = threading.Thread(target=body)
    t.start()
    return t, box


@pytest.fixture
def fake():
    return StepFake()


def start_long(loop: EngineLoop, eng: StepFake, steps: int = 6, tag: object = "v1"):
    """Thread A: one request "a" of ``steps`` steps, tagged ``tag``; returns once step 2 is underway
    (held until ``release`` is set)."""
    started, release = threading.Event(), threading.Event()
    eng.hold = (2, started, release)
    t, box = in_thread(lambda: loop.submit(lambda: (eng.add(a=steps), {"a": tag})), eng)
    assert started.wait(5)
    return t, box, release


def wait_queued(loop: EngineLoop, n: int = 1) -> None:
    for _ in range(500):
        if loop.waiting() >= n:
            return
        threading.Event().wait(0.01)
    raise AssertionError("job never queued")


def test_a_command_runs_between_steps_while_a_long_job_is_in_flight(fake):
    loop = EngineLoop(fake.step)
    ta, a, release = start_long(loop, fake)
    seen = {}
    tb, b = in_thread(lambda: loop.run(lambda: seen.update(step=fake.steps, in_flight=loop.in_flight("v1"))), fake)
    fake.gates[3] = b["returned"]  # A's step 3 runs only once B has returned
    wait_queued(loop)
    release.set()
    tb.join(5)
    ta.join(5)
    assert seen == {"step": 2, "in_flight": True}  # ran after step 2, while A's request was in flight
    assert b["at_step"] == 2 and a["at_step"] == 6
    assert a["value"] == (None, ["out-a@6"])


def test_requests_of_a_second_thread_join_the_batch_and_return_first(fake):
    loop = EngineLoop(fake.step)
    ta, a, release = start_long(loop, fake)
    tb, b = in_thread(lambda: loop.submit(lambda: ("probe", (fake.add(p=1), {"p": "v2"})[1])), fake)
    fake.gates[4] = b["returned"]
    wait_queued(loop)
    release.set()
    tb.join(5)
    ta.join(5)
    assert b["value"] == ("probe", ["out-p@3"]) and b["at_step"] == 3  # added after step 2, done in 3
    assert a["value"] == (None, ["out-a@6"]) and fake.steps == 6


def test_the_driver_hands_the_engine_on_when_its_own_job_is_done(fake):
    loop = EngineLoop(fake.step)
    ta, a, release = start_long(loop, fake, steps=3)
    tb, b = in_thread(lambda: loop.submit(lambda: (None, (fake.add(long=5), {"long": None})[1])), fake)
    wait_queued(loop)
    release.set()
    ta.join(5)
    tb.join(5)
    assert a["value"][1] == ["out-a@3"] and b["value"][1] == ["out-long@7"]
    assert a["at_step"] <= b["at_step"] == 7  # A returned; B drove its own request to the end


def test_a_condition_holds_its_job_and_those_behind_it_until_it_holds(fake):
    loop = EngineLoop(fake.step)
    ta, a, release = start_long(loop, fake, steps=4)
    order = []
    tb, _ = in_thread(lambda: loop.run(lambda: order.append(("merge", fake.steps, loop.idle())), when=loop.idle), fake)
    wait_queued(loop, 1)
    tc, _ = in_thread(lambda: loop.run(lambda: order.append(("next", fake.steps, loop.idle()))), fake)
    wait_queued(loop, 2)
    release.set()
    for t in (ta, tb, tc):
        t.join(5)
    assert order == [("merge", 4, True), ("next", 4, True)]  # at the boundary, in submission order


def test_a_failing_start_fails_only_its_own_caller(fake):
    loop = EngineLoop(fake.step)
    ta, a, release = start_long(loop, fake, steps=4)

    def refuse():
        raise ValueError("adapter refused")

    tb, b = in_thread(lambda: loop.run(refuse), fake)
    wait_queued(loop)
    release.set()
    tb.join(5)
    ta.join(5)
    assert isinstance(b["error"], ValueError) and a["value"][1] == ["out-a@4"]


def test_an_engine_failure_fails_every_job_in_flight(fake):
    loop = EngineLoop(fake.step)
    fake.fail_at = 3
    ta, a, release = start_long(loop, fake, steps=6)
    tb, b = in_thread(lambda: loop.submit(lambda: (None, (fake.add(p=5), {"p": None})[1])), fake)
    wait_queued(loop)
    release.set()
    ta.join(5)
    tb.join(5)
    assert str(a["error"]) == str(b["error"]) == "engine died"
    assert loop.idle() and not loop.in_flight("v1")


def test_after_an_engine_failure_the_failed_requests_are_aborted_and_a_later_job_runs(fake):
    aborted: list[list[str]] = []

    def abort(ids):
        aborted.append(sorted(ids))
        for rid in ids:
            fake.left.pop(rid, None)

    loop = EngineLoop(fake.step, abort=abort)
    fake.fail_at = 2
    with pytest.raises(RuntimeError, match="engine died"):
        loop.submit(lambda: (fake.add(a=4, b=5), {"a": "v1", "b": "v1"}))
    assert aborted == [["a", "b"]] and fake.left == {} and loop.idle() and not loop.in_flight("v1")
    # hand-worked: the engine has done 2 steps; "c" needs 2 more and finishes at step 4, alone
    assert loop.submit(lambda: (fake.add(c=2), {"c": "v2"})) == (None, ["out-c@4"])


def test_a_request_the_engine_finishes_after_its_job_failed_is_ignored(fake):
    loop = EngineLoop(fake.step)  # no abort: the failed job's "a" stays in the engine
    fake.fail_at = 1
    with pytest.raises(RuntimeError, match="engine died"):
        loop.submit(lambda: (fake.add(a=2), {"a": "v1"}))
    # steps 2 and 3: "a" finishes at step 2 (nobody waits for it), "c" at step 3
    assert loop.submit(lambda: (fake.add(c=2), {"c": "v2"})) == (None, ["out-c@3"])


def test_submit_from_inside_a_job_is_refused(fake):
    loop = EngineLoop(fake.step)
    with pytest.raises(RuntimeError, match="re-entrant"):
        loop.run(lambda: loop.run(lambda: None))


class LoraEngineFake:
    """Records vLLM's add_lora / remove_lora calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def add_lora(self, request) -> bool:
        self.calls.append(("add", request.lora_id))
        return True

    def remove_lora(self, lora_id: int) -> bool:
        self.calls.append(("remove", lora_id))
        return True


def served(lora_id: int) -> SimpleNamespace:
    return SimpleNamespace(lora_id=lora_id, request=SimpleNamespace(lora_id=lora_id))


def test_an_id_in_use_is_retired_and_removed_after_its_last_request(fake):
    loop, vllm = EngineLoop(fake.step), LoraEngineFake()
    swap = LoraSwap(vllm, loop, max_loras=2)
    adapters = {"policy": served(1)}
    swap.active = lambda: list(adapters.values())
    ta, a, release = start_long(loop, fake, steps=4, tag=1)  # a request on LoRA id 1
    seen = {}

    def load():
        old = adapters["policy"]
        adapters["policy"] = swap.swap(old, lambda: (vllm.calls.append(("add", 2)), served(2))[1])
        seen.update(step=fake.steps, retired=sorted(swap.retired))

    tb, _ = in_thread(lambda: loop.run(load, when=lambda: swap.slot_free(adapters["policy"])), fake)
    wait_queued(loop)
    release.set()
    tb.join(5)
    ta.join(5)
    assert seen == {"step": 2, "retired": [1]}  # loaded mid-flight; id 1 kept for request "a"
    assert vllm.calls == [("add", 2), ("remove", 1)] and swap.retired == {}  # removed once "a" finished


def test_an_unused_id_is_removed_before_the_new_one_is_added(fake):
    loop, vllm = EngineLoop(fake.step), LoraEngineFake()
    swap = LoraSwap(vllm, loop, max_loras=1)
    assert swap.slot_free(served(1))  # nothing in flight: the old id's slot is freed first
    swap.swap(served(1), lambda: (vllm.calls.append(("add", 2)), served(2))[1])
    assert vllm.calls == [("remove", 1), ("add", 2)] and swap.retired == {}


def test_a_load_that_needs_the_spare_slot_waits_until_an_id_drains(fake):
    loop, vllm = EngineLoop(fake.step), LoraEngineFake()
    swap = LoraSwap(vllm, loop, max_loras=1)
    adapters = {"policy": served(1)}
    swap.active = lambda: list(adapters.values())
    ta, a, release = start_long(loop, fake, steps=4, tag=1)
    seen = {}

    def load():
        adapters["policy"] = swap.swap(adapters["policy"], lambda: served(2))
        seen["step"] = fake.steps

    tb, _ = in_thread(lambda: loop.run(load, when=lambda: swap.slot_free(adapters["policy"])), fake)
    wait_queued(loop)
    release.set()
    tb.join(5)
    ta.join(5)
    assert seen == {"step": 4}  # max_loras = 1: old and new may not be active together
    assert vllm.calls == [("remove", 1)]


def test_a_refused_new_version_leaves_the_old_one_serving(fake):
    loop, vllm = EngineLoop(fake.step), LoraEngineFake()
    swap = LoraSwap(vllm, loop, max_loras=2)

    def refuse():
        raise ValueError("vLLM refused")

    with pytest.raises(ValueError):
        swap.swap(served(1), refuse)
    assert vllm.calls == [("remove", 1), ("add", 1)]  # put back
