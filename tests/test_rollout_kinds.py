"""Rollout kinds as registered objects: a new kind defined in THIS file alone runs through the recipe,
``cluster.run.load_items``, the rollout worker (and its greedy evaluation copy) and the Driver's loop.

The toy kind "echo": one role, the ``parrot``; its items are integers n (no data source); an
episode is one turn in which the parrot is asked to repeat n, reward 1 when its reply is exactly n.
The fake engine's parrot repeats n in the first sample of each group and says "no" in the others,
so every expected count and reward below is worked out by hand.
"""

import re

import pytest

from cluster.config import RecipeError, build_recipe
from cluster.driver import Driver
from cluster.fleet import CallKind
from cluster.rollout_factory import TrainEvalWorker
from cluster.run import load_items
from cluster.sft_data import sft_examples_for
from cluster.weight_sync import SyncAck, SyncReport
from rollout.chat import ChatFormat
from rollout.config import RolloutConfig
from rollout.engine import AdapterRef
from rollout.engine.base import Request
from rollout.engine.fake import FakeEngine
from rollout.episode_arrow import EpisodeBatch
from rollout.kinds.base import RoleConfig, RolloutKind, kind_class, register_kind, registered_kinds
from rollout.single_turn import derive_seed, episode_id, group_id, make_turn
from rollout.types import Episode
from rollout.worker import RolloutWorker

pytestmark = pytest.mark.unit


@register_kind
class EchoConfig(RolloutKind):
    """Toy kind: the parrot is asked to repeat an integer."""

    name = "echo"
    uses_tasks = False

    parrot: RoleConfig = RoleConfig(adapter="parrot")
    """The only role."""
    template: str = "Repeat {n}."
    """The user message asking for n."""

    def items(self, source):
        return list(range(source.train_size)), list(range(100, 100 + source.eval_size))

    def run(self, engines, items, group_size, *, reward, step, seed):
        engine = engines["parrot"]
        chat = ChatFormat(engine.tokenizer)
        requests = [Request(tuple(chat.prompt(self.parrot.system_prompt, self.template.format(n=n))), (),
                            self.parrot.adapter, self.parrot.sampling.to_sampling(group_size, derive_seed(seed, step, n)))
                    for n in items]
        results = engine.generate(requests)
        return EpisodeBatch(tuple(self._episode(n, k, c, step) for n, group in zip(items, results)
                                  for k, c in enumerate(group)))

    def _episode(self, n, k, c, step):
        gid, said = group_id(f"echo:{n}", step), c.text.strip()
        turn = make_turn("parrot", c, self.parrot, (), 0.0)
        return Episode(episode_id(gid, k), gid, f"echo:{n}", (turn,), reward=float(said == str(n)),
                       success=said == str(n), answer=said, finish_reason="stop")


def parrot(prompt, adapter, version, k):
    """Repeats the last "Repeat n." of the prompt in sample 0, refuses in the others."""
    return re.findall(r"Repeat (\d+)\.", prompt)[-1] if k == 0 else "no"


class Recording(FakeEngine):
    """A fake engine that keeps each request's (adapter, temperature)."""

    def __init__(self, script):
        super().__init__(script)
        self.sampled: list[tuple[str | None, float]] = []

    def generate(self, requests):
        self.sampled += [(r.adapter, r.sampling.temperature) for r in requests]
        return super().generate(requests)


TREE = {"name": "echo-run", "rollout": {"kind": "echo", "group_size": 2, "echo": {"template": "Repeat {n}."}},
        "roles": {"parrot": {"learner": {"role": "parrot"}}},
        "data": {"tasks_per_step": 2, "eval_size": 3}, "train": {"steps": 2}}


def test_the_toy_kind_validates_as_a_recipe_and_round_trips():
    assert "echo" in registered_kinds() and kind_class("echo") is EchoConfig
    recipe = build_recipe(TREE)
    assert isinstance(recipe.rollout.spec, EchoConfig) and recipe.rollout.echo is recipe.rollout.spec
    assert list(recipe.rollout.roles()) == ["parrot"]
    [role] = recipe.resolve().roles
    assert (role.name, role.adapter, role.trained, role.rollout.sampling.temperature) == ("parrot", "parrot", True, 1.0)
    assert recipe.model_dump()["rollout"]["echo"] == {"parrot": RoleConfig(adapter="parrot").model_dump(),
                                                      "template": "Repeat {n}."}
    assert type(recipe).model_validate_json(recipe.model_dump_json()) == recipe
    with pytest.raises(RecipeError, match=r"rollout\.echo\.templat: Extra inputs are not permitted"):
        build_recipe({**TREE, "rollout": {"kind": "echo", "echo": {"templat": "x"}}})
    with pytest.raises(RecipeError, match=r"roles: rollout kind 'echo' uses roles \['parrot'\], recipe defines \['policy'\]"):
        build_recipe({"rollout": {"kind": "echo"}})


def test_the_toy_kind_runs_through_load_items_and_the_worker():
    recipe = build_recipe(TREE)
    train, held_out = load_items(recipe, log=None)  # no data source is read, nothing is logged
    assert (train, held_out) == ([0, 1, 2, 3], [100, 101, 102])
    eng = Recording(parrot)
    eng.load_adapter(AdapterRef("parrot", 1, "/x"))
    worker = TrainEvalWorker(recipe.rollout, {"parrot": eng}, None)
    batch, stats = worker.rollout(train[:2], {"parrot": 1}, step=3)
    assert [(e.episode_id, e.answer, e.reward) for e in batch.episodes] == [
        ("echo:0@3#0", "0", 1.0), ("echo:0@3#1", "no", 0.0), ("echo:1@3#0", "1", 1.0), ("echo:1@3#1", "no", 0.0)]
    assert stats.mean_reward == 0.5 and stats.success_rate == 0.5 and stats.generated_tokens == {"parrot": 2 + 3 + 2 + 3}
    assert batch.episodes[0].metadata["transcript"] == "[parrot v1] 0\n[result] answer='0' reward=1 finish=stop"
    assert EpisodeBatch.from_arrow(*batch.to_arrow()) == batch
    assert eng.sampled == [("parrot", 1.0)] * 2
    evaluation, _ = worker.evaluate(held_out, {"parrot": 1})  # the kind's greedy copy, one sample per item
    assert [(e.answer, e.reward) for e in evaluation.episodes] == [("100", 1.0), ("101", 1.0), ("102", 1.0)]
    assert eng.sampled[2:] == [("parrot", 0.0)] * 3
    with pytest.raises(ValueError, match=r"greedy_roles: \['parrot'\] cannot be frozen in a echo rollout"):
        worker.rollout(train[:1], {}, greedy_roles=("parrot",))
    with pytest.raises(ValueError, match="does not cover echo rollouts"):
        sft_examples_for(recipe, [])


class WorkerFleet:
    """The Driver's rollout fleet over in-process rollout workers (no Ray, no deaths)."""

    def __init__(self, workers):
        self.workers = workers

    def worker_ids(self):
        return sorted(self.workers)

    def start(self, kind, worker_id, items, versions, step, greedy_roles=()):
        w = self.workers[worker_id]
        out = w.rollout(items, versions, step=step, greedy_roles=greedy_roles) if kind is CallKind.ROLLOUT \
            else w.evaluate(items, versions, step=step)
        return Done(out)

    def wait_restart(self, worker_id):
        return 1


class Done:
    def __init__(self, out):
        self.out = out

    def result(self):
        return self.out


class WorkerSync:
    """Loads each published version into every worker (a fake adapter path) and acknowledges it."""

    def __init__(self, fleet, adapters):
        self.fleet, self.adapters = fleet, adapters

    def publish(self, role, version):
        adapter = self.adapters[role]
        acks = []
        for wid, w in sorted(self.fleet.workers.items()):
            w.load_adapter(AdapterRef(adapter, version, f"/adapters/{adapter}/v{version}"))
            acks.append(SyncAck(wid, "node", adapter, version, (-1.0,), 0.0))
        return SyncReport(adapter, version, tuple(acks), 0.0, True)

    def catch_up(self, worker_id):
        return []

    def served_versions(self):
        return {wid: w.adapter_versions() for wid, w in self.fleet.workers.items()}


class Learner:
    def __init__(self):
        self.batches = []

    def train_step(self, batch):
        self.batches.append(batch)
        return {}


class Log:
    def __init__(self):
        self.loops, self.evals = [], {}

    def event(self, text):
        pass

    def sync(self, report):
        pass

    def loop(self, step, produced, dropped, staleness, in_flight):
        self.loops.append((step, produced, dropped))

    def step(self, *args):
        pass

    def evaluation(self, label, result, batch):
        self.evals[label] = result


def test_the_toy_kind_trains_two_steps_through_the_driver():
    recipe = build_recipe(TREE)
    train, held_out = load_items(recipe, log=None)
    engines = {wid: Recording(parrot) for wid in ("rollout-0", "rollout-1")}
    fleet = WorkerFleet({wid: TrainEvalWorker(recipe.rollout, {"parrot": eng}, None) for wid, eng in engines.items()})
    adapters = {r.name: r.adapter for r in recipe.resolve().roles}
    learner, log = Learner(), Log()
    driver = Driver(recipe, fleet, {"parrot": learner}, WorkerSync(fleet, adapters), log, train, adapters)
    driver.publish("parrot")  # v1 before any rollout, as the run does
    driver.train(0, recipe.train.steps, lambda step: None)
    # 2 steps x 2 items (one per worker) x G = 2; step t was sampled by v(t+1), then v(t+2) published
    assert {k: v for k, v in vars(driver.counters).items() if v} == {"produced": 8, "trained": 8}  # no fault
    assert [[(e.episode_id, e.reward, e.turns[0].adapter_version) for e in b.episodes] for b in learner.batches] == [
        [("echo:0@0#0", 1.0, 1), ("echo:0@0#1", 0.0, 1), ("echo:1@0#0", 1.0, 1), ("echo:1@0#1", 0.0, 1)],
        [("echo:2@1#0", 1.0, 2), ("echo:2@1#1", 0.0, 2), ("echo:3@1#0", 1.0, 2), ("echo:3@1#1", 0.0, 2)]]
    assert driver.versions == {"parrot": 3} and log.loops == [(0, 4, 0), (1, 4, 0)]
    assert {wid: w.adapter_versions() for wid, w in fleet.workers.items()} == {"rollout-0": {"parrot": 3},
                                                                              "rollout-1": {"parrot": 3}}
    assert driver.evaluate(held_out, "after_rl", 2) == {"episodes": 3.0, "reward": 1.0, "success": 1.0}
    assert engines["rollout-0"].sampled[-2:] == [("parrot", 0.0)] * 2  # items 100, 101 on rollout-0


def test_the_registry_refuses_a_taken_or_reserved_name_and_names_the_known_kinds():
    class Other(RolloutKind):
        name = "echo"

    with pytest.raises(ValueError, match="kind 'echo' is already"):
        register_kind(Other)
    Other.name = "group_size"
    with pytest.raises(ValueError, match="must be an identifier other than"):
        register_kind(Other)
    with pytest.raises(RecipeError, match=r"rollout\.kind: unknown rollout kind 'nope' \(registered: dialogue, echo, env"):
        build_recipe({"rollout": {"kind": "nope"}})
