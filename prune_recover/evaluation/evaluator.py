"""What a run measures on a model before pruning, after each event and at the end.

`Evaluator` scores perplexity at every configured window length (the first one is the headline
figure) and, when tasks are configured, runs lm-eval tasks on the in-memory model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prune_recover.evaluation.perplexity import PerplexityProtocol, perplexity
from prune_recover.evaluation.perplexity import __doc__ as PROTOCOL_DOC
from prune_recover.evaluation.report import model_summary


class Evaluator:
    """Perplexity on one token stream under one protocol per sequence length, plus optional tasks.

    Args:
        ids: 1-D token ids of the evaluation split.
        seq_lens: Window lengths to report, e.g. `[128, 1024]`; the first is the headline figure.
        max_windows: Score only the first this many windows per length; None scores all.
        batch_size: Windows per forward pass.
        tasks: Callable `model -> {task: {metric: value}}` (lm-eval), run by `summary`.
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
        return model_summary(model, self(model), self.tasks(model) if self.tasks else None)

    def describe(self) -> dict:
        return {"protocols": [p.describe() for p in self.protocols], "description": PROTOCOL_DOC.strip()}


def build_evaluator(
    test_ids: torch.Tensor,
    tokenizer,
    test_file: str | Path | None = None,
    seq_lens: list[int] | tuple[int, ...] = (1024,),
    max_windows: int | None = None,
    batch_size: int = 1,
    tasks: list[str] | tuple[str, ...] = (),
    task_limit: int | None = None,
    task_batch_size: int = 8,
) -> Evaluator:
    """The evaluator of the `eval` config node on the test split's ids.

    Args:
        test_file: The local WikiText-2 test file, from which the local tasks
            (`prune_recover.evaluation.tasks.LOCAL_TASKS`) are built when they are asked for.
        tasks: lm-eval task names, run on the model before pruning and at the end.
    """
    task_evaluator = None
    if tasks:
        from prune_recover.evaluation.tasks import LOCAL_TASKS, TaskEvaluator, build_local_tasks

        include_path = None
        if set(tasks) & set(LOCAL_TASKS):
            if test_file is None:
                raise ValueError(f"the local tasks {LOCAL_TASKS} are built from a local WikiText-2 test file")
            include_path = build_local_tasks(test_file)
        task_evaluator = TaskEvaluator(tokenizer, list(tasks), include_path, task_limit, task_batch_size)
    return Evaluator(test_ids, seq_lens, max_windows, batch_size, task_evaluator)
