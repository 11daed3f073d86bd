"""The text domains the one-shot benches score, and their protocol: WikiText-2 test prose and held-out Python code,
the first 16 windows of 1024 tokens of each."""

from __future__ import annotations

import torch

from prune_recover.data.sources import text_file_ids
from prune_recover.evaluation.evaluator import Evaluator
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
