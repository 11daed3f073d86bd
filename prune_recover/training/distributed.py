"""Multi-process helpers: FSDP that shards whatever decoder block the model has, and rank-aware reductions.

FSDP and pruning: FSDP flattens parameters into shards whose shapes are fixed once wrapped, so
surgery cannot run on a sharded model. prune_recover therefore prunes under FSDP only at the
stage boundary before sharding: an event at step 0 is carried out in the callback's `setup`, on
the full model placed on each rank's GPU (every rank takes the same decision: statistics are
averaged across ranks), and FSDP then shards the pruned model. Events after step 0 (iterative
schedules, `schedule.start_step > 0`) are refused with an error; run them with `trainer=ddp`, or
prune in one job (`recovery=none`) and recover the exported model with `trainer=fsdp` in a second.
A resumed FSDP job repeats the step-0 event before sharding (same model, same calibration batches,
same shapes) and then loads the sharded checkpoint into it. After training, every rank takes part in
gathering the full model for evaluation and export (`full_state.py`). A distillation teacher is sharded too
(`shard_frozen`: 1/world of it per GPU instead of a whole copy).
"""

from __future__ import annotations

import sys

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from prune_recover.arch import decoder_blocks
from prune_recover.models import load_config
from prune_recover.training.atomic_checkpoint import AtomicFSDPStrategy

FSDP_PRUNING_HELP = (
    "pruning events after step 0 are not supported under FSDP (sharded parameters cannot change shape). "
    "Use schedule=oneshot with schedule.start_step=0 (pruned before sharding), trainer=ddp for iterative "
    "schedules, or prune with recovery=none first and recover final/ with trainer=fsdp pruning=none."
)


def decoder_block_fsdp(model_name: str, activation_checkpointing: bool = True, **kwargs) -> FSDPStrategy:
    """Lightning's `FSDPStrategy` with the model's own decoder-block class as wrap and checkpointing unit, its
    sharded checkpoints written whole (`AtomicFSDPStrategy`).

    The class (LlamaDecoderLayer, Qwen2DecoderLayer, ...) is read from the model's config alone (no weights
    load), so one trainer config serves every family; only the strategy's public arguments are used.

    Args:
        model_name: What `load_model` accepts (alias, directory, `.gguf`, hub id).
        activation_checkpointing: Recompute each block's activations in backward.
        **kwargs: Passed to `FSDPStrategy` (`sharding_strategy`, `state_dict_type`, `cpu_offload`, ...).
    """
    block = decoder_block_class(load_config(model_name))
    return AtomicFSDPStrategy(
        auto_wrap_policy={block},
        activation_checkpointing_policy={block} if activation_checkpointing else None,
        **kwargs,
    )


def decoder_block_class(config) -> type[nn.Module]:
    """The decoder-block class of a config's causal LM (its `_no_split_modules`, as accelerate uses it)."""
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    (name,) = model_class._no_split_modules
    return getattr(sys.modules[model_class.__module__], name)


def is_fsdp(strategy) -> bool:
    """Whether `strategy` shards the model with FSDP."""
    return isinstance(strategy, FSDPStrategy)


def shard_frozen(model: nn.Module, mesh=None) -> nn.Module:
    """Shard a frozen model (the distillation teacher) over all ranks with torch's FSDP2 `fully_shard`.

    Each rank then holds 1/world of its weights; a forward pass gathers one decoder block at a time and frees it
    afterwards, so every rank must run the forward together (the teacher runs once per training step on every
    rank). `mesh`: None takes torch's default mesh over all ranks on the current device type.
    """
    from torch.distributed.fsdp import fully_shard

    for block in decoder_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over every rank (identical on all ranks afterwards)."""
    reduced = tensor.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / dist.get_world_size()


def rewrap_ddp(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Wrap the module in a fresh DDP after its parameters changed (shapes or set).

    DDP's gradient buckets are built for the parameters it was created with; a new wrapper also
    broadcasts rank 0's weights, so every rank continues from the same model.
    """
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and not isinstance(strategy.model, L.LightningModule):
        strategy.model = pl_module
        strategy.configure_ddp()
