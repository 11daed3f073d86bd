"""Where each model family keeps its decoder blocks and gated-MLP projections.

Every other module asks this one instead of spelling attribute paths, so adding a family is one
entry in `FAMILIES`. All supported families compute ``down(act(gate(x)) * up(x))``; Phi-3 fuses
gate and up into one ``gate_up_proj`` whose first half of output rows is the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


@dataclass(frozen=True)
class Family:
    """How one model family lays out its decoder.

    Attributes:
        name: Human-readable family name used in error messages.
        fused_gate_up: True when gate and up live in one ``gate_up_proj`` (gate rows first).
    """

    name: str
    fused_gate_up: bool = False


# Keyed by `config.model_type`. Each entry is tested on a tiny random config in tests/test_arch.py.
FAMILIES: dict[str, Family] = {
    "llama": Family("Llama"),
    "mistral": Family("Mistral"),
    "qwen2": Family("Qwen2"),
    "qwen3": Family("Qwen3"),
    "gemma": Family("Gemma"),
    "gemma2": Family("Gemma2"),
    "gemma3_text": Family("Gemma3 (text)"),
    "granite": Family("Granite"),
    "olmo2": Family("OLMo-2"),
    "phi3": Family("Phi-3", fused_gate_up=True),
}


class UnsupportedModelError(ValueError):
    """Raised for a model whose family has no gated MLP adapter."""


def supported_families() -> str:
    """One line naming every supported family and its `model_type`, for error messages."""
    return ", ".join(f"{family.name} ({model_type})" for model_type, family in FAMILIES.items())


def family_of(config: PretrainedConfig) -> Family:
    """Return the adapter for a config, or raise naming the supported families."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UnsupportedModelError(
            f"model_type '{model_type}' has no gated (gate/up/down) MLP adapter, so it cannot be width-pruned. "
            f"Supported families: {supported_families()}."
        )
    return FAMILIES[model_type]


def unwrap(model: nn.Module) -> PreTrainedModel:
    """Strip DDP/FSDP/Lightning/peft wrappers and return the Hugging Face causal LM inside."""
    while not isinstance(model, PreTrainedModel):
        if hasattr(model, "get_base_model"):  # peft PeftModel
            model = model.get_base_model()
        elif hasattr(model, "module"):  # DistributedDataParallel and friends
            model = model.module
        else:
            raise TypeError(f"{type(model).__name__} does not wrap a Hugging Face PreTrainedModel")
    return model


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of blocks (``model.model.layers`` for every supported family)."""
    base = unwrap(model)
    family_of(base.config)
    return base.model.layers


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied after the last block (``model.model.norm`` for every supported family)."""
    return unwrap(model).model.norm


def set_decoder_blocks(model: nn.Module, blocks: nn.ModuleList) -> None:
    """Replace the decoder's list of blocks (used by depth pruning)."""
    unwrap(model).model.layers = blocks


def base_linear(module: nn.Module) -> nn.Linear:
    """The plain ``nn.Linear`` under a peft LoRA wrapper, or the module itself."""
    return getattr(module, "base_layer", module)


def effective_weight(module: nn.Module) -> torch.Tensor:
    """Weight the layer applies, LoRA deltas of active, unmerged adapters included.

    Weight-based importance scores must see what the model computes, not only the frozen base.
    """
    weight = base_linear(module).weight
    if hasattr(module, "lora_A") and not getattr(module, "merged", False) and not module.disable_adapters:
        weight = weight.detach().clone()
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                weight += module.get_delta_weight(adapter).to(weight.dtype)
    return weight


@dataclass
class GatedMLP:
    """A view of one gated MLP that hides the fused/unfused layout.

    Attributes:
        module: The MLP module (``block.mlp``).
        fused: True for Phi-3 style ``gate_up_proj``.
    """

    module: nn.Module
    fused: bool

    @property
    def gate_proj(self) -> nn.Module:
        return self.module.gate_up_proj if self.fused else self.module.gate_proj

    @property
    def up_proj(self) -> nn.Module:
        return self.module.gate_up_proj if self.fused else self.module.up_proj

    @property
    def down_proj(self) -> nn.Module:
        return self.module.down_proj

    @property
    def intermediate_size(self) -> int:
        return base_linear(self.down_proj).in_features

    def gate_weight(self) -> torch.Tensor:
        """Gate rows, shape ``[intermediate, hidden]``."""
        weight = effective_weight(self.gate_proj)
        return weight[: self.intermediate_size] if self.fused else weight

    def up_weight(self) -> torch.Tensor:
        """Up rows, shape ``[intermediate, hidden]``."""
        weight = effective_weight(self.up_proj)
        return weight[self.intermediate_size :] if self.fused else weight

    def down_weight(self) -> torch.Tensor:
        """Down columns, shape ``[hidden, intermediate]``."""
        return effective_weight(self.down_proj)


def gated_mlp(model: nn.Module, block_index: int) -> GatedMLP:
    """The gated MLP of decoder block ``block_index``."""
    family = family_of(unwrap(model).config)
    return GatedMLP(decoder_blocks(model)[block_index].mlp, family.fused_gate_up)


def gated_mlps(model: nn.Module) -> list[GatedMLP]:
    """The gated MLPs of every decoder block, in order."""
    family = family_of(unwrap(model).config)
    return [GatedMLP(block.mlp, family.fused_gate_up) for block in decoder_blocks(model)]
