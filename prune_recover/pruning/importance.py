"""Importance scorers for gated-MLP neurons: callables `(mlp, stats) -> Tensor[intermediate]`.

Higher score = more important = kept. Weight-only scorers read the gate/up (and down) weights
and need no data; data-driven ones read `NeuronStats` gathered on calibration batches.

| name | formula for neuron i | needs |
| --- | --- | --- |
| `maw` | max_j abs(gate[i, j]) + max_j abs(up[i, j]) | weights |
| `mk` | max + abs(min) of gate row i, plus the same for up row i | weights |
| `vow` | var(gate row i) + var(up row i) (unbiased) | weights |
| `pon` | L1(gate row i) * L1(up row i) | weights |
| `l2` | L2(gate row i) + L2(up row i) | weights |
| `activation` | L2 norm over calibration tokens of down_proj input i | activations |
| `wanda` | `activation` * L2(down column i) | activations |
| `taylor` | sum over batches of abs(grad * weight) over gate row, up row, down column | gradients |
| `obs` | no score: neurons chosen jointly with the down_proj refit (`obs.py`) | activations + Gram |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import torch

from prune_recover.arch import GatedMLP
from prune_recover.pruning.calibration import NeuronStats
from prune_recover.pruning.obs import obs_select
from prune_recover.settings import check_non_negative

# Neurons `obs` removes per round (pruning.obs_round overrides).
OBS_ROUND = 8

Needs = Literal["weights", "activations", "gradients"]


@dataclass(frozen=True)
class Scorer:
    """A named importance criterion.

    Attributes:
        name: Registry key used in configs (`pruning.importance=<name>`).
        fn: Computes one score per intermediate neuron.
        needs: What the scorer reads: `weights` only, calibration `activations`, or `gradients`.
        select: For a joint selector (`obs`): `(mlp, stats, width, damp) -> kept indices`; `fn` is then None.
    """

    name: str
    fn: Callable[[GatedMLP, NeuronStats | None], torch.Tensor] | None
    needs: Needs
    select: Callable[..., torch.Tensor] | None = None

    @property
    def data_driven(self) -> bool:
        return self.needs != "weights"

    def __call__(self, mlp: GatedMLP, stats: NeuronStats | None = None) -> torch.Tensor:
        if self.fn is None:
            raise ValueError(f"'{self.name}' selects neurons jointly with the refit; it gives no per-neuron score")
        if self.data_driven and stats is None:
            raise ValueError(f"scorer '{self.name}' needs calibration {self.needs}, but no statistics were given")
        if self.needs == "gradients" and stats.taylor is None:
            raise ValueError(f"scorer '{self.name}' needs gradient statistics (NeuronStats.taylor)")
        return self.fn(mlp, stats)


def _rows(mlp: GatedMLP) -> tuple[torch.Tensor, torch.Tensor]:
    return mlp.gate_weight().detach().float(), mlp.up_weight().detach().float()


def _maw(mlp: GatedMLP, stats: NeuronStats | None) -> torch.Tensor:
    gate, up = _rows(mlp)
    return gate.abs().amax(dim=1) + up.abs().amax(dim=1)


def _mk(mlp: GatedMLP, stats: NeuronStats | None) -> torch.Tensor:
    gate, up = _rows(mlp)
    return gate.amax(dim=1) + gate.amin(dim=1).abs() + up.amax(dim=1) + up.amin(dim=1).abs()


def _vow(mlp: GatedMLP, stats: NeuronStats | None) -> torch.Tensor:
    gate, up = _rows(mlp)
    return gate.var(dim=1) + up.var(dim=1)


def _pon(mlp: GatedMLP, stats: NeuronStats | None) -> torch.Tensor:
    gate, up = _rows(mlp)
    return gate.abs().sum(dim=1) * up.abs().sum(dim=1)


def _l2(mlp: GatedMLP, stats: NeuronStats | None) -> torch.Tensor:
    gate, up = _rows(mlp)
    return gate.norm(dim=1) + up.norm(dim=1)


def _activation(mlp: GatedMLP, stats: NeuronStats) -> torch.Tensor:
    return stats.activation_norm


def _wanda(mlp: GatedMLP, stats: NeuronStats) -> torch.Tensor:
    down = mlp.down_weight().detach().double()
    return stats.activation_norm * down.norm(dim=0).to(stats.sum_sq.device)


def _taylor(mlp: GatedMLP, stats: NeuronStats) -> torch.Tensor:
    return stats.taylor


SCORERS: dict[str, Scorer] = {
    scorer.name: scorer
    for scorer in (
        Scorer("maw", _maw, "weights"),
        Scorer("mk", _mk, "weights"),
        Scorer("vow", _vow, "weights"),
        Scorer("pon", _pon, "weights"),
        Scorer("l2", _l2, "weights"),
        Scorer("activation", _activation, "activations"),
        Scorer("wanda", _wanda, "activations"),
        Scorer("taylor", _taylor, "gradients"),
        Scorer("obs", None, "activations", select=partial(obs_select, round_size=OBS_ROUND)),
    )
}


def get_scorer(name: str) -> Scorer:
    """Look a scorer up by name, or raise listing the known ones."""
    if name not in SCORERS:
        raise ValueError(f"Unknown importance scorer '{name}'. Known scorers: {', '.join(SCORERS)}")
    return SCORERS[name]


def configured_scorer(name: str, refit: bool, obs_round: int, obs_shrink: float) -> Scorer:
    """The scorer `name` with the joint selector's settings (`pruning.obs_round`, `pruning.obs_shrink`) applied, or
    raise saying which setting is wrong; a joint selector needs the refit it chooses with."""
    scorer = get_scorer(name)
    if scorer.select is None:
        return scorer
    if not refit:
        raise ValueError(f"importance={name} chooses neurons together with the refit: set pruning.refit=true")
    if not isinstance(obs_round, int) or obs_round < 1:
        raise ValueError(f"pruning.obs_round must be a positive integer, got {obs_round!r}")
    check_non_negative("pruning.obs_shrink", obs_shrink)
    return replace(scorer, select=partial(obs_select, round_size=obs_round, shrink=obs_shrink))


def select_neurons(scores: torch.Tensor, width: int) -> torch.Tensor:
    """Indices of the `width` highest scores, in ascending index order.

    Ties keep the lower index (a stable sort), so the choice is deterministic across ranks and runs.
    """
    if not 0 < width <= scores.numel():
        raise ValueError(f"cannot keep {width} of {scores.numel()} neurons")
    order = torch.argsort(scores.detach().double().cpu(), descending=True, stable=True)
    return order[:width].sort().values
