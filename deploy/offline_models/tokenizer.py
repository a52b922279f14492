"""The offline byte-level BPE tokenizer shared by every built-in random-init model.

Built like Qwen2's (``tokenizer.json`` of Qwen/Qwen2-VL-2B-Instruct): NFC normaliser, Qwen2's
pre-tokenizer regex (single digits, words with their leading space) then byte-level mapping, BPE
with the 14 Qwen special tokens first (ids 0-13) and ChatML. The merges are trained with the
``tokenizers`` library on :func:`deploy.offline_models.corpus.corpus`; the tags of the cryptogram
format are added as atomic non-special tokens (as Qwen3 adds ``<think>``), so a format reward sees
them as one token each and ``skip_special_tokens`` keeps them.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from deploy.offline_models.corpus import TAGS, corpus

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# Qwen2's split regex (transformers models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX).
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2-VL-Instruct's chat template (its tokenizer_config.json / chat_template.json): a default
# system message, string or list content, images as <|vision_start|><|image_pad|><|vision_end|>.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_bpe(vocab_size: int, seed: int, lines: int) -> Tokenizer:
    """A Qwen2-shaped byte-level BPE of ``vocab_size`` ids (specials and tags included) trained on
    ``corpus(seed, lines)``; deterministic for fixed arguments."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAGS), min_frequency=2, show_progress=False,
        special_tokens=list(QWEN_SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus(seed, lines), trainer=trainer)
    tok.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAGS])
    return tok


def build_tokenizer(vocab_size: int = 4096, seed: int = 0, lines: int = 20000) -> PreTrainedTokenizerFast:
    """The project tokenizer: eos ``<|im_end|>``, pad ``<|endoftext|>``, Qwen2-VL chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(vocab_size, seed, lines),
        eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=QWEN2_VL_CHAT_TEMPLATE,
        model_max_length=8192, clean_up_tokenization_spaces=False,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
    )
