"""Gradient statistics: the first-order Taylor saliency of MLP neurons, and the backward passes it (and the
Taylor depth criterion) runs on calibration batches with only the tracked weights requiring grad."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prune_recover.arch import GatedMLP, gated_mlps
from prune_recover.lm import eval_mode, model_device


def collect_taylor_stats(model: nn.Module, batches: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
    """First-order Taylor saliency of every MLP neuron.

    For each batch the language-modelling loss is back-propagated and `|grad * weight|` is summed
    over the neuron's gate row, up row and down column; the per-batch sums are added up in float64.
    Only MLP weights get gradients; the model's `requires_grad` flags and mode are restored.

    Returns:
        {layer index: `[intermediate]` float64 saliencies}.
    """
    mlps = gated_mlps(model)
    tracked = _mlp_weights(mlps)
    saliency = {index: torch.zeros(mlp.intermediate_size, dtype=torch.float64) for index, mlp in enumerate(mlps)}
    for _ in backward_passes(model, batches, tracked):
        for index, mlp in enumerate(mlps):
            saliency[index] += neuron_taylor(mlp).cpu()
    return {index: value.to(model_device(model)) for index, value in saliency.items()}


def neuron_taylor(mlp: GatedMLP) -> torch.Tensor:
    """`|grad * weight|` summed over each neuron's gate row, up row and down column (current grads)."""
    width = mlp.intermediate_size
    gate = _saliency(mlp.gate_proj)
    down = _saliency(mlp.down_proj).sum(0)
    if mlp.fused:
        rows = gate.sum(1)
        return rows[:width] + rows[width:] + down
    return gate.sum(1) + _saliency(mlp.up_proj).sum(1) + down


def _saliency(module: nn.Module) -> torch.Tensor:
    weight = getattr(module, "base_layer", module).weight
    return (weight.grad.double() * weight.detach().double()).abs()


def _mlp_weights(mlps: list[GatedMLP]) -> list[nn.Parameter]:
    params = {}
    for mlp in mlps:
        for module in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            weight = getattr(module, "base_layer", module).weight
            params[id(weight)] = weight
    return list(params.values())


def backward_passes(model: nn.Module, batches: Sequence[torch.Tensor], tracked: list[nn.Parameter]):
    """Back-propagate each batch's LM loss with only `tracked` requiring grad; yield the loss with grads in place.

    Gradients are cleared after each yield, so the consumer sees one batch's gradients at a time.
    """
    device = model_device(model)
    flags = {param: param.requires_grad for param in model.parameters()}
    grads = {param: param.grad for param in model.parameters()}
    try:
        for param in model.parameters():
            param.requires_grad_(False)
            param.grad = None
        for param in tracked:
            param.requires_grad_(True)
        with eval_mode(model):  # no dropout: the saliency of the deployed model
            for batch in batches:
                batch = batch.to(device)
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                loss.backward()
                yield loss.detach()
                for param in tracked:
                    param.grad = None
    finally:
        for param, flag in flags.items():
            param.requires_grad_(flag)
            param.grad = grads[param]
