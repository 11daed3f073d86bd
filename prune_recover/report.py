"""`pruning_report.json`: what a run pruned, and the model before and after, in one file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from prune_recover.arch import decoder_blocks, unwrap
from prune_recover.pruning.targets import count_parameters


def model_summary(model: nn.Module, ppl: dict[int, float] | None = None, tasks: dict | None = None) -> dict:
    """`{params, intermediate_size, num_layers, ppl, ppl_by_seq_len[, tasks]}`; `ppl` is the first length's figure."""
    summary = {
        "params": count_parameters(model),
        "intermediate_size": unwrap(model).config.intermediate_size,
        "num_layers": len(decoder_blocks(model)),
    }
    if ppl:
        summary["ppl"] = next(iter(ppl.values()))
        summary["ppl_by_seq_len"] = {str(seq_len): value for seq_len, value in ppl.items()}
    if tasks:
        summary["tasks"] = tasks
    return summary


def write_json_atomic(path: str | Path, data: dict) -> Path:
    """Write `data` as JSON so that `path` is never seen half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
