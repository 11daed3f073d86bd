"""Per-layer reconstruction (`pruning.reconstruct`): after a layer is pruned (and its down_proj refitted), fit its
kept gate/up/down weights by Adam so that it reproduces a target on the calibration tokens.

Layer by layer, with `x` the layer's MLP input on the calibration tokens (as the layer-wise calibration mode gives
it: the pruned prefix's under `sequential` and `carried`, the unpruned model's under `layerwise`):
- `target=local`: the unpruned MLP's output on `x` (what the least-squares refit fits, here through all three
  matrices, the activation included);
- `target=carried`: what the pruned MLP must add to its block's residual stream for the block to output what the
  unpruned model's block outputs on the same tokens, so that each layer also makes up for the error of the layers
  below (under `layerwise` the prefix is unpruned, and this equals `local`).
What is fitted is the block's whole MLP path (`MlpPath`): the MLP, then the post-feedforward norm of Gemma 2/3 and
OLMo-2 and the residual multiplier of Granite, so that the path's output added to the residual stream is the block's
output in every supported family.
The loss is the mean over tokens of the squared output error, in float32 whatever the model's dtype (the steps'
products in bfloat16 under `precision=bfloat16`), with batches of `batch_tokens` tokens, `epochs` passes and a
cosine-decayed learning rate. Under `normalized`, each token's error is divided by the squared norm of the block's
output there (what the next layer's norm divides by), so that every token counts by its relative error: in
SmolLM2-135M the MLPs of blocks 2, 11 and 28 write a few massive activations (the block-11 output reaches a norm of
24,800 where the median is 140), and on four calibration sequences the top 1% of tokens hold 81%, 99.9% and 90% of
those MLPs' squared output, so that the plain loss is spent on them.
Only the base weights change: a LoRA adapter's contribution stays in the function fitted, and shapes stay those of the
plain Hugging Face layout (the fused Phi-3 `gate_up_proj` is fitted as the one matrix it is). On a 2-core CPU a
SmolLM2-135M layer takes about 25 s for 6 epochs over 32,768 tokens (docs/BENCHMARKS.md,
`prune_cost_reconstruct`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prune_recover.arch import GatedMLP, base_linear
from prune_recover.lm import forward_precision
from prune_recover.logs import get_logger
from prune_recover.settings import check_flag, check_whole_numbers, is_finite_number

TARGETS = ("local", "carried")
PRECISIONS = ("float32", "bfloat16")  # of the Adam steps' products (float16 would need loss scaling)
log = get_logger(__name__)
CHUNK = 4096  # tokens per no-grad pass


@dataclass(frozen=True)
class ReconstructSpec:
    """Reconstruction settings (`pruning.reconstruct`).

    Attributes:
        epochs: Adam passes over the calibration tokens per layer; 0 disables the reconstruction.
        lr: Adam's learning rate at the start of the cosine decay.
        batch_tokens: Tokens per Adam step.
        target: `local` or `carried` (module docstring).
        normalized: Weigh each token's squared error by the inverse squared norm of its block's output there (what
            the next layer's norm divides by), so that every token counts by its relative error (module docstring).
        precision: `float32`, or `bfloat16`: the Adam steps' matrix products run under bfloat16 autocast (the
            weights, their Adam state, the loss and the errors before and after stay float32): the 6-epoch step at
            40% of SmolLM2-135M in 0.71x the float32 fit's time on a CPU with bfloat16 instructions, same quality
            (docs/BENCHMARKS.md `prune_cost_reconstruct_bf16`); the usual choice on a GPU. A CPU without bfloat16
            instructions computes it slower than float32 (`configs/trainer/cpu.yaml` chooses so for training).
    """

    epochs: int = 0
    lr: float = 2e-3
    batch_tokens: int = 1024
    target: str = "carried"
    normalized: bool = False
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_whole_numbers(
            {"pruning.reconstruct.epochs": (self.epochs, 0), "pruning.reconstruct.batch_tokens": (self.batch_tokens, 1)}
        )
        if not (is_finite_number(self.lr) and self.lr > 0):
            raise ValueError(f"pruning.reconstruct.lr must be a finite positive number, got {self.lr!r}")
        check_flag("pruning.reconstruct.normalized", self.normalized)
        if self.target not in TARGETS:
            raise ValueError(f"pruning.reconstruct.target must be one of {TARGETS}, got {self.target!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"pruning.reconstruct.precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def enabled(self) -> bool:
        return self.epochs > 0


@dataclass(frozen=True)
class LayerFit:
    """What `reconstruct_mlp` reports of one layer's fit.

    Attributes:
        before: Relative output error against the target before the fit (tokens weighted as in the loss).
        after: The same after it (equal to `before` when the fit was undone).
        output: The fitted MLP path's output on the fit's inputs, `[tokens, hidden]` float32, computed by the fit
            itself; None where it is not what the model now computes (a model not in float32, an autocast region,
            weights changed by the all-reduce afterwards), so that the caller runs the block instead.
    """

    before: float
    after: float
    output: torch.Tensor | None


def fitted_weights(mlp: GatedMLP) -> list[torch.Tensor]:
    """The base weights the reconstruction changes: gate, up and down (gate_up and down when fused)."""
    weights = [base_linear(module).weight for module in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
    return list({id(weight): weight for weight in weights}.values())


@torch.no_grad()
def path_output(path: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`path(x)` over the tokens `[tokens, hidden]`, in chunks of `CHUNK` tokens, as float32."""
    return torch.cat([path(x[start : start + CHUNK]).float() for start in range(0, len(x), CHUNK)])


def relative_error(output: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> float:
    """`sum_t s_t ||output_t - target_t||^2 / sum_t s_t ||target_t||^2` over the tokens, `s` their weights."""
    error = ((output - target).square().sum(1) * scale).sum()
    return float(error / (target.square().sum(1) * scale).sum().clamp_min(1e-30))


def token_weights(spec: ReconstructSpec, block_output: torch.Tensor) -> torch.Tensor:
    """Each token's weight in the fit's loss, mean 1: uniform, or under `spec.normalized` the inverse squared norm of
    the block's output `[tokens, hidden]` at that token."""
    if not spec.normalized:
        return torch.ones(len(block_output), device=block_output.device)
    inverse = 1 / block_output.square().sum(1).clamp_min(1e-12)
    return inverse / inverse.mean()


def reconstruct_mlp(
    mlp: GatedMLP,
    path: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    spec: ReconstructSpec,
    seed: int,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    block_output: torch.Tensor | None = None,
) -> LayerFit:
    """Fit the pruned `mlp`'s base weights so that `path` (its block's `MlpPath`, or the MLP module itself) gives
    `target` on `x` (module docstring); returns the relative errors before and after, each token weighted as in the
    loss, and the fitted path's output on `x` where it is what the model now computes (`LayerFit`). `block_output`
    (`[tokens, hidden]`, default `target`) sets the token weights under `spec.normalized`. A fit that does not lower
    the error is undone (after == before). `reduce` (an all-reduce mean under DDP) is applied to the fitted weights,
    so that every rank keeps the same model."""
    weights = fitted_weights(mlp)
    # the fit computes in float32 outside autocast: its output is the model's only for a float32 model run so, and
    # only if no all-reduce changes the weights afterwards
    exact = reduce is None and not torch.is_autocast_enabled(weights[0].device.type)
    exact = exact and all(parameter.dtype == torch.float32 for parameter in path.parameters())
    # the fit runs in float32 (LoRA factors, kept frozen, included) and leaves dtypes, flags and the training
    # gradients (of an accumulation window the event falls in) as it found them
    saved = [(parameter, parameter.dtype, parameter.requires_grad, parameter.grad) for parameter in path.parameters()]
    for parameter, _, _, _ in saved:
        parameter.grad = None
        parameter.data = parameter.data.float()
        parameter.requires_grad_(False)
    x, target = x.to(weights[0].device), target.to(weights[0].device)
    scale = token_weights(spec, (block_output if block_output is not None else target).to(x.device))
    try:
        with torch.enable_grad(), torch.autocast(weights[0].device.type, enabled=False):
            before = relative_error(path_output(path, x), target, scale)
            start = [weight.detach().clone() for weight in weights]
            for weight in weights:
                weight.requires_grad_(True)
            adam(path, weights, x, target, scale, spec, seed)
            output = path_output(path, x)
            after = relative_error(output, target, scale)
            if not after < before:  # a fit that ends worse (too high a rate) is undone
                log.warning("Layer fit raised its error %.4g -> %.4g: kept the weights before it", before, after)
                for weight, value in zip(weights, start, strict=True):
                    weight.data.copy_(value)
                output, after = path_output(path, x), before
    finally:
        for parameter, dtype, flag, grad in saved:
            parameter.requires_grad_(flag)
            parameter.data = parameter.data.to(dtype)
            parameter.grad = grad
    if reduce is not None:
        for weight in weights:
            weight.data = reduce(weight.data.float()).to(weight.dtype)
    torch.clear_autocast_cache()  # a forward pass later in the same autocast region must see the new values
    return LayerFit(before, after, output if exact else None)


def adam(
    module,
    weights: list[torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    scale: torch.Tensor,
    spec: ReconstructSpec,
    seed: int,
):
    """`spec.epochs` shuffled passes of Adam on `weights`: mean over tokens of `module`'s squared output error, each
    token's weighted by `scale`."""
    optimizer = torch.optim.Adam(weights, lr=spec.lr)
    steps_per_epoch = max(1, len(x) // spec.batch_tokens)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(spec.epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for step in range(steps_per_epoch):
            tokens = order[step * spec.batch_tokens : (step + 1) * spec.batch_tokens]
            # no cast cache: inside the fit's autocast-off region it would outlive the step and keep the old weights
            with forward_precision(spec.precision, x.device, cache=False):
                output = module(x[tokens])
            loss = ((output.float() - target[tokens]).square().sum(1) * scale[tokens]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
