"""Physical removal of MLP neurons and decoder blocks that leaves the model consistent.

Parameters are sliced in place (`param.data = ...`): the `nn.Parameter` objects survive, so an
optimizer keeps its references, and its per-parameter state (Adam moments and the like) is sliced
with the same indices. Autocast's cache of low-precision weight copies (kept for a whole autocast region,
keyed by the parameter) is cleared after each change, so that a forward pass later in the same region (the
pruning callback's calibration context) computes with the new weights. Gradients, LoRA matrices, module
attributes (`in_features`, `intermediate_size`, `layer_idx`) and the config (`intermediate_size`,
`num_hidden_layers`, per-layer lists such as `layer_types`) are updated too, so the result saves and reloads
with plain `transformers` and generates with a KV cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import nn

from prune_recover.arch import GatedMLP, base_linear, decoder_blocks, gated_mlp, gated_mlps, set_decoder_blocks, unwrap
from prune_recover.logs import get_logger

# Config fields that hold one entry per decoder block and must follow block removal.
PER_LAYER_CONFIG_KEYS = ("layer_types", "no_rope_layers")

log = get_logger(__name__)


def slice_parameter(
    param: nn.Parameter, index: torch.Tensor, dim: int, optimizers: Iterable[torch.optim.Optimizer] = ()
) -> None:
    """Keep only `index` along `dim` of `param`, its gradient and its optimizer state."""
    old_shape = param.shape
    index = index.to(param.device)
    param.data = param.data.index_select(dim, index).contiguous()
    torch.clear_autocast_cache()  # the region's cached casts of this parameter are of the old values
    if param.grad is not None:
        param.grad = param.grad.index_select(dim, index).contiguous()
    for optimizer in optimizers:
        _slice_state(optimizer, param, old_shape, index, dim)


def _slice_state(optimizer: torch.optim.Optimizer, param: nn.Parameter, old_shape, index, dim: int) -> None:
    """Slice `param`'s optimizer state along `dim` like the parameter.

    A state tensor shaped like the parameter (Adam's moments) or with size 1 on the other dims (Adafactor's
    row and column factors) is sliced along `dim`, or kept when its size there is 1 (a factor over `dim`).
    Any other shape (blockwise or quantized states) cannot be sliced: the parameter's state is dropped, so the
    optimizer starts it afresh on the next step, with a warning, never left stale.
    """
    state = optimizer.state.get(param)
    if not state:
        return
    sliced = {}
    for key, value in state.items():
        if not torch.is_tensor(value) or value.numel() == 1:
            sliced[key] = value  # step counters and other scalars
        elif value.ndim == len(old_shape) and all(
            size in (1, old) for size, old in zip(value.shape, old_shape, strict=True)
        ):
            keep = value.shape[dim] == old_shape[dim] and old_shape[dim] != 1
            sliced[key] = value.index_select(dim, index.to(value.device)).contiguous() if keep else value
        else:
            log.warning(
                "optimizer state '%s' of shape %s does not follow its parameter %s; restarting that parameter's "
                "optimizer state after pruning",
                key, tuple(value.shape), tuple(old_shape),
            )  # fmt: skip
            optimizer.state.pop(param)
            return
    state.update(sliced)


def slice_linear(
    module: nn.Module, index: torch.Tensor, side: Literal["out", "in"], optimizers: Iterable[torch.optim.Optimizer] = ()
) -> None:
    """Keep only output rows (`side="out"`) or input columns (`side="in"`) `index` of a linear layer.

    A peft LoRA wrapper is sliced consistently: `lora_B` rows follow the output side, `lora_A`
    columns follow the input side; the rank dimension is untouched.
    """
    check_prunable(module)
    optimizers = list(optimizers)
    base = base_linear(module)
    size = len(index)
    if side == "out":
        slice_parameter(base.weight, index, 0, optimizers)
        if base.bias is not None:
            slice_parameter(base.bias, index, 0, optimizers)
        base.out_features = size
    else:
        slice_parameter(base.weight, index, 1, optimizers)
        base.in_features = size
    if hasattr(module, "lora_A"):
        _slice_lora(module, index, side, optimizers)


def check_prunable(module: nn.Module) -> None:
    """Refuse a projection whose slicing would be wrong: a DoRA layer, or a LoRA layer with merged adapters (the
    pruner calls this on every projection before it changes anything)."""
    if getattr(module, "lora_magnitude_vector", None):
        raise NotImplementedError("pruning a DoRA layer is not supported (its magnitude depends on every column)")
    if getattr(module, "merged", False):
        raise RuntimeError("cannot prune a LoRA layer whose adapters are merged; unmerge first")


def check_prunable_mlp(mlp: GatedMLP) -> None:
    """`check_prunable` on each projection of a gated MLP."""
    for projection in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        check_prunable(projection)


def _slice_lora(module: nn.Module, index: torch.Tensor, side: str, optimizers: list) -> None:
    for adapter in module.lora_A:
        if side == "out":
            slice_parameter(module.lora_B[adapter].weight, index, 0, optimizers)
            module.lora_B[adapter].out_features = len(index)
        else:
            slice_parameter(module.lora_A[adapter].weight, index, 1, optimizers)
            module.lora_A[adapter].in_features = len(index)
    if side == "out":
        module.out_features = len(index)
    else:
        module.in_features = len(index)


def slice_gated_mlp(mlp: GatedMLP, keep: torch.Tensor, optimizers: Iterable[torch.optim.Optimizer] = ()) -> None:
    """Keep only neurons `keep` of one gated MLP: gate/up rows, down columns, their biases.

    Does not touch the config; call `sync_intermediate_size` once every layer is done.
    """
    optimizers = list(optimizers)
    width = mlp.intermediate_size
    keep = keep.to(torch.long).cpu()
    if keep.numel() == 0 or keep.min() < 0 or keep.max() >= width or keep.unique().numel() != keep.numel():
        raise ValueError(f"neuron indices must be distinct and in [0, {width}), got {keep.numel()} indices")
    check_prunable_mlp(mlp)  # before any projection is sliced
    if mlp.fused:
        slice_linear(mlp.gate_proj, torch.cat([keep, keep + width]), "out", optimizers)
    else:
        slice_linear(mlp.gate_proj, keep, "out", optimizers)
        slice_linear(mlp.up_proj, keep, "out", optimizers)
    slice_linear(mlp.down_proj, keep, "in", optimizers)
    if hasattr(mlp.module, "intermediate_size"):
        mlp.module.intermediate_size = keep.numel()


def sync_intermediate_size(model: nn.Module) -> int:
    """Write the (uniform) MLP width into `config.intermediate_size` and return it."""
    widths = {mlp.intermediate_size for mlp in gated_mlps(model)}
    if len(widths) != 1:
        raise ValueError(f"MLP widths differ across layers {sorted(widths)}; a plain transformers config needs one")
    width = widths.pop()
    unwrap(model).config.intermediate_size = width
    return width


def prune_mlp_neurons(
    model: nn.Module, keep: Mapping[int, torch.Tensor], optimizers: Iterable[torch.optim.Optimizer] = ()
) -> int:
    """Remove every MLP neuron not listed in `keep` (layer index -> kept neuron indices).

    Returns:
        The new `config.intermediate_size`.
    """
    optimizers = list(optimizers)
    mlps = {index: gated_mlp(model, index) for index in keep}
    for mlp in mlps.values():  # before any layer is sliced
        check_prunable_mlp(mlp)
    for index, kept in keep.items():
        slice_gated_mlp(mlps[index], kept, optimizers)
    return sync_intermediate_size(model)


def remove_blocks(
    model: nn.Module, indices: Iterable[int], optimizers: Iterable[torch.optim.Optimizer] = ()
) -> list[int]:
    """Delete decoder blocks `indices`, renumber `layer_idx`, and update the config and optimizers.

    Returns:
        The removed indices, sorted.
    """
    blocks = decoder_blocks(model)
    removed = sorted(set(int(i) for i in indices))
    if not removed:
        return removed
    if removed[0] < 0 or removed[-1] >= len(blocks):
        raise ValueError(f"block indices must be in [0, {len(blocks)}), got {removed}")
    if len(removed) >= len(blocks):
        raise ValueError(f"cannot remove {len(removed)} of {len(blocks)} blocks: at least one must remain")
    config = unwrap(model).config
    for key in PER_LAYER_CONFIG_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) != len(blocks):
            raise ValueError(
                f"config.{key} has {len(value)} entries but the model has {len(blocks)} decoder blocks: it must "
                f"hold one per block to follow the removal; fix the config before removing blocks"
            )
    removed_set = set(removed)
    gone = {id(p) for i in removed for p in blocks[i].parameters()}
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in gone]
        for param in [p for p in optimizer.state if id(p) in gone]:
            del optimizer.state[param]
    kept = [block for i, block in enumerate(blocks) if i not in removed_set]
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    set_decoder_blocks(model, nn.ModuleList(kept))
    for key in PER_LAYER_CONFIG_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, list):
            setattr(config, key, [entry for i, entry in enumerate(value) if i not in removed_set])
    window_layers = getattr(config, "max_window_layers", None)  # Qwen2/3: blocks below it use full attention
    if isinstance(window_layers, int):
        config.max_window_layers = sum(1 for i in range(min(window_layers, len(blocks))) if i not in removed_set)
    config.num_hidden_layers = len(kept)
    return removed
