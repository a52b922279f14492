"""How ``duet train`` ends a run that cannot go on: one line and an exit status per kind of error
(:func:`cluster.cli.stops`), the learner's own message when the error came back through Ray."""

import pytest

from cluster.cli import one_line, stops
from learner.export import NonFiniteAdapter, check_finite

pytestmark = pytest.mark.unit


def test_each_stop_has_its_exit_status():
    table = {kind.__name__: code for kind, code in stops()}
    assert table == {"ModelNotFound": 2, "RunDirBusy": 2, "PlanDoesNotFit": 1, "FileNotFoundError": 1,
                     "StorageError": 1, "TrainingDiverged": 1, "LearnerRestartsSpent": 1,
                     "NonFiniteAdapter": 1, "NonFiniteStepApplied": 1}


def test_an_error_from_a_ray_task_prints_its_cause():
    import torch

    with pytest.raises(NonFiniteAdapter) as refused:
        check_finite({"b.lora_B.weight": torch.tensor([float("nan")])}, "policy", 3)

    class FromRay(NonFiniteAdapter):  # what ray.get raises: the cause's class, the remote traceback as text
        def __init__(self, cause):
            super().__init__("ray::RankActor.run() (pid=1)\nTraceback (most recent call last):\n  ...")
            self.cause = cause

    err = FromRay(refused.value)
    assert one_line(err) == str(refused.value) and "\n" not in one_line(err)
    assert one_line(ValueError("plain")) == "plain"


def test_preflight_requires_inputs_not_the_caches_a_source_writes(tmp_path):
    from cluster.preflight import split_problems

    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    args = {"path": str(data), "cache_dir": str(tmp_path / "hf-cache")}  # the cache: made by `datasets`
    assert split_problems("hf", "train", args) == []
    missing = {"path": str(tmp_path / "absent.jsonl"), "cache_dir": str(tmp_path / "hf-cache")}
    assert split_problems("hf", "train", missing) == [f"data.train.path: {str(tmp_path / 'absent.jsonl')!r} does not exist"]
