"""What the training glue writes to experiment loggers beyond `self.log`: final figures, task tables, summaries."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from prune_recover.evaluation.tasks import HEADLINE


def set_wandb_summary(trainer: L.Trainer, key: str, value) -> None:
    """Put `key: value` in the run summary of every W&B logger of `trainer` (rank zero only)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.summary[key] = value


def final_metrics(final: dict) -> dict[str, float]:
    """The end-of-run figures as flat metrics: perplexity per domain and length, task scores, their average."""
    metrics = {"test/ppl": final["ppl"], "final/params": final["params"] / 1e6}
    for name, by_len in final.get("ppl_by_domain", {}).items():
        for seq_len, value in by_len.items():
            metrics[f"test/ppl/{name}@{seq_len}"] = value
    for task, scores in final.get("tasks", {}).items():
        metric = HEADLINE.get(task, "acc")
        if metric in scores:
            metrics[f"test/{task}/{metric}"] = scores[metric]
    if final.get("task_average") is not None:
        metrics["test/task_average"] = final["task_average"]
    return metrics


def task_rows(base: dict | None, final: dict) -> list[list]:
    """`[task, metric, base, final, final stderr, items]` for every metric of every task that ran at the end."""
    rows = []
    for task, scores in final.get("tasks", {}).items():
        before = (base or {}).get("tasks", {}).get(task, {})
        for metric, value in scores.items():
            if metric == "items" or metric.endswith("_stderr"):
                continue
            rows.append([task, metric, before.get(metric), value, scores.get(f"{metric}_stderr"), scores["items"]])
    return rows


def log_final(trainer: L.Trainer, base: dict | None, final: dict) -> None:
    """Log the final figures to every logger and the task table (base vs final) to W&B, then close W&B runs."""
    for logger in trainer.loggers:
        logger.log_metrics(final_metrics(final), step=trainer.global_step)
        rows = task_rows(base, final)
        if isinstance(logger, WandbLogger) and rows:
            logger.log_table("test/tasks", columns=["task", "metric", "base", "final", "stderr", "items"], data=rows)
    set_wandb_summary(trainer, "model/params_exact", final["params"])
    close_wandb_run(trainer)


def close_wandb_run(trainer: L.Trainer, exit_code: int = 0) -> None:
    """Finish the job's W&B run (rank zero; one that was never started is not started now): nothing else in this
    process logs to it, and a failed job's run is marked failed with `exit_code`, not reused by the next job."""
    if trainer.is_global_zero and any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        if wandb.run is not None:
            wandb.run.finish(exit_code=exit_code)
