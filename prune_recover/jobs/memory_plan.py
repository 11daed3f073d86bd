"""Will a recipe fit its GPUs? `python -m prune_recover.plan [--gpus N] [--gpu-memory GiB] [overrides]`.

It composes the same config as `train.py` (e.g. `recipe=medit8b_to_4b8`), reads only the model's config
(no weights), solves the pruned shape as the run will, and adds up, per GPU, in GiB:
- setup: the unpruned model in its loaded dtype on each GPU while a step-0 event prunes it (the FSDP path),
  plus one layer's refit Gram matrix (float64, `intermediate^2`);
- training: weights, gradients and AdamW's two states in the master dtype (`callbacks.master_weights.dtype`,
  else the loaded dtype), divided by the number of GPUs under FSDP (full shard), whole under DDP; for LoRA
  only the adapters have gradients and optimizer states; a distillation teacher (the unpruned model, in bf16
  under bf16 autocast, sharded like the weights under FSDP, a whole copy per GPU under DDP); activations: with
  gradient checkpointing each block's input is kept (`batch x seq x hidden`, 2 bytes) plus one block's working
  set, else every block's; and the float32 logits and their gradient (`batch x seq x vocab x 8`).
Estimates leave out allocator fragmentation and CUDA context (~1-2 GiB): keep a margin. Exit status 1 when
the total exceeds the GPU memory, 2 when the settings cannot run (refused as `train.py` refuses them).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from omegaconf import DictConfig

from prune_recover.jobs.configs import build, compose_train_config
from prune_recover.jobs.preflight import check_recovery
from prune_recover.models import DTYPES, load_config
from prune_recover.pruning.targets import ParamModel

GIB = 2**30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2, None: 4}
# Bytes of one block's working set per token, in units of hidden size (attention and MLP intermediates).
BLOCK_WORKING_SET = 34


@dataclass
class MemoryPlan:
    """Per-GPU memory of a run, in bytes, by component."""

    rows: dict[str, float]
    gpus: int
    gpu_memory: float
    # other settings' figures for comparison, not part of the totals (e.g. activations without checkpointing)
    alternatives: dict[str, float] = field(default_factory=dict)

    @property
    def training_total(self) -> float:
        return sum(v for k, v in self.rows.items() if not k.startswith("setup"))

    @property
    def setup_total(self) -> float:
        return sum(v for k, v in self.rows.items() if k.startswith("setup"))

    @property
    def fits(self) -> bool:
        return max(self.training_total, self.setup_total) <= self.gpu_memory

    def table(self) -> str:
        lines = ["| per GPU | GiB |", "| --- | --- |"]
        lines += [f"| {name} | {value / GIB:.1f} |" for name, value in self.rows.items()]
        lines += [f"| **setup peak** | **{self.setup_total / GIB:.1f}** |"]
        lines += [f"| **training total** | **{self.training_total / GIB:.1f}** |"]
        verdict = "fits" if self.fits else "does NOT fit"
        lines += ["", f"{self.gpus} GPUs of {self.gpu_memory / GIB:.0f} GiB: {verdict}."]
        lines += [
            f"For comparison, not in the totals: {name}: {value / GIB:.1f} GiB."
            for name, value in self.alternatives.items()
        ]
        return "\n".join(lines)


def check_plan_settings(cfg: DictConfig, config) -> None:
    """The settings the plan reads, refused as `train.py` would refuse them (a plan of settings that cannot run
    would say "fits" for nothing)."""
    if cfg.recovery.method == "none":
        raise ValueError(
            "the memory plan is of a training run; recovery=none only prunes (the unpruned weights, plus one layer's "
            "refit Gram matrix)"
        )
    dtypes = [*DTYPES, None]
    if cfg.model.get("dtype") not in dtypes:
        raise ValueError(f"model.dtype must be one of {dtypes}, got {cfg.model.get('dtype')!r}")
    master = (cfg.callbacks.get("master_weights") or {}).get("dtype")
    if master not in dtypes:
        raise ValueError(f"callbacks.master_weights.dtype must be one of {dtypes}, got {master!r}")
    build(cfg.data)  # block and batch sizes
    check_recovery(cfg, config)  # method, LoRA rank and targets, distillation, optimizers


def memory_plan(cfg: DictConfig, gpus: int, gpu_memory_gib: float) -> MemoryPlan:
    """The per-GPU memory of the run `cfg` describes, on `gpus` GPUs of `gpu_memory_gib` GiB."""
    config = load_config(cfg.model.name)
    check_plan_settings(cfg, config)
    before = ParamModel.from_config(config)
    pruner = build(cfg.pruning)
    after = pruner.plan(config) if pruner is not None else None
    params = after.params if after else before.total(before.intermediate_size, before.num_layers)
    width = after.intermediate_size if after else before.intermediate_size
    layers = after.num_layers if after else before.num_layers
    base_params = before.total(before.intermediate_size, before.num_layers)
    loaded = BYTES.get(str(cfg.model.get("dtype")), 4)
    master_dtype = (cfg.callbacks.get("master_weights") or {}).get("dtype")
    master = BYTES[master_dtype] if master_dtype else loaded
    strategy = str((cfg.trainer.get("strategy") or {}).get("_target_", ""))
    shards = gpus if "fsdp" in strategy.lower() else 1
    method = cfg.recovery.method
    trainable = params if method in ("full", "distill", "cpt_then_lora") else _lora_params(cfg, before, width, layers)
    batch, seq = cfg.data.batch_size, cfg.data.block_size
    hidden, vocab = before.hidden_size, config.vocab_size
    checkpointing = cfg.recovery.module.get("gradient_checkpointing", False)

    def activations(checkpointed: bool) -> float:
        """Each block's input kept (2 bytes) plus one block's working set, or every block's working set."""
        kept_blocks = layers if checkpointed else 0
        return batch * seq * hidden * 2 * (kept_blocks + BLOCK_WORKING_SET * (1 if checkpointed else layers))

    rows = {
        "setup: unpruned model while pruning at step 0": base_params * loaded if shards > 1 else 0,
        "setup: one layer's refit Gram matrix (float64)": before.intermediate_size**2 * 8 if pruner else 0,
        "weights": params * master / shards,
        "gradients": trainable * master / shards,
        "AdamW states (2)": 2 * trainable * master / shards,
        "distillation teacher (bf16)": base_params * 2 / shards if cfg.recovery.module.distill.alpha > 0 else 0,
        f"activations (activation checkpointing {'on' if checkpointing else 'off'})": activations(checkpointing),
        "logits and their gradient (float32)": batch * seq * vocab * 8,
    }
    other = f"activations with activation checkpointing {'off' if checkpointing else 'on'}"
    return MemoryPlan(rows, gpus, gpu_memory_gib * GIB, {other: activations(not checkpointing)})


def _lora_params(cfg: DictConfig, before: ParamModel, width: int, layers: int) -> int:
    """LoRA adapters on every linear layer of the blocks: r x (in + out) each (q, k, v, o, gate, up, down)."""
    rank, hidden = cfg.recovery.module.lora.r, before.hidden_size
    return layers * rank * (4 * 2 * hidden + 3 * (hidden + width))


def main(argv: list[str] | None = None) -> int:
    """The command: print the plan's table; 0 when it fits, 1 when it does not."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the job runs on (all nodes)")
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="memory of one GPU, GiB")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. recipe=medit8b_to_4b8")
    args = parser.parse_args(argv)
    if args.gpus < 1 or args.gpu_memory <= 0:
        parser.error(f"--gpus must be >= 1 and --gpu-memory > 0, got {args.gpus} and {args.gpu_memory}")
    try:
        plan = memory_plan(compose_train_config(args.overrides), args.gpus, args.gpu_memory)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2  # not a plan: 1 means one that does not fit
    print(plan.table())
    return 0 if plan.fits else 1


if __name__ == "__main__":
    sys.exit(main())
