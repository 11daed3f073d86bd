"""What every layer asks of a causal LM: its device, a temporary eval mode, its size, its summed NLL, the
precision its forward passes compute in.

One home for each, so that evaluation (perplexity), pruning (block scores, calibration passes) and
training (validation) measure a model the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from prune_recover.arch import unwrap


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode (no dropout) for the block, then restore the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# Precisions a forward pass may compute in: float32 as the weights are, or autocast to a 16-bit type
# (matrix products in 16 bits, weights untouched).
FORWARD_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_forward_precision(precision: str) -> str:
    """`precision` if it names a forward precision, else a ValueError that lists the allowed ones."""
    if precision not in FORWARD_PRECISIONS:
        raise ValueError(f"precision '{precision}' is not supported; choose one of {sorted(FORWARD_PRECISIONS)}")
    return precision


def forward_precision(precision: str, device: torch.device, cache: bool = True) -> torch.autocast:
    """A context in which `model(...)` computes in `precision`: autocast to it on `device`, or for float32 autocast
    switched off (also inside a caller's autocast region, such as a training step's). `cache=False` recasts the
    weights at every call: inside an outer autocast region the cast cache outlives this context, so weights that
    change between entries (an optimizer's steps) need it off."""
    dtype = FORWARD_PRECISIONS[check_forward_precision(precision)]
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache)


def count_parameters(model: nn.Module) -> int:
    """Parameters of the deployable model: shared tensors once, LoRA adapter matrices excluded."""
    seen = {}
    for name, param in unwrap(model).named_parameters():
        if "lora_" not in name:
            seen[id(param)] = param.numel()
    return sum(seen.values())


def summed_nll(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood of a batch `[batch, seq_len]` and the tokens predicted.

    Each row is scored on its own: its `seq_len - 1` next-token predictions, from float32 logits,
    summed into a float64 scalar (a sum, not a mean, so that batches of any size add up exactly).
    """
    logits = model(input_ids=input_ids, use_cache=False).logits
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    return nll.double(), targets.numel()
