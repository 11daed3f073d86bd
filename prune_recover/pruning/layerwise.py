"""Run a decoder one block at a time on cached calibration hidden states.

Layer-by-layer calibration holds the statistics of one layer at a time (a 14336-wide Gram matrix
is 1.6 GB in float64) and lets each layer be calibrated on the outputs of the already-pruned
prefix. The inputs of block 0 are captured by stopping the forward pass at block 0; the keyword
arguments each block receives (attention masks per layer type, rotary embeddings) are captured
once per batch shape with one full forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prune_recover.arch import decoder_blocks
from prune_recover.lm import model_device


class _StopForward(Exception):
    pass


def forward_until(model: nn.Module, input_ids: torch.Tensor, module: nn.Module) -> tuple[tuple, dict]:
    """Run `model` on `input_ids` up to the call of `module` and return that call's (args, kwargs).

    The rest of the forward pass (e.g. the LM head over a large vocabulary) is skipped.
    """
    captured = {}

    def stop(called, args, kwargs):
        captured.update(args=args, kwargs=kwargs)
        raise _StopForward

    handle = module.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model(input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the forward pass never reached {type(module).__name__}")
    return captured["args"], captured["kwargs"]


class LayerwiseRunner:
    """Cached block inputs for a list of calibration batches, advanced one block at a time.

    Args:
        model: The causal LM (eval mode is set while running).
        batches: Calibration token batches `[batch, seq_len]`.
    """

    def __init__(self, model: nn.Module, batches: Sequence[torch.Tensor]):
        self.model = model
        self.device = model_device(model)
        self.hidden: list[torch.Tensor] = []
        self.shapes: list[tuple[int, ...]] = []
        self._block_kwargs: dict[tuple[int, ...], list[dict]] = {}
        with torch.no_grad():
            for batch in batches:
                batch = batch.to(self.device)
                self.hidden.append(self._block0_input(batch))
                self.shapes.append(tuple(batch.shape))
                if tuple(batch.shape) not in self._block_kwargs:
                    self._block_kwargs[tuple(batch.shape)] = self._kwargs_of_every_block(batch)

    def _block0_input(self, batch: torch.Tensor) -> torch.Tensor:
        args, kwargs = forward_until(self.model, batch, decoder_blocks(self.model)[0])
        return args[0] if args else kwargs["hidden_states"]

    def _kwargs_of_every_block(self, batch: torch.Tensor) -> list[dict]:
        blocks = decoder_blocks(self.model)
        captured: list[dict] = [{} for _ in blocks]

        def recorder(index):
            def record(module, args, kwargs):
                captured[index] = {k: v for k, v in kwargs.items() if k != "hidden_states"}

            return record

        handles = [block.register_forward_pre_hook(recorder(i), with_kwargs=True) for i, block in enumerate(blocks)]
        try:
            self.model(input_ids=batch, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return captured

    @torch.no_grad()
    def run_block(self, index: int, hidden: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Outputs of block `index` (as it is now) for every cached input (or `hidden`); the cache is unchanged."""
        hidden = self.hidden if hidden is None else hidden
        return [self.run_batch(index, number, states) for number, states in enumerate(hidden)]

    @torch.no_grad()
    def run_batch(self, index: int, number: int, hidden: torch.Tensor) -> torch.Tensor:
        """Output of block `index` for `hidden`, the block input of calibration batch `number` (or shaped like it)."""
        block = decoder_blocks(self.model)[index]
        output = block(hidden, **self._block_kwargs[self.shapes[number]][index])
        return output[0] if isinstance(output, tuple) else output

    def advance(self, outputs: list[torch.Tensor]) -> None:
        """Make `outputs` the inputs of the next block."""
        self.hidden = outputs


def flat(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-batch activations (block outputs, MLP inputs) of every calibration batch as one `[tokens, hidden]` float32
    tensor."""
    return torch.cat([output.reshape(-1, output.shape[-1]).float() for output in outputs])


def unflat(tokens: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`tokens` (`[tokens, hidden]`, as `flat` gives them) cut back into tensors of the shapes and dtypes of `like`."""
    sizes = [tensor.numel() // tensor.shape[-1] for tensor in like]
    pieces = tokens.split(sizes)
    return [piece.reshape(tensor.shape).to(tensor.dtype) for piece, tensor in zip(pieces, like, strict=True)]
