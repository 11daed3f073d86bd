"""Entry point: `python train.py [recipe=NAME] [overrides...]`. Builds objects from the config and runs the job."""

from __future__ import annotations

import json
import sys

import hydra
from lightning import seed_everything
from omegaconf import DictConfig, OmegaConf

from prune_recover.jobs.configs import build, evaluator_for, register_resolvers
from prune_recover.jobs.export import check_push_target
from prune_recover.jobs.preflight import check_recovery, check_run, claim_output
from prune_recover.jobs.prune_and_recover import prune_and_recover
from prune_recover.jobs.prune_only import prune_only
from prune_recover.models import load_config, load_model, load_tokenizer
from prune_recover.training.signals import Interrupted

RECOVERY_METHODS = ("none", "full", "distill", "lora", "cpt_then_lora")
register_resolvers()


def run(cfg: DictConfig) -> dict | None:
    """Run the job described by a composed config and return its report (None off rank zero)."""
    if cfg.recovery.method not in RECOVERY_METHODS:
        raise ValueError(f"recovery.method must be one of {RECOVERY_METHODS}, got '{cfg.recovery.method}'")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be an integer, got {cfg.seed!r}")
    seed_everything(cfg.seed, workers=True)
    # Built first so that bad settings, missing files and unreachable targets fail before any weights load.
    pruner = build(cfg.pruning)
    data = build(cfg.data)
    model_config = load_config(cfg.model.name)  # the config alone: no weights
    if pruner is not None:
        pruner.plan(model_config)
    check_push_target(cfg.export.push_to_hub)
    check_run(cfg)  # the output folder, a resume's checkpoint and settings, combinations that cannot work
    config = OmegaConf.to_container(cfg, resolve=True)
    run_info = {"model": cfg.model.name, "recipe": cfg.recipe_name, "command": command_line(), "config": config}
    export_settings = dict(cfg.export)
    if cfg.recovery.method == "none":
        if pruner is None:
            raise ValueError("recovery=none with pruning=none does nothing; enable pruning or recovery")
        tokenizer = load_tokenizer(cfg.model.name)
        data.set_tokenizer(tokenizer)
        data.check_sizes(calibration=pruner.needs_calibration)
        evaluator = evaluator_for(cfg, data, tokenizer)  # reads and checks every text and task first
        claim_output(cfg)  # every check passed: an earlier run moves aside now, not before
        model, _ = load_model(**cfg.model)
        return prune_only(model, tokenizer, pruner, data, evaluator, cfg.output_dir, run_info, export_settings)

    callbacks = {name: node for name, node in cfg.callbacks.items() if name != "pruning"}
    pruning = build(cfg.callbacks.pruning, pruner=pruner)
    loggers = [build(node) for node in cfg.logger.values()]
    trainer = build(cfg.trainer, callbacks=[pruning, *map(build, callbacks.values())], logger=loggers)
    check_recovery(cfg, model_config)
    if pruner is not None:
        pruning.plan_events(model_config, trainer)  # every event before max_steps (and at step 0 under FSDP)
    tokenizer = load_tokenizer(cfg.model.name)
    data.set_tokenizer(tokenizer)
    data.check_sizes(calibration=pruner is not None and pruner.needs_calibration)
    pruning.evaluator = evaluator_for(cfg, data, tokenizer)  # reads and checks every text and task first
    claim_output(cfg)  # every check passed: an earlier run moves aside now, not before
    model, _ = load_model(**cfg.model)
    module = build(cfg.recovery.module, model=model)
    for logger in loggers:
        logger.log_hyperparams(run_info["config"])
    return prune_and_recover(
        trainer, module, data, tokenizer, pruning, pruning.evaluator, cfg.output_dir, cfg.ckpt_path, run_info,
        export_settings,
    )  # fmt: skip


def command_line() -> str | None:
    """`python train.py <overrides>` as it was run (None outside a Hydra run, e.g. in tests)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return " ".join(["python train.py", *HydraConfig.get().overrides.task])


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        report = run(cfg)
    except Interrupted as stop:  # a scheduler's signal: the checkpoint is written, the run is not done
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
    if report is not None:
        print(json.dumps({key: report[key] for key in ("base", "final")}, indent=2))
        print(f"Wrote {cfg.output_dir}/final and {cfg.output_dir}/pruning_report.json")


if __name__ == "__main__":
    main()
