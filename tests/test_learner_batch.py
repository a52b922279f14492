"""learner.batch: rows are exactly one role's trainable turns, masks cover only their output tokens,
log-probs and spans are aligned with input positions, and the episode/step grid is right."""

import pytest
import torch

from learner.batch import build_role_batch
from rollout.types import Episode, Span, Turn

pytestmark = pytest.mark.unit

PAD = 0


def turn(role, prompt, out, lps=None, **kw):
    lps = lps if lps is not None else [-0.1 * (i + 1) for i in range(len(out))]
    return Turn(role=role, prompt_ids=tuple(prompt), output_ids=tuple(out), output_logprobs=tuple(lps),
                adapter_version=0, **kw)


def dialogue(eid, gid, reward):
    # reasoner asks (ids 10-11), observer answers (20-22), reasoner answers (12); each prompt is the
    # whole context so far, as the rollout builds it in token space.
    r1 = turn("reasoner", [1, 2], [10, 11])
    o1 = turn("observer", [1, 2, 10, 11, 3], [20, 21, 22], image_hashes=("h",))
    r2 = turn("reasoner", [1, 2, 10, 11, 3, 20, 21, 22, 4], [12])
    return Episode(eid, gid, "t", (r1, o1, r2), reward=reward)


def test_reasoner_rows_mask_only_reasoner_outputs():
    b = build_role_batch([dialogue("e0", "g", 1.0), dialogue("e1", "g", 0.0)], "reasoner", PAD)
    # 2 reasoner turns per episode -> 4 rows; longest row = 9 prompt + 1 output = 10 tokens.
    assert b.num_rows == 4 and tuple(b.input_ids.shape) == (4, 10)
    assert b.input_ids[0].tolist() == [1, 2, 10, 11, 0, 0, 0, 0, 0, 0]
    assert b.loss_mask[0].tolist() == [False, False, True, True] + [False] * 6
    # second reasoner turn: only position 9 (token 12) is trained; the observer's 20,21,22 at 5..7 are not.
    assert b.loss_mask[1].nonzero().flatten().tolist() == [9]
    assert b.input_ids[1, 5:8].tolist() == [20, 21, 22]
    assert b.attention_mask[0].tolist() == [True] * 4 + [False] * 6
    # rollout log-probs sit on the output positions: -0.1, -0.2 at 2, 3
    assert b.rollout_logprobs[0, 2:4].tolist() == pytest.approx([-0.1, -0.2])
    assert float(b.rollout_logprobs[0].abs().sum()) == pytest.approx(0.3)
    assert b.prompt_lens.tolist() == [2, 9, 2, 9] and b.output_lens.tolist() == [2, 1, 2, 1]
    assert b.episode_index.tolist() == [0, 0, 1, 1] and b.step_index.tolist() == [0, 1, 0, 1]
    assert b.episodes.rewards.tolist() == [1.0, 0.0] and b.episodes.num_steps.tolist() == [2, 2]
    assert b.num_output_tokens == 6


def test_observer_rows_and_images():
    b = build_role_batch([dialogue("e0", "g", 1.0)], "observer", PAD)
    assert b.num_rows == 1 and b.image_hashes == (("h",),)
    assert b.loss_mask[0].nonzero().flatten().tolist() == [5, 6, 7]
    assert b.input_ids[0, 5:8].tolist() == [20, 21, 22]


def test_untrainable_turns_and_absent_role_keep_episode_rows():
    e0 = Episode("e0", "g", "t", (turn("policy", [1], [5], trainable=False),), reward=2.0)
    e1 = Episode("e1", "g", "t", (turn("policy", [1], [5, 6]),), reward=3.0)
    b = build_role_batch([e0, e1], "policy", PAD)
    assert b.num_rows == 1 and b.episode_index.tolist() == [1]
    # e0 has no trainable turn but stays in the table (GRPO group statistics see its reward)
    assert b.episodes.num_steps.tolist() == [0, 1] and b.episodes.group_ids == ("g", "g")
    assert b.episodes.step_mask().tolist() == [[False], [True]]


def test_env_step_rewards_and_grid():
    # env episode: three policy turns with rewards 0, 1, -1 and one frozen (untrainable) turn with
    # reward 0.5 after the second: it is credited to the preceding trainable turn -> 0, 1.5, -1.
    ts = (turn("policy", [1], [5], reward=0.0), turn("policy", [1, 5], [6], reward=1.0),
          turn("policy", [1, 5, 6], [7], reward=0.5, trainable=False), turn("policy", [1, 5, 6, 7], [8], reward=-1.0))
    b = build_role_batch([Episode("e", "g", "t", ts, reward=0.5)], "policy", PAD)
    assert b.step_rewards.tolist() == [0.0, 1.5, -1.0]
    grid = b.to_steps(b.step_rewards)
    assert grid.tolist() == [[0.0, 1.5, -1.0]]
    assert b.from_steps(grid * 2).tolist() == [0.0, 3.0, -2.0]


def test_cot_and_action_spans():
    t1 = turn("policy", [1, 2], [5, 6, 7, 8], cot_span=Span(0, 3), action_span=Span(3, 4))
    t2 = turn("policy", [1, 2], [5, 6])  # no spans: the whole output is the action
    b = build_role_batch([Episode("e", "g", "t", (t1,)), Episode("f", "g", "t", (t2,))], "policy", PAD)
    assert b.cot_mask[0].nonzero().flatten().tolist() == [2, 3, 4]
    assert b.action_mask[0].nonzero().flatten().tolist() == [5]
    assert b.cot_mask[1].sum() == 0 and b.action_mask[1].nonzero().flatten().tolist() == [2, 3]


def test_select_trims_and_keeps_table():
    b = build_role_batch([dialogue("e0", "g", 1.0), dialogue("e1", "h", 0.0)], "reasoner", PAD)
    s = b.select([2])
    assert tuple(s.input_ids.shape) == (1, 4) and s.episode_index.tolist() == [1]
    assert s.episodes is b.episodes and s.row_groups() == ("h",)


def test_shape_check_on_construction():
    b = build_role_batch([dialogue("e0", "g", 1.0)], "reasoner", PAD)
    with pytest.raises(ValueError, match="loss_mask"):
        type(b)(**{**b.__dict__, "loss_mask": torch.zeros(3, 3, dtype=torch.bool)})


def test_empty_role():
    b = build_role_batch([dialogue("e0", "g", 1.0)], "policy", PAD)
    assert b.num_rows == 0 and b.episodes.num_steps.tolist() == [0]
