"""Entry point: `python train.py [recipe=NAME] [overrides...]`. Builds objects from the config and runs the job."""

from __future__ import annotations

import json

import hydra
from lightning import seed_everything
from omegaconf import DictConfig, OmegaConf

from prune_recover.evaluation.evaluator import build_evaluator
from prune_recover.jobs.configs import build, register_resolvers
from prune_recover.jobs.prune_and_recover import prune_and_recover
from prune_recover.jobs.prune_only import prune_only
from prune_recover.models import load_config, load_model

RECOVERY_METHODS = ("none", "full", "lora", "cpt_then_lora")
register_resolvers()


def run(cfg: DictConfig) -> dict | None:
    """Run the job described by a composed config and return its report (None off rank zero)."""
    if cfg.recovery.method not in RECOVERY_METHODS:
        raise ValueError(f"recovery.method must be one of {RECOVERY_METHODS}, got '{cfg.recovery.method}'")
    seed_everything(cfg.seed, workers=True)
    # Built first so that bad settings, missing files and unreachable targets fail before any weights load.
    pruner = build(cfg.pruning)
    data = build(cfg.data)
    if pruner is not None:
        pruner.plan(load_config(cfg.model.name))
    run_info = {"model": cfg.model.name, "recipe": cfg.recipe_name, "config": OmegaConf.to_container(cfg, resolve=True)}
    if cfg.recovery.method == "none":
        if pruner is None:
            raise ValueError("recovery=none with pruning=none does nothing; enable pruning or recovery")
        model, tokenizer = load_model(**cfg.model)
        data.set_tokenizer(tokenizer)
        evaluator = evaluator_for(cfg, data, tokenizer)
        return prune_only(model, tokenizer, pruner, data, evaluator, cfg.output_dir, run_info)

    callbacks = {name: node for name, node in cfg.callbacks.items() if name != "pruning"}
    pruning = build(cfg.callbacks.pruning, pruner=pruner)
    loggers = [build(node) for node in cfg.logger.values()]
    trainer = build(cfg.trainer, callbacks=[pruning, *map(build, callbacks.values())], logger=loggers)
    model, tokenizer = load_model(**cfg.model)
    data.set_tokenizer(tokenizer)
    pruning.evaluator = evaluator_for(cfg, data, tokenizer)
    module = build(cfg.recovery.module, model=model)
    for logger in loggers:
        logger.log_hyperparams(run_info["config"])
    return prune_and_recover(
        trainer, module, data, tokenizer, pruning, pruning.evaluator, cfg.output_dir, cfg.ckpt_path, run_info
    )


def evaluator_for(cfg: DictConfig, data, tokenizer):
    """The `eval` node's evaluator on the data module's test split."""
    test = data.test_split
    return build_evaluator(data.token_ids(test), tokenizer, data.local_file(test), **cfg.eval)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    if report is not None:
        print(json.dumps({key: report[key] for key in ("base", "final")}, indent=2))
        print(f"Wrote {cfg.output_dir}/final and {cfg.output_dir}/pruning_report.json")


if __name__ == "__main__":
    main()
