"""The prune-then-recover job: fit (the callback prunes), validate, merge, export, report."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from transformers import PreTrainedTokenizerBase

from prune_recover.evaluation.evaluator import Evaluator
from prune_recover.evaluation.perplexity import PerplexityProtocol, perplexity
from prune_recover.evaluation.report import run_report
from prune_recover.jobs.export import export
from prune_recover.jobs.preflight import check_complete
from prune_recover.logs import get_logger
from prune_recover.training.datamodule import CausalLMDataModule
from prune_recover.training.full_state import exported_model
from prune_recover.training.loggers import close_wandb_run, log_final
from prune_recover.training.pruning_callback import PruningCallback
from prune_recover.training.recovery_module import RecoveryModule
from prune_recover.training.signals import GracefulStop

log = get_logger(__name__)


def prune_and_recover(
    trainer: L.Trainer,
    module: RecoveryModule,
    data: CausalLMDataModule,
    tokenizer: PreTrainedTokenizerBase,
    pruning: PruningCallback,
    evaluator: Evaluator,
    output_dir: str | Path,
    ckpt_path: str | None = None,
    run_info: dict | None = None,
    export_settings: dict | None = None,
) -> dict | None:
    """Train with the pruning callback, then write `<output_dir>/final/` (with its card) and `pruning_report.json`.

    Args:
        export_settings: The `export` config node (`push_to_hub`, `private`).

    Returns:
        The report on global rank zero; None on other ranks.

    Raises:
        Interrupted: a signal stopped training (after a resumable checkpoint was written).
    """
    try:
        return _train_and_export(
            trainer, module, data, tokenizer, pruning, evaluator, Path(output_dir), ckpt_path, run_info, export_settings
        )
    except BaseException as error:
        close_wandb_run(trainer, exit_code=getattr(error, "exit_code", 1))  # failed, not reused by a later job
        raise


def _train_and_export(
    trainer, module, data, tokenizer, pruning, evaluator, output_dir: Path, ckpt_path, run_info, export_settings
) -> dict | None:
    start = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    for callback in trainer.callbacks:
        if isinstance(callback, GracefulStop) and callback.stopped is not None:
            raise callback.stopped  # a resumable checkpoint is written; no export of a half-trained model
    if trainer.interrupted:
        raise RuntimeError("training was interrupted before it finished; nothing exported (resume with ckpt_path=last)")
    check_complete(trainer, pruning, module)  # a half-done schedule is a failure, not a result
    model = exported_model(trainer, module)  # under FSDP every rank takes part in the gather
    if model is None:  # not global rank zero
        return None
    final = evaluator.summary(model)
    final["val_ppl"] = final_val_ppl(model, data, module.val_history, trainer.global_step)
    report = run_report(
        run_info,
        protocol={**evaluator.describe(), "eval_data": data.describe_split(data.test_split)},
        data=data.describe(),
        base=pruning.base,
        events=pruning.events,
        final=final,
        wall_seconds=time.perf_counter() - start,
        history=module.val_history,
        recovery={
            "method": module.method,
            "steps": trainer.global_step,
            "tokens_seen": module.tokens_seen,
            "distill": module.distill.alpha > 0,
            "world_size": trainer.world_size,
            "cluster_environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
        },
    )
    log_final(trainer, pruning.base, final)
    export(model, tokenizer, output_dir, report, (run_info or {}).get("model", "model"), **(export_settings or {}))
    log.info("Final: %s", final)
    return report


def final_val_ppl(model, data: CausalLMDataModule, history: list[dict], step: int) -> float:
    """Validation perplexity of the trained model: the validation run at the last step when there was one (the
    same weights and blocks, measured in the training precision), else measured now on the validation blocks.

    Measured directly rather than by `trainer.validate()`, which would reload a SLURM hpc checkpoint.
    """
    if history and history[-1]["step"] == step:
        return history[-1]["val_ppl"]
    return perplexity(model, data.val_ids(), PerplexityProtocol(data.block_size, data.max_val_blocks)).ppl
