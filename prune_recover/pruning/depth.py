"""Depth pruning: score whole decoder blocks and remove the least important ones.

Criteria (higher score = more important = kept):
- `ppl`: calibration perplexity of the model with that one block skipped (Shortened LLaMA's PPL criterion).
- `taylor_plus`: sum over the block's weights of abs(grad * weight), summed over calibration
  batches, with the first 4 and last 2 blocks never removed (Shortened LLaMA's Taylor+).
- `angular`: mean over tokens of the angular distance arccos(cos(input, output)) / pi between a
  block's input and output hidden states (Gromov et al. 2024): a block that barely turns the
  residual stream does little.
Removal is one-shot: blocks are scored once on the unpruned model.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from prune_recover.arch import decoder_blocks
from prune_recover.lm import eval_mode, model_device, summed_nll
from prune_recover.pruning.gradients import backward_passes


@dataclass(frozen=True)
class DepthCriterion:
    """A block-importance criterion and the blocks it never removes by default.

    Attributes:
        name: Registry key (`pruning.depth.criterion=<name>`).
        fn: `(model, batches) -> Tensor[num_blocks]`, higher = more important.
        protect_first: Blocks at the start that are never removed unless overridden.
        protect_last: Blocks at the end that are never removed unless overridden.
    """

    name: str
    fn: Callable[[nn.Module, Sequence[torch.Tensor]], torch.Tensor]
    protect_first: int = 0
    protect_last: int = 0


@torch.no_grad()
def ppl_scores(model: nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """Calibration perplexity with each block skipped in turn (its output replaced by its input)."""
    blocks = decoder_blocks(model)
    scores = torch.empty(len(blocks), dtype=torch.float64)
    for index, block in enumerate(blocks):
        handle = block.register_forward_hook(_identity_output, with_kwargs=True)
        try:
            scores[index] = calibration_perplexity(model, batches)
        finally:
            handle.remove()
    return scores


def _identity_output(module, args, kwargs, output):
    hidden = args[0] if args else kwargs["hidden_states"]
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@torch.no_grad()
def calibration_perplexity(model: nn.Module, batches: Sequence[torch.Tensor]) -> float:
    """exp(mean next-token NLL) over the batches, in eval mode (inf past float range: a block whose removal
    wrecks the model ranks last, not an OverflowError)."""
    device = model_device(model)
    nll, tokens = 0.0, 0
    with eval_mode(model):
        for batch in batches:
            batch_nll, count = summed_nll(model, batch.to(device))
            nll += batch_nll.item()
            tokens += count
    mean = nll / tokens
    return math.exp(mean) if mean < math.log(sys.float_info.max) else math.inf


def taylor_scores(model: nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over each block's weights of abs(grad * weight), per batch, summed over batches."""
    blocks = decoder_blocks(model)
    params = [list(block.parameters()) for block in blocks]
    scores = torch.zeros(len(blocks), dtype=torch.float64)
    for _ in backward_passes(model, batches, [p for block in params for p in block]):
        for index, block_params in enumerate(params):
            scores[index] += sum((p.grad.double() * p.detach().double()).abs().sum().item() for p in block_params)
    return scores


@torch.no_grad()
def angular_scores(model: nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean angular distance (in [0, 1]) between each block's input and output hidden states."""
    blocks = decoder_blocks(model)
    totals = torch.zeros(len(blocks), dtype=torch.float64)
    tokens = 0

    def recorder(index):
        def record(module, args, kwargs, output):
            hidden_in = (args[0] if args else kwargs["hidden_states"]).float()
            hidden_out = (output[0] if isinstance(output, tuple) else output).float()
            cosine = nn.functional.cosine_similarity(hidden_in, hidden_out, dim=-1).clamp(-1, 1)
            totals[index] += (torch.arccos(cosine) / math.pi).double().sum().item()

        return record

    handles = [block.register_forward_hook(recorder(i), with_kwargs=True) for i, block in enumerate(blocks)]
    device = model_device(model)
    try:
        with eval_mode(model):
            for batch in batches:
                model(input_ids=batch.to(device), use_cache=False)
                tokens += batch.numel()
    finally:
        for handle in handles:
            handle.remove()
    return totals / tokens


DEPTH_CRITERIA: dict[str, DepthCriterion] = {
    criterion.name: criterion
    for criterion in (
        DepthCriterion("ppl", ppl_scores),
        DepthCriterion("taylor_plus", taylor_scores, protect_first=4, protect_last=2),
        DepthCriterion("angular", angular_scores),
    )
}


def get_depth_criterion(name: str) -> DepthCriterion:
    """Look a depth criterion up by name, or raise listing the known ones."""
    if name not in DEPTH_CRITERIA:
        raise ValueError(f"Unknown depth criterion '{name}'. Known criteria: {', '.join(DEPTH_CRITERIA)}")
    return DEPTH_CRITERIA[name]


def removable_blocks(num_layers: int, protect_first: int, protect_last: int) -> list[int]:
    """Indices that the protection rules allow to remove."""
    return list(range(protect_first, num_layers - protect_last))


def choose_blocks(scores: torch.Tensor, num_blocks: int, protect_first: int = 0, protect_last: int = 0) -> list[int]:
    """The `num_blocks` lowest-scoring removable blocks, sorted (ties: lower index removed first)."""
    candidates = removable_blocks(len(scores), protect_first, protect_last)
    if num_blocks < 0:
        raise ValueError(f"cannot remove {num_blocks} blocks: the number of blocks to remove is at least 0")
    if num_blocks > len(candidates):
        raise ValueError(
            f"cannot remove {num_blocks} blocks: the model has {len(scores)} and {len(candidates)} are removable "
            f"(first {protect_first} and last {protect_last} protected)"
        )
    candidate_scores = scores[candidates].double()
    order = torch.argsort(candidate_scores, stable=True)[:num_blocks]
    return sorted(candidates[i] for i in order.tolist())
