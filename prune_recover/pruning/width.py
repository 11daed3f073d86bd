"""Width pruning of gated MLPs: score -> select -> (refit) -> slice, for every layer.

Two drivers share the per-layer step:
- `prune_width` uses statistics gathered beforehand for all layers at once (one forward pass,
  or the training batches since the last pruning event);
- `prune_width_layerwise` gathers each layer's statistics just before pruning it, holding one
  layer's Gram matrix at a time; `propagate="pruned"` feeds each layer the outputs of the
  already-pruned prefix (sequential calibration), `"original"` the outputs of the unpruned one, and
  `"carried"` the pruned prefix's outputs with the unpruned model's layer output as the refit's target
  (error carrying: each layer makes up for what the layers below lost). With `reconstruct` each pruned layer's
  weights are then fitted by gradient descent to its output target (`reconstruct.py`), and the next layer's inputs
  are the block's residual stream plus the fitted MLP path's output that the fit computed (attention is not pruned),
  rather than a run of the pruned block, wherever that output is the model's (`LayerFit.output`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
from torch import nn

from prune_recover.arch import GatedMLP, decoder_blocks, gated_mlps
from prune_recover.lm import eval_mode
from prune_recover.logs import get_logger
from prune_recover.pruning.calibration import ActivationRecorder, NeuronStats, captured_inputs, reduce_stats
from prune_recover.pruning.importance import Scorer, select_neurons
from prune_recover.pruning.layerwise import LayerwiseRunner, flat, unflat
from prune_recover.pruning.mlp_path import MlpIoRecorder
from prune_recover.pruning.reconstruct import ReconstructSpec, reconstruct_mlp
from prune_recover.pruning.refit import refit_down_proj
from prune_recover.pruning.surgery import slice_gated_mlp, sync_intermediate_size

PROPAGATIONS = ("original", "pruned", "carried")
log = get_logger(__name__)


def prune_layer(
    mlp: GatedMLP,
    width: int,
    scorer: Scorer,
    stats: NeuronStats | None,
    refit_damp: float | None = None,
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> torch.Tensor:
    """Prune one gated MLP to `width` neurons and return the kept indices.

    Args:
        refit_damp: None keeps the surviving down_proj columns as they are; a float refits them by
            damped least squares on `stats.gram` (see `refit.py`).
    """
    if scorer.select is not None:
        if refit_damp is None:
            raise ValueError(
                f"importance={scorer.name} chooses neurons together with the refit: set pruning.refit=true"
            )
        keep = scorer.select(mlp, stats, width, refit_damp)
    else:
        keep = select_neurons(scorer(mlp, stats), width)
    if refit_damp is not None:
        if stats is None or stats.gram is None:
            raise ValueError("the down_proj refit needs calibration statistics with a Gram matrix")
        refit_down_proj(mlp, keep, stats.gram, refit_damp, stats.cross)
    slice_gated_mlp(mlp, keep, optimizers)
    return keep


def prune_width(
    model: nn.Module,
    width: int,
    scorer: Scorer,
    stats: Mapping[int, NeuronStats] | None = None,
    refit_damp: float | None = None,
    optimizers: Iterable[torch.optim.Optimizer] = (),
) -> dict[int, torch.Tensor]:
    """Prune every layer to `width` with statistics gathered beforehand; returns kept indices per layer."""
    optimizers = list(optimizers)
    kept = {}
    for index, mlp in enumerate(gated_mlps(model)):
        layer_stats = stats[index] if stats is not None else None
        kept[index] = prune_layer(mlp, width, scorer, layer_stats, refit_damp, optimizers)
    sync_intermediate_size(model)
    return kept


def prune_width_layerwise(
    model: nn.Module,
    width: int,
    scorer: Scorer,
    batches: Sequence[torch.Tensor],
    refit_damp: float | None = None,
    propagate: Literal["original", "pruned", "carried"] = "original",
    taylor: Mapping[int, torch.Tensor] | None = None,
    optimizers: Iterable[torch.optim.Optimizer] = (),
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reconstruct: ReconstructSpec | None = None,
    errors: dict[int, tuple[float, float]] | None = None,
) -> dict[int, torch.Tensor]:
    """Prune layer by layer, gathering each layer's statistics right before pruning it.

    Args:
        propagate: `original` gives every layer the same inputs as one-shot calibration;
            `pruned` gives it the outputs of the already-pruned layers below (sequential);
            `carried` does too, and refits each layer to the unpruned model's output on the same tokens
            (so that it makes up for the error of the layers below; needs `refit_damp`).
        taylor: Per-layer gradient saliencies for the `taylor` scorer (a backward pass needs the whole model).
        reduce: Applied to each layer's statistics before use and to its reconstructed weights (an all-reduce mean
            under DDP).
        reconstruct: When enabled, each pruned layer's weights are then fitted to its target (`reconstruct.py`).
        errors: Filled, when reconstructing, with each layer's relative output error before and after its fit.
    """
    if propagate not in PROPAGATIONS:
        raise ValueError(f"propagate must be one of {PROPAGATIONS}, got '{propagate}'")
    if propagate == "carried" and refit_damp is None:
        raise ValueError("carried calibration refits each layer to the unpruned model's output: it needs a refit")
    optimizers = list(optimizers)
    reconstruct = reconstruct if reconstruct is not None and reconstruct.enabled else None
    carry = propagate == "pruned" and reconstruct is not None and reconstruct.target == "carried"
    kept = {}
    with eval_mode(model):
        runner = LayerwiseRunner(model, batches)
        unpruned_hidden = runner.hidden
        for index, mlp in enumerate(gated_mlps(model)):
            # the statistics pass on this block's inputs also records what the reconstruction fits on
            io = MlpIoRecorder(decoder_blocks(model)[index]) if reconstruct is not None else nullcontext()
            if propagate == "carried":
                layer_stats, unpruned_hidden = carried_stats(runner, index, mlp, unpruned_hidden, io)
                outputs = None
            else:
                if carry:  # the unpruned model's outputs of this block, before it is pruned
                    unpruned_hidden = runner.run_block(index, unpruned_hidden)
                with ActivationRecorder(model, layers=[index], gram=refit_damp is not None) as recorder, io:
                    unpruned_outputs = runner.run_block(index)
                outputs = unpruned_outputs if propagate == "original" else None  # else: the pruned block's, below
                layer_stats = recorder.stats[index]
            layer_stats = reduce_stats(layer_stats, reduce) if reduce else layer_stats
            if taylor is not None:
                layer_stats.taylor = taylor[index]
            kept[index] = prune_layer(mlp, width, scorer, layer_stats, refit_damp, optimizers)
            if reconstruct is not None:
                x, local, residual = io.tensors()
                carried = reconstruct.target == "carried" and propagate != "original"  # an unpruned prefix: local
                target = flat(unpruned_hidden) - residual if carried else local
                block_output = residual + local  # the block's output on these inputs before the pruning
                fit = reconstruct_mlp(mlp, io.path, x, target, reconstruct, index, reduce, block_output)
                log.info("Layer %d reconstructed: relative output error %.4f -> %.4f", index, fit.before, fit.after)
                if errors is not None:
                    errors[index] = (fit.before, fit.after)
                if propagate != "original" and fit.output is not None:
                    # the pruned block's output is its residual stream (attention is not pruned) plus the fitted
                    # path's output, which the fit has computed: no need to run the block again
                    outputs = unflat(residual + fit.output, like=runner.hidden)
            runner.advance(outputs if outputs is not None else runner.run_block(index))
    sync_intermediate_size(model)
    return kept


def carried_stats(
    runner: LayerwiseRunner,
    index: int,
    mlp: GatedMLP,
    unpruned_hidden: list[torch.Tensor],
    recording: AbstractContextManager,
) -> tuple[NeuronStats, list[torch.Tensor]]:
    """Statistics of layer `index` (not yet pruned) on the pruned prefix's outputs, with the cross term to the
    unpruned model's down_proj inputs for the same tokens; and the unpruned model's outputs of this block.

    `unpruned_hidden` are the unpruned model's inputs of this block (its outputs of the block below); `recording` is
    entered around each run on the pruned prefix's outputs (an `MlpIoRecorder`).
    """
    stats = NeuronStats.zeros(mlp.intermediate_size, mlp.down_weight().device, gram=True, cross=True)
    unpruned_outputs = []
    for number, (hidden, unpruned) in enumerate(zip(runner.hidden, unpruned_hidden, strict=True)):
        with captured_inputs(mlp.down_proj) as target:
            unpruned_outputs.append(runner.run_batch(index, number, unpruned))
        with captured_inputs(mlp.down_proj) as inputs, recording:
            runner.run_batch(index, number, hidden)
        stats.add(inputs[0], target[0])
    return stats, unpruned_outputs
