"""The rollout runtime on real vLLM engines and tiny models: a Reasoner/Observer dialogue between two
different base models, and full episodes of the four gym_cards environments driven by the VLM."""

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engines(models_dir):
    from rollout.engine.config import EngineConfig
    from rollout.engine.vllm_engine import VLLMEngine

    vlm = VLLMEngine(models_dir / "tiny-qwen2-vl", EngineConfig(max_model_len=1024, kv_cache_gib=0.25,
                                                                enable_lora=False))
    lm = VLLMEngine(models_dir / "tiny-text-lm", EngineConfig(max_model_len=1024, kv_cache_gib=0.25,
                                                              enable_lora=False, max_images_per_prompt=0))
    return vlm, lm


def test_dialogue_between_a_text_lm_reasoner_and_a_vlm_observer(engines):
    from rollout.config import DialogueConfig, RoleConfig, SamplingConfig
    from rollout.dialogue import run_dialogues
    from rollout.tasks import load_task_source
    from rollout.transcript import transcript_text

    vlm, lm = engines
    sampling = SamplingConfig(temperature=1.0, max_tokens=8)
    cfg = DialogueConfig(max_questions=2, reasoner=RoleConfig(adapter=None, sampling=sampling),
                         observer=RoleConfig(adapter=None, sampling=sampling))
    tasks = load_task_source("easy_vqa", split="test", limit=2).tasks
    batch = run_dialogues(lm, vlm, tasks, cfg, group_size=2, step=0, seed=3)
    assert len(batch) == 4
    assert len({e.group_id for e in batch.episodes}) == 2
    for ep in batch.episodes:
        roles = [t.role for t in ep.turns]
        # caption, then K=2 question/answer rounds, then the forced final answer (random models
        # never produce an early <answer> in 8 tokens... unless they do: then the dialogue is shorter)
        assert roles[0] == "observer" and roles[-1] == "reasoner"
        assert roles[1:] == ["reasoner", "observer"] * ((len(roles) - 2) // 2) + ["reasoner"]
        assert len(roles) <= 6
        reasoner_turns = ep.turns_of("reasoner")
        # the Reasoner never sees an image; the Observer's every prompt carries the task image
        assert all(vlm.image_token_id not in t.prompt_ids and not t.image_hashes for t in reasoner_turns)
        assert all(len(t.image_hashes) == 1 for t in ep.turns_of("observer"))
        # token-in/token-out: each Reasoner prompt extends the previous prompt + its sampled reply
        for a, b in zip(reasoner_turns, reasoner_turns[1:]):
            assert b.prompt_ids[: len(a.prompt_ids) + len(a.output_ids)] == a.prompt_ids + a.output_ids
        text = transcript_text(ep)
        assert "[observer v0]" in text and "[reasoner v0]" in text and "[result]" in text


@pytest.mark.parametrize("env", ["numberline", "ezpoints", "points24", "blackjack"])
def test_card_environments_run_full_episodes_with_the_vlm(engines, env):
    from rollout.config import EnvEpisodeConfig, RoleConfig, SamplingConfig
    from rollout.env_episode import run_env_episodes

    vlm, _ = engines
    cfg = EnvEpisodeConfig(env=env, image_size=56, max_steps=3, invalid_action="penalty",
                           policy=RoleConfig(adapter=None, sampling=SamplingConfig(temperature=1.0, max_tokens=16)))
    batch = run_env_episodes(vlm, [11], cfg, group_size=2, step=0, seed=0)
    assert len(batch) == 2
    for ep in batch.episodes:
        assert 1 <= len(ep.turns) <= 3
        # the episode return is the sum of the step rewards on the turns; success = return > 0
        assert ep.reward == pytest.approx(sum(t.reward for t in ep.turns))
        assert ep.success == (ep.reward > 0)
        assert ep.finish_reason in ("terminated", "truncated")
        assert all(len(t.image_hashes) == 1 and t.image_hashes[0] in batch.images for t in ep.turns)
