"""The whole model out of a sharded one, for evaluation and export: every rank gathers, rank zero keeps it.

Under FSDP each rank holds a shard of every weight, so the model to evaluate and export has to be gathered
first, and gathering is a collective: every rank must call it, or the job hangs. `gather_full_state` is
torch's `get_model_state_dict(..., full_state_dict=True, cpu_offload=True)` (FSDP1 and FSDP2 alike): rank
zero receives the full state on the CPU, the other ranks an empty dict. `unsharded_copy` builds a plain copy
of the model from its config on rank zero, loads that state, and merges LoRA adapters if there are any.
`exported_model` does the right thing for the strategy a trainer used.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.initialization import no_init_weights

from prune_recover.training.distributed import is_fsdp

# The attribute under which RecoveryModule holds the trained model (the FSDP root is the LightningModule).
MODEL_PREFIX = "model."


def gather_full_state(sharded: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of `sharded` on global rank zero (CPU tensors), `{}` elsewhere. Call it on every rank."""
    return get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A plain Hugging Face model shaped like `model` (a HF model, or a peft one) holding `state`, LoRA merged.

    `model` only provides the structure (its config, and its peft config when it has adapters); its own
    weights may be shards or empty.
    """
    peft_config = getattr(model, "peft_config", None)
    hf_model = model.get_base_model() if peft_config else model
    dtype = next(iter(state.values())).dtype
    with no_init_weights():  # every weight comes from `state`
        copy = AutoModelForCausalLM.from_config(hf_model.config, dtype=dtype)
    if peft_config:
        from peft import get_peft_model

        copy = get_peft_model(copy, peft_config["default"])
    missing, unexpected = copy.load_state_dict(state, strict=False)
    missing = [key for key in missing if key not in _tied_keys(copy)]
    if missing or unexpected:
        raise RuntimeError(
            f"the gathered state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    copy.tie_weights()
    return copy.merge_and_unload() if peft_config else copy


def exported_model(trainer: L.Trainer, module) -> PreTrainedModel | None:
    """The model to evaluate and export on global rank zero (None on other ranks), LoRA merged.

    Under FSDP every rank takes part in the gather; otherwise rank zero's model already is the whole model.
    """
    if not is_fsdp(trainer.strategy):
        return module.merged_model() if trainer.is_global_zero else None
    state = gather_full_state(trainer.strategy.model)
    if not trainer.is_global_zero:
        return None
    state = {key.removeprefix(MODEL_PREFIX): value for key, value in state.items() if key.startswith(MODEL_PREFIX)}
    return unsharded_copy(module.model, state)


def _tied_keys(model: nn.Module) -> set[str]:
    """Keys that `tie_weights` fills (an output embedding tied to the input one)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return set(tied) if isinstance(tied, dict) else set()
