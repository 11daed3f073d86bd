"""Pruning targets -> MLP width: a ratio, an expansion ratio, or a total parameter count.

The parameter count is solved from the config alone: the model is built on the `meta` device
(no memory, no weights), which gives exact counts for every family, tied embeddings and biases
included. An 8B model's target is therefore computed before, or without, loading its weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from prune_recover.arch import GatedMLP, base_linear, family_of
from prune_recover.lm import count_parameters


@dataclass(frozen=True)
class ParamModel:
    """Total parameters as an affine function of MLP width and number of decoder blocks.

    `total(width, blocks) = fixed + blocks * (block_fixed + width * per_neuron)`.

    Attributes:
        fixed: Parameters outside the decoder blocks (embeddings, final norm, untied lm_head).
        block_fixed: Parameters of one block that do not depend on the MLP width.
        per_neuron: Parameters one intermediate neuron costs in one block (gate row, up row, down column, biases).
        intermediate_size: Current MLP width.
        hidden_size: Model width.
        num_layers: Current number of decoder blocks.
    """

    fixed: int
    block_fixed: int
    per_neuron: int
    intermediate_size: int
    hidden_size: int
    num_layers: int

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ParamModel:
        family = family_of(config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        total = count_parameters(model)
        blocks = model.model.layers
        block = sum(p.numel() for p in blocks[0].parameters())
        if any(sum(p.numel() for p in b.parameters()) != block for b in blocks):
            raise ValueError("decoder blocks differ in size; the parameter model assumes identical blocks")
        mlp = GatedMLP(blocks[0].mlp, family.fused_gate_up)
        width = mlp.intermediate_size
        width_dependent = sum(
            t.numel()
            for t in (
                base_linear(mlp.gate_proj).weight,
                base_linear(mlp.gate_proj).bias,
                base_linear(mlp.down_proj).weight,
                *([] if mlp.fused else [base_linear(mlp.up_proj).weight, base_linear(mlp.up_proj).bias]),
            )
            if t is not None
        )
        return cls(
            fixed=total - len(blocks) * block,
            block_fixed=block - width_dependent,
            per_neuron=width_dependent // width,
            intermediate_size=width,
            hidden_size=config.hidden_size,
            num_layers=len(blocks),
        )

    def total(self, width: int | None = None, num_layers: int | None = None) -> int:
        width = self.intermediate_size if width is None else width
        num_layers = self.num_layers if num_layers is None else num_layers
        return self.fixed + num_layers * (self.block_fixed + width * self.per_neuron)


def round_to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple of `multiple` (halves round up), never below `multiple` itself."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


@dataclass(frozen=True)
class WidthTarget:
    """What MLP width to prune to. Exactly one of `ratio`, `expansion_ratio`, `target_params` is set.

    Attributes:
        ratio: Fraction of MLP neurons removed, in (0, 1).
        expansion_ratio: Target intermediate_size / hidden_size.
        target_params: Target total parameter count (e.g. 4.8e9), depth pruning accounted for.
        round_to: The width is rounded to the nearest multiple of this (e.g. 64 or 128 for tensor cores).
    """

    ratio: float | None = None
    expansion_ratio: float | None = None
    target_params: float | None = None
    round_to: int = 1

    def __post_init__(self) -> None:
        for name in ("ratio", "expansion_ratio", "target_params"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"pruning.{name} must be a number or null, got {value!r}")
        given = [name for name in ("ratio", "expansion_ratio", "target_params") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of pruning.ratio, pruning.expansion_ratio, pruning.target_params "
                f"(got {given or 'none'}); set the others to null"
            )
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ValueError(f"pruning.ratio must be in (0, 1) (the fraction of MLP neurons removed), got {self.ratio}")
        if self.expansion_ratio is not None and self.expansion_ratio <= 0:
            raise ValueError(f"pruning.expansion_ratio must be positive, got {self.expansion_ratio}")
        if self.target_params is not None and self.target_params <= 0:
            raise ValueError(f"pruning.target_params must be positive, got {self.target_params}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"pruning.round_to must be a positive integer, got {self.round_to}")

    def width(self, params: ParamModel, num_layers: int | None = None) -> int:
        """The MLP width this target asks for on a model described by `params`.

        Args:
            params: The model before pruning.
            num_layers: Blocks left after depth pruning (for `target_params`); None keeps them all.

        Raises:
            ValueError: the target removes no neuron, or cannot be reached.
        """
        current = params.intermediate_size
        if self.ratio is not None:
            width = round_to_multiple(current * (1 - self.ratio), self.round_to)
            what = f"ratio {self.ratio}"
        elif self.expansion_ratio is not None:
            width = round_to_multiple(self.expansion_ratio * params.hidden_size, self.round_to)
            what = f"expansion ratio {self.expansion_ratio} (current {current / params.hidden_size:.3g})"
        else:
            width = self._width_for_params(params, num_layers)
            what = f"target_params {self.target_params:.6g}"
        if width >= current:
            raise ValueError(
                f"{what} with round_to={self.round_to} gives intermediate size {width}, which removes no neuron "
                f"from the current {current}"
            )
        return width

    def _width_for_params(self, params: ParamModel, num_layers: int | None) -> int:
        num_layers = params.num_layers if num_layers is None else num_layers
        smallest = params.total(self.round_to, num_layers)
        if self.target_params < smallest:
            raise ValueError(
                f"target_params {self.target_params:.6g} is unreachable: the smallest reachable count with "
                f"{num_layers} blocks and round_to={self.round_to} is {smallest:,} parameters "
                f"(intermediate size {self.round_to})"
            )
        per_width = num_layers * params.per_neuron
        exact = (self.target_params - params.total(0, num_layers)) / per_width
        return round_to_multiple(exact, self.round_to)
