"""Calibration statistics for data-driven importance and the down_proj refit.

Everything is gathered by hooks on the input of `down_proj` (the product `act(gate) * up`, one
column per intermediate neuron) while the model runs forward, so one pass over the calibration
set yields the statistics of every layer. Sums are kept in float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from prune_recover.arch import GatedMLP, final_norm, gated_mlps
from prune_recover.lm import eval_mode, model_device
from prune_recover.pruning.gram import add_gram
from prune_recover.pruning.layerwise import forward_until


@dataclass
class NeuronStats:
    """Per-neuron calibration statistics of one gated MLP.

    Attributes:
        sum_sq: Sum over tokens of the squared down_proj input, `[intermediate]`, float64.
        tokens: Number of tokens summed.
        gram: Sum over tokens of `x x^T` of the down_proj input, `[intermediate, intermediate]`,
            float64; only gathered when a refit needs it.
        taylor: Sum over batches of `|grad * weight|` over each neuron's gate row, up row and
            down column, `[intermediate]`, float64; only gathered for the `taylor` scorer.
        cross: Sum over tokens of `x x_target^T`, `[intermediate, intermediate]`, float64, where `x_target` is
            the unpruned model's down_proj input for the same token (`calibration_mode=carried`): the refit then
            reproduces the unpruned model's output from this model's inputs. None: the target is `x` itself.
    """

    sum_sq: torch.Tensor
    tokens: int = 0
    gram: torch.Tensor | None = None
    taylor: torch.Tensor | None = None
    cross: torch.Tensor | None = None

    @property
    def activation_norm(self) -> torch.Tensor:
        """L2 norm of each neuron's activations over all calibration tokens."""
        return self.sum_sq.sqrt()

    def add(self, x: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Add the down_proj inputs `x` `[tokens, intermediate]` (and, for `cross`, the unpruned model's `target`).

        Running sums are float64 across batches. Within a batch the squares are summed in float32: the squares
        of 16-bit values are exact in float32, and on SmolLM2's calibration pass the sums were within 2e-7 of
        float64 ones and ranked the neurons the same, while summing in float64 made the bf16 pass about a
        quarter slower. A batch's Gram product is computed in bfloat16 when `x` is bfloat16 (a calibration pass
        under bf16 autocast: its values are bf16 already, the products are exact and accumulate in float32
        inside the matrix unit, only the batch's sum is rounded to bf16); else float32 (float16 could overflow);
        by `add_gram`. It and the cross term are added to their float64 sums in place, without float64 copies.
        """
        self.sum_sq += x.float().square().sum(0)
        self.tokens += x.shape[0]
        with torch.autocast(x.device.type, enabled=False):  # the dtype chosen here, not the caller's autocast
            if self.gram is not None:
                add_gram(self.gram, x if x.dtype == torch.bfloat16 else x.float())
            if self.cross is not None:
                self.cross.add_(x.float().T @ target.float())

    @classmethod
    def zeros(cls, width: int, device: torch.device, gram: bool = False, cross: bool = False) -> NeuronStats:
        """Empty statistics of a `width`-neuron layer (with room for the Gram matrix and the cross term if asked)."""

        def square() -> torch.Tensor:
            return torch.zeros(width, width, dtype=torch.float64, device=device)

        return cls(
            sum_sq=torch.zeros(width, dtype=torch.float64, device=device),
            gram=square() if gram else None,
            cross=square() if cross else None,
        )


class ActivationRecorder:
    """Context manager that accumulates `NeuronStats` from every forward pass it sees.

    Example:
        >>> with ActivationRecorder(model, gram=True) as recorder:
        ...     for batch in batches:
        ...         model(batch)
        >>> stats = recorder.stats  # {layer index: NeuronStats}

    Args:
        model: The (possibly wrapped) causal LM.
        layers: Layer indices to record; None records every layer.
        gram: Also accumulate the Gram matrix of the down_proj input (memory: intermediate^2 * 8 bytes per layer).
    """

    def __init__(self, model: nn.Module, layers: Iterable[int] | None = None, gram: bool = False):
        mlps = gated_mlps(model)
        self.layers = list(range(len(mlps))) if layers is None else list(layers)
        self.mlps = {index: mlps[index] for index in self.layers}
        self.gram = gram
        self.stats: dict[int, NeuronStats] = {}
        self._handles: list = []
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far (shapes follow the current, possibly pruned, model)."""
        self.stats = {index: self._empty(mlp) for index, mlp in self.mlps.items()}

    def _empty(self, mlp: GatedMLP) -> NeuronStats:
        return NeuronStats.zeros(mlp.intermediate_size, mlp.down_weight().device, gram=self.gram)

    def attach(self) -> ActivationRecorder:
        """Start recording every forward pass (again, after `detach`: the statistics so far are kept)."""
        if not self._handles:
            for index, mlp in self.mlps.items():
                self._handles.append(mlp.down_proj.register_forward_pre_hook(self._hook(index)))
        return self

    def detach(self) -> None:
        """Stop recording; the statistics gathered so far are kept."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> ActivationRecorder:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def state_dict(self) -> dict:
        """The statistics gathered so far, to put in a checkpoint."""
        return {index: asdict(stats) for index, stats in self.stats.items()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from statistics saved by `state_dict` (on a model of the same shapes), on the device the model's
        statistics are kept on (a checkpoint loads its tensors onto the CPU; the hooks add the GPU's to them)."""
        for index, saved in state.items():
            if saved["sum_sq"].shape != self.stats[index].sum_sq.shape:
                raise ValueError(f"saved statistics of layer {index} do not match the model's MLP width")
            if self.gram and saved.get("gram") is None:
                raise ValueError(f"saved statistics of layer {index} have no Gram matrix, which the refit needs")
            device = self.stats[index].sum_sq.device
            self.stats[index] = NeuronStats(
                **{key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in saved.items()}
            )

    def _hook(self, index: int):
        def record(module: nn.Module, args: tuple) -> None:
            self.stats[index].add(_tokens_by_features(args[0]))  # in the dtype the pass computed in

        return record


@contextmanager
def captured_inputs(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the input of every call of `module` inside the block, as float32 `[tokens, features]`."""
    inputs: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(lambda called, args: inputs.append(_tokens_by_features(args[0]).float()))
    try:
        yield inputs
    finally:
        handle.remove()


def _tokens_by_features(x: torch.Tensor) -> torch.Tensor:
    return x.detach().reshape(-1, x.shape[-1])


@torch.no_grad()
def collect_activation_stats(
    model: nn.Module, batches: Sequence[torch.Tensor], gram: bool = False
) -> dict[int, NeuronStats]:
    """One forward pass over `batches`, returning the `NeuronStats` of every layer.

    The pass stops at the final norm: the LM head (a fifth of SmolLM2's forward FLOPs) adds nothing here.
    """
    device = model_device(model)
    with eval_mode(model), ActivationRecorder(model, gram=gram) as recorder:
        for batch in batches:
            forward_until(model, batch.to(device), final_norm(model))
    return recorder.stats


def same(tensor: torch.Tensor) -> torch.Tensor:
    """The `reduce` of one process: the tensor as it is."""
    return tensor


def reduce_stats(stats: NeuronStats, reduce) -> NeuronStats:
    """`stats` with `reduce` (under DDP an all-reduce mean) applied to every accumulated tensor."""
    return NeuronStats(
        sum_sq=reduce(stats.sum_sq),
        tokens=stats.tokens,
        gram=None if stats.gram is None else reduce(stats.gram),
        taylor=None if stats.taylor is None else reduce(stats.taylor),
        cross=None if stats.cross is None else reduce(stats.cross),
    )
