"""Refuse what a run cannot do before anything expensive starts, and a run that did not do what was asked.

Before the model loads (`check_run`, which writes nothing):
- the output folder: not empty, not a file; one that holds a run (`final/`, `pruning_report.json`, checkpoints)
  is refused unless the run resumes it or `overwrite=true` (a boolean) asks to replace it;
- a resume: the checkpoint it names must exist (`ckpt_path=last`: `checkpoints/last.ckpt` of output_dir; a SLURM
  requeue's `hpc_ckpt_N.ckpt` counts only under SLURM, where Lightning takes it), `recovery=none` has nothing to
  resume, and the settings recorded by the run that wrote the checkpoint (`run_settings.json`: model, pruning,
  schedule, recovery method, data block size and BOS) must match, every difference named;
- combinations that cannot work: `importance=taylor` with `stats_source=training` (training statistics hold
  no gradients), `calibration_mode=sequential` / `carried` or `pruning.reconstruct` with `stats_source=training`
  (those run each layer on the calibration batches through the already-pruned layers), a `cpt_then_lora` LoRA
  stage that starts after the last step;
- `check_recovery`: the recovery module's settings, LoRA targets and optimizers, from the model's config alone.
Then `claim_output`, once every check has passed: an earlier run moves aside into `replaced-<time>/` (never
deleted) and the settings are recorded.
After training (`check_complete`): every scheduled pruning event happened and a `cpt_then_lora` run reached its
LoRA stage; otherwise nothing is exported and the run fails.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM

from prune_recover.files import move_aside, write_json_atomic
from prune_recover.jobs.configs import build
from prune_recover.pruning.reconstruct import ReconstructSpec
from prune_recover.pruning.spec import as_spec, refuse_prior_stats
from prune_recover.settings import check_flag, check_whole_numbers
from prune_recover.training.atomic_checkpoint import check_complete_checkpoint, remove_partial_writes
from prune_recover.training.recovery_settings import method_settings

SETTINGS_FILE = "run_settings.json"
# What a resumed run must share with the run it resumes (a path into the config, dotted).
RESUME_KEYS = ("model.name", "pruning", "schedule", "recovery.method", "data.block_size", "data.bos")
# What marks an output folder as used by an earlier run.
RUN_OUTPUTS = ("final", "pruning_report.json", "checkpoints", "hpc_ckpt_*.ckpt")


def check_run(cfg: DictConfig) -> None:
    """All checks that need only the config and the output folder (nothing is written: see `claim_output`)."""
    if not str(cfg.output_dir or "").strip():
        raise ValueError("output_dir is empty; give the folder the run writes to, e.g. output_dir=outputs/run1")
    overwrite = check_overwrite(cfg)
    check_combinations(cfg)
    output_dir = Path(cfg.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output_dir {output_dir} is a file; give a folder")
    checkpoint = resume_checkpoint(cfg)
    if checkpoint is not None:
        run_dir = checkpoint_run(checkpoint)
        check_resume_settings(run_dir, run_settings(cfg), own=run_dir.resolve() == output_dir.resolve())
        return
    used = used_outputs(output_dir)
    if used and not overwrite:
        raise FileExistsError(
            f"output_dir {output_dir} holds an earlier run ({', '.join(p.name for p in used)}); resume it with "
            "ckpt_path=last, choose another output_dir, or pass overwrite=true to move its files aside"
        )


def check_overwrite(cfg: DictConfig) -> bool:
    """`overwrite`, refused unless a boolean (a string such as `no` would read as true)."""
    overwrite = cfg.get("overwrite", False)
    check_flag("overwrite", overwrite)
    return overwrite


def claim_output(cfg: DictConfig) -> None:
    """Once every check has passed, just before the model loads: a new run moves an earlier one aside
    (`overwrite=true`) and records its settings; a resumed run removes the temporary files of interrupted writes."""
    if not is_global_zero():
        return
    output_dir, resumed = Path(cfg.output_dir), resume_checkpoint(cfg) is not None
    if resumed:
        remove_partial_writes(output_dir)
    elif used := used_outputs(output_dir):
        move_aside(output_dir, used)
    if not resumed or not (output_dir / SETTINGS_FILE).is_file():
        write_json_atomic(output_dir / SETTINGS_FILE, run_settings(cfg))


def check_combinations(cfg: DictConfig) -> None:
    """Settings that are valid one by one but cannot work together."""
    pruning, stats_source = cfg.get("pruning"), cfg.callbacks.pruning.get("stats_source", "calibration")
    if pruning is not None and pruning.get("importance") == "taylor" and stats_source == "training":
        raise ValueError(
            "importance=taylor needs gradients from calibration batches; callbacks.pruning.stats_source=training "
            "records activations only. Use stats_source=calibration, or an activation-based importance"
        )
    mode = pruning.get("calibration_mode", "oneshot") if pruning is not None else "oneshot"
    reconstruct = as_spec(ReconstructSpec, pruning.get("reconstruct") if pruning is not None else None)
    if stats_source == "training":
        refuse_prior_stats(mode, reconstruct)
    module, max_steps = cfg.recovery.get("module") or {}, cfg.trainer.get("max_steps", -1)
    if cfg.recovery.method == "cpt_then_lora" and max_steps is not None and max_steps > 0:
        if module.get("lora_from_step") is not None and module.lora_from_step >= max_steps:
            raise ValueError(
                f"recovery.module.lora_from_step={module.lora_from_step} is not before trainer.max_steps={max_steps}: "
                "the LoRA stage of cpt_then_lora would never start"
            )


def check_recovery(cfg: DictConfig, model_config) -> None:
    """`recovery.module` checked before the weights load (the module itself is built on the loaded model): the
    method's limits, the LoRA targets against the model's module names (a skeleton on the meta device), and each
    optimizer factory on one dummy parameter (a class that does not exist, a negative learning rate)."""
    if cfg.recovery.method == "none":
        return
    node = cfg.recovery.module
    lora, _ = method_settings(cfg.recovery.method, node.get("lora"), node.get("distill"), node.get("lora_from_step"))
    if cfg.recovery.method in ("lora", "cpt_then_lora"):
        with torch.device("meta"):
            lora.check_targets(AutoModelForCausalLM.from_config(model_config))
    for name in ("optimizer", "lora_optimizer"):
        if node.get(name) is not None:
            try:
                build(node[name])([torch.nn.Parameter(torch.zeros(1))])
            except Exception as error:
                raise ValueError(f"recovery.module.{name} cannot build an optimizer: {error}") from error
    if node.get("scheduler") is not None:
        if "num_warmup_steps" in node.scheduler:
            check_whole_numbers({"recovery.module.scheduler.num_warmup_steps": (node.scheduler.num_warmup_steps, 0)})
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        try:
            build(node.scheduler)(optimizer, num_training_steps=max(1, cfg.trainer.get("max_steps") or 1))
        except Exception as error:
            raise ValueError(f"recovery.module.scheduler cannot build a learning-rate scheduler: {error}") from error


def run_settings(cfg: DictConfig) -> dict:
    """The settings a resumed run must share with the run it resumes."""
    return {key: _plain(OmegaConf.select(cfg, key)) for key in RESUME_KEYS}


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint the run resumes from (`ckpt_path`, or the newest `hpc_ckpt_N.ckpt` when Lightning takes one:
    a SLURM requeue), or None for a new run; refused when it names nothing to resume."""
    output_dir = Path(cfg.output_dir)
    if cfg.ckpt_path is None:
        hpc = sorted(output_dir.glob("hpc_ckpt_*.ckpt"), key=lambda path: int(path.stem.rsplit("_", 1)[-1]))
        return hpc[-1] if hpc and SLURMEnvironment.detect() else None
    if cfg.recovery.method == "none":
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path} resumes training, and recovery=none trains nothing: drop ckpt_path (a new "
            "prune-only run needs a new output_dir or overwrite=true)"
        )
    if cfg.ckpt_path == "last":
        path = output_dir / "checkpoints" / "last.ckpt"
        swapped_out = sorted(path.parent.glob(".last.ckpt.old-*"))  # a kill inside a swap: claim_output puts it back
        path = path if path.exists() or not swapped_out else swapped_out[0]
        if not path.exists():
            raise FileNotFoundError(
                f"ckpt_path=last, but {path} does not exist: output_dir holds no checkpoint to resume. Drop ckpt_path "
                "to start a new run, or give the output_dir of the run to resume"
            )
        return check_complete_checkpoint(path)
    path = Path(cfg.ckpt_path)
    if not path.exists():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; give a checkpoint file (or sharded folder), or last")
    return check_complete_checkpoint(path)


def checkpoint_run(checkpoint: Path) -> Path:
    """The output folder of the run that wrote `checkpoint` (`<run>/checkpoints/*.ckpt` or `<run>/hpc_ckpt_N.ckpt`)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def check_resume_settings(run_dir: Path, settings: dict, own: bool = True) -> None:
    """Refuse to resume under other settings than those recorded by the run being resumed (`run_dir`); a
    checkpoint of another output folder without recorded settings is refused, since nothing says what it holds."""
    saved_file = run_dir / SETTINGS_FILE
    if not saved_file.is_file():
        if not own:
            raise FileNotFoundError(
                f"cannot check what the checkpoint of {run_dir} holds: it has no {SETTINGS_FILE} (the settings of "
                "the run that wrote it). Resume a run of this version in its own output_dir, or start a new run"
            )
        return  # this output_dir's own run, from before the settings were recorded: nothing to compare
    saved = json.loads(saved_file.read_text())
    differences = [
        difference
        for key, value in settings.items()
        if key in saved
        for difference in setting_differences(key, saved[key], value)
    ]
    if differences:
        raise ValueError(
            f"the run in {run_dir} was started with other settings; resuming would train and report a model the "
            f"settings do not describe: {'; '.join(differences)}. Resume with the original settings, or start a new "
            "output_dir"
        )


def setting_differences(name: str, then, now) -> list[str]:
    """`name: then, now` for each setting that differs, nested settings (`pruning.ratio`) one by one; a setting the
    earlier run did not record (it predates the setting, as `pruning.reconstruct` does) has nothing to compare."""
    if isinstance(then, dict) and isinstance(now, dict):
        nested = [setting_differences(f"{name}.{key}", then[key], value) for key, value in now.items() if key in then]
        return [difference for differences in nested for difference in differences]
    return [] if then == now else [f"{name}: {then!r} then, {now!r} now"]


def used_outputs(output_dir: Path) -> list[Path]:
    """The files and folders of an earlier run in `output_dir`."""
    return sorted({path for pattern in RUN_OUTPUTS for path in output_dir.glob(pattern)})


def is_global_zero() -> bool:
    """Rank zero of a launch by torchrun / Lightning (`RANK`) or SLURM (`SLURM_PROCID`); True when alone."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0


def check_complete(trainer, pruning, module) -> None:
    """Fail a finished fit that did not do what was asked (nothing is exported then)."""
    missing = [event.step for event in pruning.pending()]
    if missing:
        raise RuntimeError(
            f"training stopped at step {trainer.global_step} (max_epochs, max_time or early stopping) before the "
            f"pruning events at steps {missing}: the model is only partly pruned, so nothing was exported. Resume "
            f"with ckpt_path=last and a budget past step {missing[-1]}"
        )
    if module.method == "cpt_then_lora" and not module.lora_active:
        raise RuntimeError(
            f"training stopped at step {trainer.global_step}, before the LoRA stage of cpt_then_lora "
            f"(lora_from_step={module.lora_from_step}); nothing was exported"
        )


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
