"""Tiny random models of any supported family and a byte-level tokenizer: for tests and smoke runs (model=tiny_random).

They build in milliseconds, need no files and no network, and exercise every code path a real model does
(GQA, biases, rounding, per-layer attention types).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers import models as tokenizer_models
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from prune_recover.arch import family_of

TINY_RANDOM = "tiny-random"


def byte_tokenizer(leading_bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with 259 ids (3 specials + 256 bytes): no files, no training, any text.

    Args:
        leading_bos: Put BOS before every text it encodes (with special tokens), as Llama 3's and Gemma's do.
    """
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(tokenizer_models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    if leading_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


# Small enough that a forward/backward runs in milliseconds; big enough for GQA, biases and rounding.
TINY_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=2048,
)


def tiny_random(family: str = "llama", seed: int = 0, **overrides) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised model of `family` (a `model_type`) with the byte tokenizer, for tests.

    Args:
        family: Any key of `prune_recover.arch.FAMILIES`.
        seed: Seed for the weight initialisation.
        **overrides: Config fields replacing `TINY_DIMS` (e.g. `num_hidden_layers=8`, `mlp_bias=True`).
    """
    tokenizer = byte_tokenizer()
    fields = dict(
        TINY_DIMS,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    fields.update(overrides)
    config = AutoConfig.for_model(family, **fields)
    family_of(config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model, tokenizer
