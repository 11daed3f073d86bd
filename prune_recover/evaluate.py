"""The perplexity protocol used everywhere in prune_recover.

Protocol: the split is read as one string and tokenized once (no special tokens added); the ids
are cut into non-overlapping windows of `seq_len` tokens (the tail that does not fill a window is
dropped; `max_windows` keeps only the first ones). Each window is scored on its own, without
context from the previous one: the `seq_len - 1` next-token predictions of each window contribute
their negative log-likelihood, computed from float32 logits and summed in float64. Perplexity is
`exp(total NLL / total predicted tokens)`, taken once at the end (not an average of per-window
perplexities). `seq_len=128` is the Shortened-LLaMA / LLM-Pruner setting; 1024 is the long-context one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prune_recover.text import windows


@dataclass(frozen=True)
class PerplexityProtocol:
    """How perplexity is measured (see the module docstring).

    Attributes:
        seq_len: Tokens per window.
        max_windows: Score only the first this many windows; None scores the whole split.
        batch_size: Windows per forward pass (does not change the result).
    """

    seq_len: int = 1024
    max_windows: int | None = None
    batch_size: int = 1

    def describe(self) -> dict:
        return {
            **asdict(self),
            "windows": "non-overlapping, no carried context, first max_windows in order",
            "reduction": "exp(sum token NLL / predicted tokens), float32 logits, float64 sum",
        }


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll_sum: float
    tokens: int


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, protocol: PerplexityProtocol) -> PerplexityResult:
    """Perplexity of `model` on the 1-D token ids `ids` under `protocol`.

    The model is put in eval mode for the measurement and its previous mode is restored.
    """
    samples = windows(ids, protocol.seq_len, count=_window_count(ids, protocol))
    device = model_device(model)
    was_training = model.training
    model.eval()
    nll_sum = 0.0
    tokens = 0
    try:
        for batch in samples.split(protocol.batch_size):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            nll = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            nll_sum += nll.double().item()
            tokens += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return PerplexityResult(ppl=math.exp(nll_sum / tokens), nll_sum=nll_sum, tokens=tokens)


def _window_count(ids: torch.Tensor, protocol: PerplexityProtocol) -> int:
    available = ids.numel() // protocol.seq_len
    if protocol.max_windows is None:
        return available
    return min(protocol.max_windows, available)


class Evaluator:
    """Perplexity on one token stream under one protocol per sequence length.

    Args:
        ids: 1-D token ids of the evaluation split.
        seq_lens: Window lengths to report, e.g. `[128, 1024]`; the first is the headline figure.
        max_windows: Score only the first this many windows per length; None scores all.
        batch_size: Windows per forward pass.
    """

    def __init__(
        self,
        ids: torch.Tensor,
        seq_lens: list[int] | tuple[int, ...] = (1024,),
        max_windows: int | None = None,
        batch_size: int = 1,
        tasks: Callable[[nn.Module], dict] | None = None,
    ):
        if not seq_lens:
            raise ValueError("eval.seq_lens must name at least one window length")
        self.ids = ids
        self.tasks = tasks
        self.protocols = [PerplexityProtocol(int(n), max_windows, batch_size) for n in seq_lens]
        for protocol in self.protocols:
            if ids.numel() < protocol.seq_len:
                raise ValueError(f"the evaluation text has {ids.numel()} tokens, fewer than seq_len {protocol.seq_len}")

    def __call__(self, model: nn.Module) -> dict[int, float]:
        """`{seq_len: perplexity}` for every configured length."""
        return {p.seq_len: perplexity(model, self.ids, p).ppl for p in self.protocols}

    def summary(self, model: nn.Module) -> dict:
        """Size, perplexity at every length, and the task scores when tasks are configured."""
        from prune_recover.report import model_summary

        return model_summary(model, self(model), self.tasks(model) if self.tasks else None)

    def describe(self) -> dict:
        return {"protocols": [p.describe() for p in self.protocols], "description": __doc__.strip()}


def build_evaluator(
    data,
    tokenizer,
    seq_lens: list[int] | tuple[int, ...] = (1024,),
    max_windows: int | None = None,
    batch_size: int = 1,
    tasks: list[str] | tuple[str, ...] = (),
    task_limit: int | None = None,
    task_batch_size: int = 8,
) -> Evaluator:
    """The evaluator of the `eval` config node, on the data module's test split.

    `tasks` are lm-eval task names, run on the model before pruning and at the end; the local
    WikiText-2 tasks (`prune_recover.lm_eval_bridge.LOCAL_TASKS`) are built from the test file.
    """
    task_evaluator = None
    if tasks:
        from prune_recover.lm_eval_bridge import LOCAL_TASKS, TaskEvaluator, build_local_tasks

        include_path = None
        if set(tasks) & set(LOCAL_TASKS):
            test = data.source(data.test_split)
            if test["kind"] != "files":
                raise ValueError(f"the local tasks {LOCAL_TASKS} are built from a local WikiText-2 test file")
            include_path = build_local_tasks(test["files"][data.test_split][0])
        task_evaluator = TaskEvaluator(tokenizer, list(tasks), include_path, task_limit, task_batch_size)
    return Evaluator(data.token_ids(data.test_split), seq_lens, max_windows, batch_size, task_evaluator)
