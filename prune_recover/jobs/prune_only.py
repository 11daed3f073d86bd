"""The prune-only job (`recovery=none`): measure, calibrate, prune, measure, export, report."""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_recover.evaluation.evaluator import Evaluator
from prune_recover.evaluation.report import run_report
from prune_recover.jobs.export import export
from prune_recover.logs import get_logger
from prune_recover.pruning.pruner import Pruner
from prune_recover.training.datamodule import CausalLMDataModule

log = get_logger(__name__)


def prune_only(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pruner: Pruner,
    data: CausalLMDataModule,
    evaluator: Evaluator,
    output_dir: str | Path,
    run_info: dict | None = None,
    export_settings: dict | None = None,
) -> dict:
    """Prune `model` once and write `<output_dir>/final/` (with its card) and `<output_dir>/pruning_report.json`.

    Args:
        export_settings: The `export` config node (`push_to_hub`, `private`).

    Returns:
        The report that was written.
    """
    start = time.perf_counter()
    base = evaluator.before_pruning(model)
    log.info("Base model: %s", base)
    batches = data.calibration_batches() if pruner.needs_calibration else []
    event = pruner.prune(model, batches).to_dict()
    final = evaluator.summary(model)
    event.update(
        step=0,
        ppl_after=final["ppl"],
        ppl_after_by_seq_len=final["ppl_by_seq_len"],
        ppl_after_by_domain=final["ppl_by_domain"],
    )
    log.info("Pruned model: %s", final)
    report = run_report(
        run_info,
        protocol={**evaluator.describe(), "eval_data": data.describe_split(data.test_split)},
        data=data.describe(),
        base=base,
        events=[event],
        final=final,
        wall_seconds=time.perf_counter() - start,
    )
    export(model, tokenizer, output_dir, report, (run_info or {}).get("model", "model"), **(export_settings or {}))
    return report
