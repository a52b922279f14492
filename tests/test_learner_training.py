"""The learner trains, exports, alternates roles, resumes and fine-tunes (real DeepSpeed, tiny models).

* GRPO raises the reward of a fixed task within a few updates (sampling done here with transformers
  + PEFT from the learner's exported bytes).
* The exported adapter is a complete PEFT directory: manifest checksum matches, PEFT loads it, and
  the loaded model's log-probs equal the learner's.
* Alternating Reasoner/Observer training changes only the active role's adapter, and a role's update
  does not depend on the other role's turns' log-probs or rewards.
* Stopping after a checkpoint and resuming reproduces the next update exactly (ZeRO-3, 2 ranks).
* SFT: the first loss equals the plain NLL of the assistant tokens; it falls with training.
"""

import hashlib
import io
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from PIL import Image
from safetensors.torch import load as load_safetensors
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

from learner.config import AlgoConfig, LearnerConfig, LoraConfig, OptimConfig, SFTConfig
from learner.local_world import LocalLearnerGroup, LocalWorld
from learner.metrics import flatten
from learner.sft import SFTExample
from rollout.episode_arrow import EpisodeBatch, image_hash
from rollout.types import Episode, Turn

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def text_lm(models_dir):
    return str(models_dir / "tiny-text-lm")


@pytest.fixture(scope="module")
def vlm(models_dir):
    return str(models_dir / "tiny-qwen2-vl")


@pytest.fixture(scope="module")
def world1():
    with LocalWorld(1) as w:
        yield w


def state_of(files: dict) -> dict[str, torch.Tensor]:
    return load_safetensors(files["adapter_model.safetensors"])


def random_batch(seed: int, n: int = 6, role: str = "policy") -> EpisodeBatch:
    rng = random.Random(seed)
    eps = []
    for i in range(n):
        prompt = tuple(rng.randrange(20, 3000) for _ in range(rng.randrange(3, 9)))
        out = tuple(rng.randrange(20, 3000) for _ in range(rng.randrange(2, 7)))
        turn = Turn(role, prompt, out, tuple(-8.2 for _ in out), adapter_version=0)
        eps.append(Episode(f"e{i}", f"g{i // 3}", "t", (turn,), reward=float(rng.random())))
    return EpisodeBatch(tuple(eps))


# ---- 1. learning -----------------------------------------------------------------------------------

def sample(model, prompt: list[int], n: int, new_tokens: int, gen: torch.Generator):
    """n continuations of ``prompt`` (temperature 1), with their log-probs."""
    ids = torch.tensor([prompt] * n)
    lps = []
    with torch.no_grad():
        for _ in range(new_tokens):
            logp = torch.log_softmax(model(input_ids=ids).logits[:, -1].float(), -1)
            tok = torch.multinomial(logp.exp(), 1, generator=gen)
            lps.append(logp.gather(1, tok))
            ids = torch.cat([ids, tok], 1)
    return ids[:, len(prompt):].tolist(), torch.cat(lps, 1).tolist()


def test_grpo_reward_rises(world1, text_lm):
    tok = AutoTokenizer.from_pretrained(text_lm)
    prompts = [tok.encode(f"<|im_start|>user\nsay {w}<|im_end|>\n<|im_start|>assistant\n") for w in ("yes", "red", "no", "a word")]
    sampler = AutoModelForCausalLM.from_pretrained(text_lm, dtype=torch.float32)
    with torch.no_grad():  # the task: say the model's second-favourite first token (a few % at the start)
        first = torch.stack([sampler(input_ids=torch.tensor([p])).logits[0, -1].softmax(-1) for p in prompts]).mean(0)
        target = int(first.topk(2).indices[1])
    cfg = LearnerConfig(micro_batch_size=16, lora=LoraConfig(r=8, alpha=16),
                        algo=AlgoConfig(advantage_estimator="grpo"), optim=OptimConfig(lr=5e-3))
    sampler = get_peft_model(sampler, PeftLoraConfig(r=8, lora_alpha=16, target_modules=cfg.lora.target_regex()))
    group = LocalLearnerGroup(world1, "learn", cfg, text_lm)
    gen = torch.Generator().manual_seed(0)
    rewards, mismatch = [], []
    for step in range(8):
        set_peft_model_state_dict(sampler, state_of(group.adapter_ref(step + 1).files))
        eps = []
        for p, prompt in enumerate(prompts):
            outs, lps = sample(sampler, prompt, 8, 3, gen)
            for j, (o, lp) in enumerate(zip(outs, lps)):
                turn = Turn("policy", tuple(prompt), tuple(o), tuple(lp), adapter_version=step)
                eps.append(Episode(f"{step}-{p}-{j}", f"{step}-{p}", "t", (turn,), reward=sum(x == target for x in o) / 3))
        m = group.train_step(EpisodeBatch(tuple(eps)))
        rewards.append(m.advantage.reward_mean)
        mismatch.append(m.advantage.mismatch_max_abs_log_ratio)
    group.shutdown()
    print("reward per step", np.round(rewards, 3))
    assert rewards[0] < 0.15
    assert np.mean(rewards[-2:]) > 0.5
    assert max(mismatch) < 1e-4  # the learner scores the sampled tokens as the sampler did


# ---- 2. export ---------------------------------------------------------------------------------------


def test_export_loads_in_peft(world1, text_lm, tmp_path):
    cfg = LearnerConfig(role="reasoner", base_model_id="tiny-text-lm", micro_batch_size=4,
                        algo=AlgoConfig(advantage_estimator="rloo"), optim=OptimConfig(lr=1e-2))
    group = LocalLearnerGroup(world1, "export", cfg, text_lm)
    batch = random_batch(5, role="reasoner")
    group.train_step(batch)
    out = group.export_adapter(tmp_path / "reasoner" / "v1", version=1)
    files = group.adapter_ref(1).files
    learner_lp = group.logprobs(batch)
    again = group.export_adapter(tmp_path / "reasoner" / "v1", version=1)  # idempotent
    group.shutdown()

    d = Path(out.path)
    manifest = json.loads((d / "manifest.json").read_text())
    digest = hashlib.sha256((d / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert manifest["sha256"] == digest == out.sha256 == again.sha256
    assert (manifest["role"], manifest["version"], manifest["base_model"]) == ("reasoner", 1, "tiny-text-lm")
    assert (d / "STABLE").exists() and sorted(p.name for p in d.parent.iterdir()) == ["v1"]  # no temp left
    assert (d / "adapter_model.safetensors").read_bytes() == files["adapter_model.safetensors"]

    base = AutoModelForCausalLM.from_pretrained(text_lm, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, d)
    want = state_of(files)
    assert max(float(v.abs().max()) for k, v in want.items() if "lora_B" in k) > 1e-3
    with torch.no_grad():
        for ep, lp in zip(batch.episodes, learner_lp):
            t = ep.turns[0]
            ids = torch.tensor([t.prompt_ids + t.output_ids])
            logsm = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            P = len(t.prompt_ids)
            ref = [float(logsm[P - 1 + i, x]) for i, x in enumerate(t.output_ids)]
            assert lp == pytest.approx(ref, abs=1e-5)


# ---- 3. alternating roles ------------------------------------------------------------------------------


def dialogue_batch(vlm_dir: str, seed: int) -> EpisodeBatch:
    """IMMO-style episodes: reasoner asks, observer (the VLM, with the image) answers, reasoner answers.
    Token ids come from the VLM processor (shared tokenizer), the image placeholders expanded."""
    proc = AutoProcessor.from_pretrained(vlm_dir)
    rng = random.Random(seed)
    eps, images = [], {}
    for i in range(4):
        img = Image.fromarray(np.random.RandomState(seed * 10 + i).randint(0, 255, (56, 84, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        h = image_hash(buf.getvalue())
        images[h] = buf.getvalue()
        text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}],
                                        add_generation_prompt=True)
        obs_prompt = tuple(proc(text=[text], images=[img], return_tensors="pt")["input_ids"][0].tolist())
        q = tuple(rng.randrange(20, 3000) for _ in range(3))
        a = tuple(rng.randrange(20, 3000) for _ in range(4))
        f = tuple(rng.randrange(20, 3000) for _ in range(2))
        r1 = Turn("reasoner", (1, 40, 41, 2), q, (-8.0,) * 3, 0)
        o1 = Turn("observer", obs_prompt + q, a, (-8.0,) * 4, 0, image_hashes=(h,))
        r2 = Turn("reasoner", (1, 40, 41, 2) + q + a, f, (-8.0,) * 2, 0)
        eps.append(Episode(f"d{i}", f"g{i // 2}", "t", (r1, o1, r2), reward=float(i % 2)))
    return EpisodeBatch(tuple(eps), images)


def test_alternating_roles_touch_only_the_active_adapter(world1, text_lm, vlm):
    algo = AlgoConfig(advantage_estimator="grpo", kl_coef=0.05, shuffle=False)
    opt = OptimConfig(lr=1e-2)
    reasoner = LocalLearnerGroup(world1, "reasoner", LearnerConfig(role="reasoner", algo=algo, optim=opt), text_lm)
    observer = LocalLearnerGroup(world1, "observer", LearnerConfig(role="observer", algo=algo, optim=opt), vlm)
    batch = dialogue_batch(vlm, 0)
    r0, o0 = reasoner.adapter_ref(1).files, observer.adapter_ref(1).files

    m_r = reasoner.train_step(batch)                 # phase 1: the Reasoner is the policy
    r1, o1 = reasoner.adapter_ref(2).files, observer.adapter_ref(1).files
    assert m_r.samples == 8  # 2 reasoner turns x 4 episodes; observer turns are not rows
    assert r1["adapter_model.safetensors"] != r0["adapter_model.safetensors"]
    assert o1["adapter_model.safetensors"] == o0["adapter_model.safetensors"]

    m_o = observer.train_step(batch)                 # phase 2: the Observer is the policy
    r2, o2 = reasoner.adapter_ref(2).files, observer.adapter_ref(2).files
    assert m_o.samples == 4
    assert r2["adapter_model.safetensors"] == r1["adapter_model.safetensors"]
    assert o2["adapter_model.safetensors"] != o1["adapter_model.safetensors"]

    # The other role's turns' sampler log-probs, rewards and trainable flags are invisible to a learner.
    def perturb(t: Turn) -> Turn:
        if t.role != "observer":
            return t
        return replace(t, output_logprobs=tuple(x - 3.0 for x in t.output_logprobs), reward=5.0, trainable=False)
    altered = EpisodeBatch(tuple(replace(e, turns=tuple(perturb(t) for t in e.turns)) for e in batch.episodes), batch.images)
    a = reasoner.train_step(batch)
    b_group = LocalLearnerGroup(world1, "reasoner-b", LearnerConfig(role="reasoner", algo=algo, optim=opt), text_lm)
    b_group.train_step(batch)
    b = b_group.train_step(altered)
    assert state_of(b_group.adapter_ref(3).files) .keys() == state_of(reasoner.adapter_ref(3).files).keys()
    assert b_group.adapter_ref(3).files["adapter_model.safetensors"] == reasoner.adapter_ref(3).files["adapter_model.safetensors"]
    assert a.loss.total == b.loss.total
    for g in (reasoner, observer, b_group):
        g.shutdown()


# ---- 4. checkpoint / resume --------------------------------------------------------------------------


def test_resume_reproduces_the_next_update(text_lm, tmp_path):
    cfg = LearnerConfig(zero_stage=3, micro_batch_size=2, lora=LoraConfig(dropout=0.1),
                        algo=AlgoConfig(advantage_estimator="grpo", kl_coef=0.05, epochs=2, minibatches=2,
                                        normalize_rewards=True),
                        optim=OptimConfig(lr=5e-3, schedule="cosine", warmup_steps=2, total_steps=6))
    with LocalWorld(2) as world:
        a = LocalLearnerGroup(world, "a", cfg, text_lm)
        a.train_step(random_batch(20))
        a.save_checkpoint(tmp_path / "ckpt")
        want = a.train_step(random_batch(21))
        want_bytes = a.adapter_ref(3).files["adapter_model.safetensors"]
        a.shutdown()
        b = LocalLearnerGroup(world, "b", cfg, text_lm)
        b.load_checkpoint(tmp_path / "ckpt")
        got = b.train_step(random_batch(21))
        got_bytes = b.adapter_ref(3).files["adapter_model.safetensors"]
        b.shutdown()
    for k in ("loss/total", "loss/policy", "loss/kl", "optim/grad_norm", "optim/lr", "reward/normalized_mean", "learner/step"):
        assert flatten(got)[k] == flatten(want)[k], k
    assert got_bytes == want_bytes


# ---- 5. SFT ------------------------------------------------------------------------------------------------


def test_sft_steps_leave_the_rl_schedule_alone(world1, text_lm):
    """Warm-up 2, cosine to step 10, peak 1e-2. Three SFT steps first, then one RL step: the RL
    step runs at multiplier(0) = 1/3 and leaves the schedule at multiplier(1) = 2/3 -> lr 6.667e-3
    (had the SFT steps advanced it: multiplier(4) = 0.5 (1 + cos(pi/4)) = 0.8536 -> 8.536e-3)."""
    cfg = LearnerConfig(micro_batch_size=2, optim=OptimConfig(lr=1e-2, schedule="cosine", warmup_steps=2,
                                                              total_steps=10), sft=SFTConfig(lr=4e-2))
    group = LocalLearnerGroup(world1, "sft_schedule", cfg, text_lm)
    example = SFTExample((("user", "say yes"), ("assistant", "yes")))
    sft = [group.sft_step([example]) for _ in range(3)]
    rl = group.train_step(random_batch(30))
    group.shutdown()
    assert [m.sft_step for m in sft] == [1.0, 2.0, 3.0] and rl.learner_step == 1.0
    assert rl.lr == pytest.approx(1e-2 * 2 / 3, rel=1e-6)


def test_sft_first_loss_is_plain_nll_and_it_falls(world1, text_lm):
    examples = [SFTExample((("system", "be brief"), ("user", "colour of the sky?"), ("assistant", "blue"))),
                SFTExample((("user", "two plus two?"), ("assistant", "four"), ("user", "and three?"), ("assistant", "five"))),
                SFTExample((("user", "say yes"), ("assistant", "yes")))]
    group = LocalLearnerGroup(world1, "sft", LearnerConfig(micro_batch_size=2, optim=OptimConfig(lr=5e-3)), text_lm)
    losses = [group.sft_step(examples).loss for _ in range(8)]
    group.shutdown()

    tok = AutoTokenizer.from_pretrained(text_lm)
    model = AutoModelForCausalLM.from_pretrained(text_lm, dtype=torch.float32)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    nll, n = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            ids, loss = [], []
            for role, text in ex.messages:  # ChatML; loss on the reply and its <|im_end|> only
                if role == "assistant":
                    for part, flag in ((enc("<|im_start|>assistant\n"), False), (enc(text + "<|im_end|>"), True), (enc("\n"), False)):
                        ids += part
                        loss += [flag] * len(part)
                else:
                    part = enc(f"<|im_start|>{role}\n{text}<|im_end|>\n")
                    ids += part
                    loss += [False] * len(part)
            logsm = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
            for t in range(1, len(ids)):
                if loss[t]:
                    nll -= float(logsm[t - 1, ids[t]])
                    n += 1
    print("sft losses", np.round(losses, 4))
    assert losses[0] == pytest.approx(nll / n, abs=1e-5)  # adapter starts at B = 0: the base model
    assert losses[-1] < 0.5 * losses[0]
