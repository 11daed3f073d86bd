"""The perplexity protocol used everywhere in prune_recover.

Protocol: the split is read as one string and tokenized once (no special tokens added); the ids
are cut into non-overlapping windows of `seq_len` tokens (the tail that does not fill a window is
dropped; `max_windows` keeps only the first ones). For a model whose tokenizer starts texts with BOS
(`data.bos`), each window is BOS followed by `seq_len - 1` tokens of the text. Each window is scored on its own, without
context from the previous one: the `seq_len - 1` next-token predictions of each window contribute
their negative log-likelihood, computed from float32 logits and summed in float64. The forward pass
computes in `precision` (float32, or autocast to bfloat16 as a bf16 training run computes: faster on a CPU
with bfloat16 instructions; SmolLM2-135M on 16 x 1024 windows of wiki.test.raw scores 22.77 in bfloat16 and
22.75 in float32, docs/BENCHMARKS.md); a report names it, and figures compare only at equal precision. Perplexity is
`exp(total NLL / total predicted tokens)`, taken once at the end (not an average of per-window
perplexities). `seq_len=128` is the Shortened-LLaMA / LLM-Pruner setting; 1024 is the long-context one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from prune_recover.data.tokens import text_per_window, windows
from prune_recover.lm import check_forward_precision, eval_mode, forward_precision, model_device, summed_nll
from prune_recover.settings import check_whole_numbers


@dataclass(frozen=True)
class PerplexityProtocol:
    """How perplexity is measured (see the module docstring).

    Attributes:
        seq_len: Tokens per window.
        max_windows: Score only the first this many windows; None scores the whole split.
        batch_size: Windows per forward pass (does not change the result).
        precision: What the forward pass computes in: `float32`, or autocast to `bfloat16` / `float16`.
        bos: The BOS id each window starts with (then `seq_len - 1` text tokens), or None.
    """

    seq_len: int = 1024
    max_windows: int | None = None
    batch_size: int = 1
    precision: str = "float32"
    bos: int | None = None

    def __post_init__(self):
        check_forward_precision(self.precision)
        counts = {"eval.seq_lens": (self.seq_len, 2), "eval.batch_size": (self.batch_size, 1)}
        if self.max_windows is not None:
            counts["eval.max_windows"] = (self.max_windows, 1)
        check_whole_numbers(counts)

    def describe(self) -> dict:
        return {
            **asdict(self),
            "windows": "non-overlapping, no carried context, first max_windows in order",
            "reduction": "exp(sum token NLL / predicted tokens), float32 logits, float64 sum",
        }

    def window_count(self, ids: torch.Tensor) -> int:
        """How many windows of `ids` this protocol scores."""
        available = ids.numel() // text_per_window(self.seq_len, self.bos)
        return available if self.max_windows is None else min(self.max_windows, available)


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity with the summed NLL and the count of predicted tokens it came from."""

    ppl: float
    nll_sum: float
    tokens: int


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, protocol: PerplexityProtocol) -> PerplexityResult:
    """Perplexity of `model` on the 1-D token ids `ids` under `protocol` (measured in eval mode)."""
    samples = windows(ids, protocol.seq_len, count=protocol.window_count(ids), bos=protocol.bos)
    device = model_device(model)
    nll_sum, tokens = 0.0, 0
    with eval_mode(model), forward_precision(protocol.precision, device):
        for batch in samples.split(protocol.batch_size):
            nll, count = summed_nll(model, batch.to(device))
            nll_sum += nll.item()
            tokens += count
    return PerplexityResult(ppl=math.exp(nll_sum / tokens), nll_sum=nll_sum, tokens=tokens)
