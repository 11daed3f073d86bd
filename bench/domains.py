"""The text domains the one-shot benches score: WikiText-2 test prose and held-out Python code."""

from __future__ import annotations

import torch

from prune_recover.data.sources import text_file_ids
from prune_recover.jobs.configs import compose_train_config
from prune_recover.training.datamodule import CausalLMDataModule


def evaluation_domains(tokenizer, wikitext_dir: str) -> dict[str, torch.Tensor]:
    """`{"wikitext2": test split ids, "code": held-out code ids}`, the domains of `eval=wikitext2_code`.

    The code is configs/eval/wikitext2_code.yaml's standard-library modules (no data config calibrates or
    trains on them), tokenized as `python train.py eval=wikitext2_code` does, so the figures match the
    general-quality table's code column.
    """
    test = CausalLMDataModule(tokenizer, wikitext_dir=wikitext_dir).token_ids("test")
    code = compose_train_config(["eval=wikitext2_code"]).eval.texts.code
    return {"wikitext2": test, "code": text_file_ids(list(code), tokenizer)}
