"""Tiny random-weight Llama checkpoints that vLLM's CPU backend loads, built offline.

They stand in for real models on machines without GPUs or a model hub: the text they
produce is noise, but the serving path (tokenizer, chat template, engine, streaming,
usage accounting) is the real one. Two sizes give two tiers that really differ.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


@dataclass(frozen=True)
class TinyModel:
    """Shape of one tiny checkpoint. head_dim (hidden/heads) must be >= 64 for vLLM CPU."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int = 512
    max_positions: int = 4096
    seed: int = 0


TINY_MODELS = (
    TinyModel(
        "tiny-small",
        hidden_size=128,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=256,
        seed=1,
    ),
    TinyModel(
        "tiny-large",
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=512,
        seed=2,
    ),
)


def _corpus() -> list[str]:
    """Offline English text to train the tokenizer: docstrings of standard-library modules."""
    import argparse
    import collections
    import functools
    import json as json_mod
    import logging
    import pathlib
    import subprocess

    texts: list[str] = []
    for mod in (argparse, collections, functools, json_mod, logging, pathlib, subprocess):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc:
                texts.append(doc)
    return texts


def build_tokenizer(out: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def build_model(shape: TinyModel, out: Path) -> Path:
    """Write a checkpoint directory `out/shape.name` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target = out / shape.name
    target.mkdir(parents=True, exist_ok=True)
    build_tokenizer(target, shape.vocab_size)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(target)
    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(shape.seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(target, safe_serialization=True)
    (target / "tierline-tiny.json").write_text(json.dumps(shape.__dict__, indent=2) + "\n")
    return target


def is_built(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def ensure_tiny_models(out: Path, force: bool = False) -> list[tuple[Path, bool]]:
    """Build any missing tiny model under `out`; returns (path, built_now) per model."""
    results = []
    for shape in TINY_MODELS:
        path = out / shape.name
        if force or not is_built(path):
            results.append((build_model(shape, out), True))
        else:
            results.append((path, False))
    return results
