"""What a decoder block adds to its residual stream from its MLP (`MlpPath`), and a recorder of it on the
calibration tokens (`MlpIoRecorder`): the inputs, outputs and residual stream the reconstruction (`reconstruct.py`)
fits on."""

from __future__ import annotations

import torch
from torch import nn

from prune_recover.pruning.layerwise import flat


class MlpPath(nn.Module):
    """What a decoder block adds to its residual stream from its MLP's input: the MLP, then the post-feedforward norm
    (Gemma 2/3, OLMo-2) and the residual multiplier (Granite) where the block has them."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.mlp = block.mlp
        self.post_norm = getattr(block, "post_feedforward_layernorm", None)
        self.scale = getattr(block, "residual_multiplier", 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_mlp(self.mlp(x))

    def after_mlp(self, output: torch.Tensor) -> torch.Tensor:
        """The path's output from the MLP's."""
        if self.post_norm is not None:
            output = self.post_norm(output)
        return output * self.scale if self.scale != 1.0 else output


class MlpIoRecorder:
    """Context manager that records, for every run of `block` while it is entered (it can be entered again), what
    the reconstruction fits on: the MLP's inputs, the MLP path's outputs and the residual stream they are added to
    (the block's output less the path's). Entered around the statistics pass, it saves running the block again.

    Example:
        >>> with ActivationRecorder(model, layers=[index]) as recorder, MlpIoRecorder(block) as io:
        ...     runner.run_block(index)
        >>> x, path_output, residual = io.tensors()
    """

    def __init__(self, block: nn.Module):
        self.block, self.path = block, MlpPath(block)
        self.inputs: list[torch.Tensor] = []
        self.path_outputs: list[torch.Tensor] = []
        self.block_outputs: list[torch.Tensor] = []
        self._handles: list = []

    def __enter__(self) -> MlpIoRecorder:
        def record_path_output(module, args, output):
            self.path_outputs.append(self.path.after_mlp(output))

        def record_block_output(module, args, output):
            self.block_outputs.append(output[0] if isinstance(output, tuple) else output)

        self._handles += [
            self.path.mlp.register_forward_pre_hook(lambda module, args: self.inputs.append(args[0])),
            self.path.mlp.register_forward_hook(record_path_output),
            self.block.register_forward_hook(record_block_output),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The MLP's inputs, the MLP path's outputs and the residual stream, each `[tokens, hidden]` (float32)."""
        pairs = zip(self.block_outputs, self.path_outputs, strict=True)
        return flat(self.inputs), flat(self.path_outputs), flat([block - path for block, path in pairs])
