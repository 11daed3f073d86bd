"""The prune-only job (`recovery=none`): measure, calibrate, prune, measure, export, report."""

from __future__ import annotations

import time
from pathlib import Path

from torch import nn
from transformers import PreTrainedTokenizerBase

from prune_recover.data import CausalLMDataModule
from prune_recover.evaluate import Evaluator
from prune_recover.logging_utils import get_logger
from prune_recover.models import save_pretrained_atomic
from prune_recover.pruning.pruner import Pruner
from prune_recover.report import write_json_atomic

log = get_logger(__name__)


def prune_only(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pruner: Pruner,
    data: CausalLMDataModule,
    evaluator: Evaluator,
    output_dir: str | Path,
    run_info: dict | None = None,
) -> dict:
    """Prune `model` once and write `<output_dir>/final/` and `<output_dir>/pruning_report.json`.

    Returns:
        The report that was written.
    """
    output_dir = Path(output_dir)
    start = time.perf_counter()
    base = evaluator.summary(model)
    log.info("Base model: %s", base)
    batches = data.calibration_batches() if pruner.needs_calibration else []
    event = pruner.prune(model, batches).to_dict()
    final = evaluator.summary(model)
    event.update(step=0, ppl_after=final["ppl"], ppl_after_by_seq_len=final["ppl_by_seq_len"])
    log.info("Pruned model: %s", final)
    report = {
        **(run_info or {}),
        "protocol": {**evaluator.describe(), "eval_data": data.describe_split(data.test_split)},
        "data": data.describe(),
        "base": base,
        "events": [event],
        "final": final,
        "wall_seconds": time.perf_counter() - start,
    }
    save_pretrained_atomic(model, tokenizer, output_dir / "final")
    write_json_atomic(output_dir / "pruning_report.json", report)
    return report
