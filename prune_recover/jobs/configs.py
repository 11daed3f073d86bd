"""Hydra helpers shared by the entry points and the tests: resolvers, and `build` (instantiate with clear errors)."""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf


def stable_id(text: str) -> str:
    """An 8-character id derived from `text` (an absolute output path), stable across restarts."""
    return hashlib.sha1(os.path.abspath(str(text)).encode()).hexdigest()[:8]


def stderr_is_terminal() -> bool:
    """True when progress bars can redraw (an interactive terminal), False in a log file such as SLURM's."""
    return sys.stderr.isatty()


def stdlib() -> str:
    """The running interpreter's standard library folder: Python source code that every machine has."""
    return sysconfig.get_paths()["stdlib"]


def cpu_precision(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """`bf16-mixed` on a CPU with bfloat16 instructions (AVX512-BF16 or AMX), where it trains ~3x faster
    than float32; `32-true` elsewhere (without them bf16 autocast is slower than float32)."""
    flags = set((cpuinfo_field("flags", cpuinfo) or "").split())
    return "bf16-mixed" if flags & {"avx512_bf16", "amx_bf16"} else "32-true"


def cpuinfo_field(name: str, cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The value of the first `name` line of /proc/cpuinfo (the first CPU's), or None where there is none."""
    path = Path(cpuinfo)
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return None


def eval_precision(trainer_precision: str) -> str:
    """The forward precision of evaluation that matches a Lightning `trainer.precision`: `bfloat16` for
    `bf16-mixed` / `bf16-true`, `float16` for `16-mixed` / `16-true`, `float32` otherwise."""
    name = str(trainer_precision)
    if name.startswith("bf16"):
        return "bfloat16"
    return "float16" if name.startswith("16") else "float32"


RESOLVERS = {
    "stable_id": stable_id,
    "stderr_is_terminal": stderr_is_terminal,
    "stdlib": stdlib,
    "cpu_precision": cpu_precision,
    "eval_precision": eval_precision,
}


def register_resolvers() -> None:
    """Register the resolvers the configs use (the keys of `RESOLVERS`)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def compose_train_config(overrides: list[str]):
    """The config `python train.py <overrides>` runs with, composed outside a Hydra run (resolvers registered)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def build(node: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` with plain containers, re-raising the constructor's own error.

    Hydra wraps every constructor error in `InstantiationException`; users should see the
    `ValueError` / `FileNotFoundError` that says what was wrong, with its original type.
    """
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as error:
        if error.__cause__ is not None:
            raise error.__cause__ from None
        raise


def evaluator_for(cfg, data, tokenizer):
    """The `eval` node's evaluator on the data module's test split: every text and task is read and checked here."""
    from prune_recover.evaluation.evaluator import build_evaluator

    test = data.test_split
    return build_evaluator(data.token_ids(test), tokenizer, data.local_file(test), **cfg.eval, bos=data.bos_id())
