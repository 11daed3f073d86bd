"""`pruning_report.json`: what a run pruned, and the model before and after, in one file.

Both jobs (prune-only and prune-and-recover) build their report here, so the two share one layout:
run information, protocol, data, `base`, `events`, `final`, and job-specific sections.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from prune_recover.arch import decoder_blocks, unwrap
from prune_recover.files import write_json_atomic
from prune_recover.lm import count_parameters


def model_summary(
    model: nn.Module, ppl_by_domain: dict[str, dict[int, float]] | None = None, tasks: dict | None = None
) -> dict:
    """Size, perplexities and task scores of a model, as the report stores them.

    `ppl` and `ppl_by_seq_len` are the headline (first) domain's; `ppl_by_domain` holds every domain;
    `tasks` and `task_average` come from `TaskEvaluator` when tasks ran.
    """
    summary = {
        "params": count_parameters(model),
        "intermediate_size": unwrap(model).config.intermediate_size,
        "num_layers": len(decoder_blocks(model)),
    }
    if ppl_by_domain:
        headline = next(iter(ppl_by_domain.values()))
        summary["ppl"] = next(iter(headline.values()))
        summary["ppl_by_seq_len"] = {str(seq_len): value for seq_len, value in headline.items()}
        summary["ppl_by_domain"] = {
            name: {str(seq_len): value for seq_len, value in by_len.items()} for name, by_len in ppl_by_domain.items()
        }
    if tasks:
        summary["tasks"] = tasks["tasks"]
        summary["task_average"] = tasks["average"]
    return summary


def run_report(
    run_info: dict | None,
    protocol: dict,
    data: dict,
    base: dict | None,
    events: list[dict],
    final: dict,
    wall_seconds: float,
    **sections,
) -> dict:
    """The report of one run; `sections` adds job-specific parts (e.g. `history`, `recovery`)."""
    return {
        **(run_info or {}),
        "protocol": protocol,
        "data": data,
        "base": base,
        "events": events,
        "final": final,
        **sections,
        "wall_seconds": wall_seconds,
    }


def write_report(output_dir: str | Path, report: dict) -> Path:
    """Write `report` to `<output_dir>/pruning_report.json` atomically."""
    return write_json_atomic(Path(output_dir) / "pruning_report.json", report)
