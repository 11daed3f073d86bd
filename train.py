"""Entry point: `python train.py [recipe=NAME] [overrides...]`. Builds objects from the config and runs the job."""

from __future__ import annotations

import json

import hydra
from lightning import seed_everything
from omegaconf import DictConfig, OmegaConf

from prune_recover.config_utils import build
from prune_recover.evaluate import Evaluator
from prune_recover.models import load_config, load_model
from prune_recover.prune_only import prune_only

RECOVERY_METHODS = ("none",)


def run(cfg: DictConfig) -> dict:
    """Run the job described by a composed config and return its report."""
    if cfg.recovery.method not in RECOVERY_METHODS:
        raise ValueError(f"recovery.method must be one of {RECOVERY_METHODS}, got '{cfg.recovery.method}'")
    seed_everything(cfg.seed, workers=True)
    # Built first so that bad settings, missing files and unreachable targets fail before any weights load.
    pruner = build(cfg.pruning)
    data = build(cfg.data)
    pruner.plan(load_config(cfg.model.name))
    model, tokenizer = load_model(**cfg.model)
    data.set_tokenizer(tokenizer)
    evaluator = Evaluator(data.token_ids(data.test_split), **cfg.eval)
    run_info = {"model": cfg.model.name, "config": OmegaConf.to_container(cfg, resolve=True)}
    return prune_only(model, tokenizer, pruner, data, evaluator, cfg.output_dir, run_info)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    report = run(cfg)
    print(json.dumps({key: report[key] for key in ("base", "final")}, indent=2))
    print(f"Wrote {cfg.output_dir}/final and {cfg.output_dir}/pruning_report.json")


if __name__ == "__main__":
    main()
