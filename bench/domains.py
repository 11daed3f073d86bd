"""The text domains the one-shot benches score, and their protocol: WikiText-2 test prose and held-out Python code,
the first 16 windows of 1024 tokens of each."""

from __future__ import annotations

import argparse

import torch

from prune_recover.data.sources import text_file_ids
from prune_recover.evaluation.evaluator import Evaluator
from prune_recover.evaluation.tasks import TaskEvaluator, build_task_evaluator
from prune_recover.jobs.configs import compose_train_config
from prune_recover.training.datamodule import CausalLMDataModule

SEQ_LEN = 1024
WINDOWS = 16


def evaluation_domains(tokenizer, wikitext_dir: str) -> dict[str, torch.Tensor]:
    """`{"wikitext2": test split ids, "code": held-out code ids}`, the domains of `eval=wikitext2_code`.

    The code is configs/eval/wikitext2_code.yaml's standard-library modules (no data config calibrates or
    trains on them), tokenized as `python train.py eval=wikitext2_code` does, so the figures match the
    general-quality table's code column.
    """
    test = CausalLMDataModule(tokenizer, wikitext_dir=wikitext_dir).token_ids("test")
    code = compose_train_config(["eval=wikitext2_code"]).eval.texts.code
    return {"wikitext2": test, "code": text_file_ids(list(code), tokenizer)}


def protocol_evaluator(tokenizer, wikitext_dir: str, precision: str = "float32") -> Evaluator:
    """Both domains on the benches' protocol (`WINDOWS` x `SEQ_LEN`), WikiText-2 the headline, in `precision`."""
    domains = evaluation_domains(tokenizer, wikitext_dir)
    return Evaluator(domains, seq_lens=[SEQ_LEN], max_windows=WINDOWS, precision=precision)


def perplexity_by_domain(evaluator: Evaluator, model) -> dict[str, float]:
    """`{"wikitext2": ppl, "code": ppl}` of `model` on the protocol's window length."""
    return {domain: by_length[SEQ_LEN] for domain, by_length in evaluator.perplexities(model).items()}


def add_zeroshot_flags(parser: argparse.ArgumentParser, items: int | None = None) -> None:
    """`--zero-shot ITEMS` (default `items`; None: not scored) and `--zeroshot-dir`, as the one-shot benches take."""
    help_text = "also the zero-shot suite, ITEMS per task"
    parser.add_argument("--zero-shot", type=int, default=items, metavar="ITEMS", help=help_text)
    parser.add_argument("--zeroshot-dir", default="../shared/data/zero-shot")


def zeroshot_evaluator(args: argparse.Namespace) -> TaskEvaluator | None:
    """The suite's evaluator for the parsed `add_zeroshot_flags` (its tokenizer set later), or None when not asked for.

    Called before the model loads: a bad item count or a missing suite file stops the run here.
    """
    if args.zero_shot is None:
        return None
    if args.zero_shot < 1:
        raise SystemExit(f"--zero-shot: a positive number of items per task, got {args.zero_shot}")
    try:
        return build_task_evaluator(None, ["zeroshot"], args.zeroshot_dir, limit=args.zero_shot)
    except FileNotFoundError as error:
        raise SystemExit(f"--zeroshot-dir: {error}") from error
