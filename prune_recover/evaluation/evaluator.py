"""What a run measures on a model before pruning, after each event and at the end.

`Evaluator` scores perplexity on named text domains (the test split first: its first window length is
the headline figure) at every configured window length and, when tasks are configured, runs lm-eval
tasks on the in-memory model (before pruning and at the end only: they take minutes), every forward pass in
one precision (`eval.precision`; the configs default to the trainer's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from prune_recover.data.sources import text_file_ids
from prune_recover.evaluation.perplexity import PerplexityProtocol, perplexity
from prune_recover.evaluation.perplexity import __doc__ as PROTOCOL_DOC
from prune_recover.evaluation.report import model_summary
from prune_recover.lm import check_forward_precision, forward_precision, model_device


class Evaluator:
    """Perplexity on several token streams under one protocol per sequence length, plus optional tasks.

    Args:
        domains: `{name: 1-D token ids}`; the first is the headline domain (the test split).
        seq_lens: Window lengths to report, e.g. `[128, 1024]`; the first is the headline figure.
        max_windows: Score only the first this many windows per length; None scores all.
        batch_size: Windows per forward pass.
        tasks: Callable `model -> {"tasks": ..., "average": ...}` (lm-eval), run by `summary`.
        task_limit: Items per task the tasks were limited to (recorded in `describe`).
        tasks_before_pruning: Run the tasks on the unpruned model too (`before_pruning`); False leaves them to
            the end (a sweep that scores its one base model once, with `python -m prune_recover.eval`).
        precision: What the forward passes of perplexity and tasks compute in: `float32`, or autocast to
            `bfloat16` / `float16` (the precision a mixed-precision run trains in).
        bos: The BOS id every perplexity window starts with (`data.bos`), or None.
    """

    def __init__(
        self,
        domains: Mapping[str, torch.Tensor],
        seq_lens: list[int] | tuple[int, ...] = (1024,),
        max_windows: int | None = None,
        batch_size: int = 1,
        tasks: Callable[[nn.Module], dict] | None = None,
        task_limit: int | None = None,
        tasks_before_pruning: bool = True,
        precision: str = "float32",
        bos: int | None = None,
    ):
        if not seq_lens:
            raise ValueError("eval.seq_lens must name at least one window length")
        if len(domains) == 0:
            raise ValueError("the evaluator needs at least one text domain")
        self.domains = dict(domains)
        self.tasks = tasks
        self.task_limit = task_limit
        self.tasks_before_pruning = tasks_before_pruning
        self.precision = precision
        self.protocols = [PerplexityProtocol(n, max_windows, batch_size, precision, bos) for n in seq_lens]
        longest = max(p.seq_len for p in self.protocols)
        for name, ids in self.domains.items():
            if ids.numel() < longest:
                raise ValueError(
                    f"the evaluation text '{name}' has {ids.numel()} tokens, fewer than one window of {longest} "
                    "(eval.seq_lens); give a longer text or shorter windows"
                )

    @property
    def headline(self) -> str:
        """The domain whose first-length perplexity is the run's `ppl`."""
        return next(iter(self.domains))

    def perplexities(self, model: nn.Module) -> dict[str, dict[int, float]]:
        """`{domain: {seq_len: perplexity}}` for every domain and configured length."""
        return {
            name: {p.seq_len: perplexity(model, ids, p).ppl for p in self.protocols}
            for name, ids in self.domains.items()
        }

    def __call__(self, model: nn.Module) -> dict[int, float]:
        """`{seq_len: perplexity}` on the headline domain only."""
        return {p.seq_len: perplexity(model, self.domains[self.headline], p).ppl for p in self.protocols}

    def summary(self, model: nn.Module, tasks: bool = True) -> dict:
        """Size, perplexity of every domain at every length, and the task scores when tasks are configured."""
        by_domain = self.perplexities(model)
        results = None
        if tasks and self.tasks:
            with forward_precision(self.precision, model_device(model)):
                results = self.tasks(model)
        return model_summary(model, by_domain, results)

    def before_pruning(self, model: nn.Module) -> dict:
        """The unpruned model's summary: with the tasks unless `tasks_before_pruning` is off."""
        return self.summary(model, tasks=self.tasks_before_pruning)

    def describe(self) -> dict:
        """The protocol, the domains and their sizes, and the task limit, for the report."""
        return {
            "protocols": [p.describe() for p in self.protocols],
            "domains": {name: ids.numel() for name, ids in self.domains.items()},
            "task_limit": self.task_limit if self.tasks else None,
            "tasks_before_pruning": bool(self.tasks) and self.tasks_before_pruning,
            "precision": self.precision,
            "description": PROTOCOL_DOC.strip(),
        }


def build_evaluator(
    test_ids: torch.Tensor,
    tokenizer,
    test_file: str | Path | None = None,
    test_name: str = "test",
    texts: Mapping[str, str | list[str]] | None = None,
    seq_lens: list[int] | tuple[int, ...] = (1024,),
    max_windows: int | None = None,
    batch_size: int = 1,
    tasks: list[str] | tuple[str, ...] = (),
    task_limit: int | None = None,
    task_batch_size: int = 8,
    zeroshot_dir: str | Path | None = None,
    tasks_before_pruning: bool = True,
    precision: str = "float32",
    bos: int | None = None,
) -> Evaluator:
    """The evaluator of the `eval` config node; everything it reads is read and checked here, before weights load.

    Args:
        test_ids: Token ids of the data's test split (the headline domain, named `test_name`).
        test_file: The local WikiText-2 test file, from which the local WikiText tasks are built.
        texts: Extra domains `{name: path or [paths]}` of plain text (files of one domain are joined with EOS).
        tasks: lm-eval task names (`zeroshot`, its tasks, the local WikiText tasks, lm-eval's own).
        zeroshot_dir: Folder of the zero-shot suite's JSON lines.
        precision: The forward passes' precision (`float32`, `bfloat16`, `float16`), checked before anything is read.
        bos: The BOS id perplexity windows and task contexts start with (the data module's `bos_id()`), or None.
    """
    check_forward_precision(precision)
    domains = {test_name: test_ids}
    for name, paths in (texts or {}).items():
        if name in domains:
            raise ValueError(f"eval.texts: the domain name '{name}' is taken (the test split is '{test_name}')")
        try:
            domains[name] = text_file_ids(paths, tokenizer)
        except (ValueError, FileNotFoundError) as error:
            raise type(error)(f"eval.texts.{name} ({paths}): {error}") from error
    task_evaluator = None
    if tasks:
        from prune_recover.evaluation.tasks import build_task_evaluator

        task_evaluator = build_task_evaluator(
            tokenizer, list(tasks), zeroshot_dir, test_file, task_limit, task_batch_size, bos is not None
        )
    return Evaluator(
        domains, seq_lens, max_windows, batch_size, task_evaluator, task_limit, tasks_before_pruning, precision, bos
    )
