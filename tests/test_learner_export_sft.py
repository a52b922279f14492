"""learner.export (a LoRA state dict as an adapter artifact, written atomically) and learner.sft (ChatML rows whose loss
covers exactly the assistant replies), with a character-level fake tokenizer for hand-checkable ids."""

import hashlib
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load as load_safetensors

from learner.export import adapter_artifact, export_dir
from rollout.adapter_artifact import STABLE, read_artifact
from learner.sft import SFTExample, read_sft_parquet, tokenize_examples

pytestmark = pytest.mark.unit


class FakeLoraConfig:
    r, lora_alpha = 4, 8.0

    def to_dict(self):
        return {"peft_type": "LORA", "r": 4, "lora_alpha": 8.0, "target_modules": {"v_proj", "q_proj"}}


def artifact(version=1, scale=1.0):
    state = {"base_model.model.layers.0.q_proj.lora_A.weight": torch.full((4, 6), scale),
             "base_model.model.layers.0.q_proj.lora_B.weight": torch.zeros(6, 4)}
    return adapter_artifact(state, FakeLoraConfig(), role="observer", version=version, base_model_id="tiny", step=3)


def test_adapter_artifact_and_manifest():
    a = artifact()
    f = a.files
    m = json.loads(f["manifest.json"])
    assert m["sha256"] == a.sha256 == hashlib.sha256(f["adapter_model.safetensors"]).hexdigest()
    assert (m["role"], m["version"], m["base_model"], m["lora_r"], m["learner_step"]) == ("observer", 1, "tiny", 4, 3)
    assert (a.role, a.version, a.base_model) == ("observer", 1, "tiny")
    cfg = json.loads(f["adapter_config.json"])
    assert cfg["target_modules"] == ["q_proj", "v_proj"] and cfg["base_model_name_or_path"] == "tiny"
    assert load_safetensors(f["adapter_model.safetensors"])["base_model.model.layers.0.q_proj.lora_A.weight"].sum() == 24
    assert artifact() == artifact()  # deterministic bytes


def test_export_is_atomic_idempotent_and_verified(tmp_path):
    out = export_dir(artifact(), tmp_path / "observer" / "v1")
    d = tmp_path / "observer" / "v1"
    assert out.path == str(d) and (d / STABLE).exists()
    assert sorted(p.name for p in (tmp_path / "observer").iterdir()) == ["v1"]  # no temp dir left
    assert read_artifact(d).sha256 == out.sha256 == artifact().sha256
    assert export_dir(artifact(), d).sha256 == out.sha256  # same content again: kept
    with pytest.raises(FileExistsError):
        export_dir(artifact(scale=2.0), d)
    data = bytearray((d / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 1
    (d / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"sha256 of {d}/adapter_model.safetensors"):
        read_artifact(d)
    (d / STABLE).unlink()
    with pytest.raises(ValueError, match="STABLE"):
        read_artifact(d)


SPECIAL = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<|vision_start|>": 9, "<|vision_end|>": 10,
           "<|image_pad|>": 12}


class CharTokenizer:
    """Special tokens -> their ids, every other character c -> 100 + ord(c)."""

    def encode(self, text, add_special_tokens=False):
        ids = []
        for part in re.split(r"(<\|[a-z_]+\|>)", text):
            ids += [SPECIAL[part]] if part in SPECIAL else [100 + ord(c) for c in part]
        return ids


def ids(s):
    return CharTokenizer().encode(s)


def test_sft_loss_only_on_assistant_replies():
    ex = SFTExample((("system", "s"), ("user", "q"), ("assistant", "ab"), ("user", "r"), ("assistant", "c")))
    b = tokenize_examples([ex], CharTokenizer(), pad_id=0, max_length=100)
    want = (ids("<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")
            + ids("ab<|im_end|>") + ids("\n<|im_start|>user\nr<|im_end|>\n<|im_start|>assistant\n") + ids("c<|im_end|>") + ids("\n"))
    assert b.input_ids[0].tolist() == want
    trained = b.input_ids[0][b.loss_mask[0]].tolist()
    assert trained == ids("ab<|im_end|>") + ids("c<|im_end|>")
    first = len(ids("<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"))
    assert int(b.prompt_lens[0]) == first


def test_sft_image_expansion_padding_and_limits():
    img = b"\x89PNG fake"
    exs = [SFTExample((("user", "what?"), ("assistant", "x")), image=img), SFTExample((("user", "hi"), ("assistant", "yo")))]
    b = tokenize_examples(exs, CharTokenizer(), pad_id=0, max_length=100, image_tokens=lambda data: 3)
    row0 = b.input_ids[0][b.attention_mask[0]].tolist()
    assert row0[:11] == ids("<|im_start|>user\n<|vision_start|>") + [12, 12, 12] + ids("<|vision_end|>")
    h = hashlib.sha256(img).hexdigest()
    assert b.image_hashes == ((h,), ()) and b.images == {h: img}
    assert b.input_ids[1][~b.attention_mask[1]].tolist() == [0] * int((~b.attention_mask[1]).sum())
    with pytest.raises(ValueError, match="max_length"):
        tokenize_examples(exs[1:], CharTokenizer(), pad_id=0, max_length=5)
    with pytest.raises(ValueError, match="no assistant"):
        SFTExample((("user", "hi"),))


def test_read_sft_parquet_both_layouts(tmp_path):
    pq.write_table(pa.table({"prompt": ["q"], "response": ["a"], "system": ["s"]}), tmp_path / "pr.parquet")
    msgs = pa.array([[{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]])
    pq.write_table(pa.table({"messages": msgs}), tmp_path / "m.parquet")
    assert read_sft_parquet(tmp_path / "pr.parquet")[0].messages == (("system", "s"), ("user", "q"), ("assistant", "a"))
    got = read_sft_parquet(tmp_path / "m.parquet", {"human": "user", "gpt": "assistant"})
    assert got[0].messages == (("user", "q"), ("assistant", "a"))
