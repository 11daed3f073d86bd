"""LightningModule that trains a causal LM's quality back: full continued pretraining or LoRA,
optionally distilled from a frozen copy of the model as it was given (the unpruned teacher).

It knows no pruning. What it does know is that its architecture may change between checkpoints:
each checkpoint stores the Hugging Face config, and loading one whose shapes differ rebuilds the
model from that config before Lightning copies the weights in. Validation NLL and token counts are
torchmetrics `SumMetric`s, so their reduction across ranks is the library's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import SumMetric
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.initialization import no_init_weights

from prune_recover.arch import unwrap
from prune_recover.lm import count_parameters, summed_nll
from prune_recover.training.distributed import is_fsdp, rewrap_ddp, shard_frozen
from prune_recover.training.recovery_settings import DistillSettings, LoraSettings, method_settings

# The teacher runs in the precision the student computes in (a bf16 copy under bf16 autocast: half the memory,
# and no per-step casts of its weights).
TEACHER_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# Config fields that define the shapes a checkpoint's weights need.
ARCHITECTURE_KEYS = ("intermediate_size", "num_hidden_layers", "layer_types", "hidden_size", "vocab_size")


class RecoveryModule(L.LightningModule):
    """Causal-LM training with cross-entropy and optional distillation.

    Args:
        model: The Hugging Face causal LM to train (pruned later by a callback, or not).
        method: `full` (every weight trains), `distill` (every weight trains on the distillation loss; Minitron's
            logit distillation with `distill.alpha=1`), `lora` (peft adapters; base frozen; merged at export), or
            `cpt_then_lora` (full continued pretraining until `lora_from_step`, then LoRA, as in Shortened LLaMA).
        lora: `LoraSettings` fields.
        distill: `DistillSettings` fields; alpha > 0 keeps a frozen copy of `model` as teacher.
        optimizer: Factory `params -> Optimizer` (a Hydra `_partial_` node).
        scheduler: Factory `(optimizer, num_training_steps=...) -> LR scheduler` stepped every optimizer step
            (e.g. transformers' `get_cosine_with_min_lr_schedule_with_warmup` as a `_partial_` node), or None.
        weight_decay_norms_and_biases: Apply weight decay to 1-D parameters too (usually not).
        gradient_checkpointing: Recompute activations in backward to save memory.
        lora_from_step: For `cpt_then_lora`: the optimizer step at which LoRA replaces full training.
        lora_optimizer: Optimizer factory for the LoRA stage of `cpt_then_lora` (None reuses `optimizer`).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        method: str = "full",
        lora: LoraSettings | Mapping | None = None,
        distill: DistillSettings | Mapping | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., object] | None = None,
        weight_decay_norms_and_biases: bool = False,
        gradient_checkpointing: bool = False,
        lora_from_step: int | None = None,
        lora_optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ):
        super().__init__()
        self.lora, self.distill = method_settings(method, lora, distill, lora_from_step)
        self.method = method
        self.lora_from_step = lora_from_step
        self.lora_optimizer_factory = lora_optimizer
        self.lora_active = method == "lora"
        if method in ("lora", "cpt_then_lora"):
            self.lora.check_targets(model)
        self.optimizer_factory = optimizer or partial(torch.optim.AdamW, lr=1e-4)
        self.scheduler_factory = scheduler
        self.weight_decay_norms_and_biases = weight_decay_norms_and_biases
        self.gradient_checkpointing = gradient_checkpointing
        # The teacher lives outside the module tree: not trained, not checkpointed, not wrapped by DDP.
        self._teacher = [copy.deepcopy(model).eval().requires_grad_(False)] if self.distill.alpha > 0 else []
        self.model = self._prepare(model).train()  # loaders hand out eval-mode models; dropout must be live
        self.tokens_seen = 0
        self.tokens_per_batch = 0  # of the latest training batch, on this rank (for `flops_per_batch`)
        self.val_nll = SumMetric().set_dtype(torch.float64)  # summed over batches and, at compute, over ranks
        self.val_tokens = SumMetric().set_dtype(torch.float64)
        self.val_history: list[dict] = []  # {step, tokens_seen, val_loss, val_ppl} after every validation
        self.save_hyperparameters({"method": method, "lora": asdict(self.lora), "distill": asdict(self.distill)})

    def _prepare(self, model: PreTrainedModel) -> nn.Module:
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return self._with_lora(model) if self.lora_active else model

    def _with_lora(self, model: PreTrainedModel) -> nn.Module:
        from peft import get_peft_model

        if self.gradient_checkpointing:
            model.enable_input_require_grads()
        return get_peft_model(model, self.lora.peft_config())

    def on_train_start(self) -> None:
        total = self.trainer.estimated_stepping_batches  # a max_epochs bound, known once the loader is (a stream: inf)
        if self.method == "cpt_then_lora" and not self.lora_active and self.lora_from_step >= total:
            raise ValueError(
                f"training ends after {total} optimizer steps but recovery.module.lora_from_step="
                f"{self.lora_from_step}: the LoRA stage of cpt_then_lora would never start. Raise max_epochs or "
                "max_steps, or lower it"
            )

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.method == "cpt_then_lora" and not self.lora_active and self.trainer.global_step >= self.lora_from_step:
            self._switch_to_lora()

    def _switch_to_lora(self) -> None:
        """Freeze the continued-pretrained weights, add adapters, and start the LoRA stage's optimizer."""
        self.lora_active = True
        self.model = self._with_lora(self.hf_model).train()
        self.trainer.strategy.setup_optimizers(self.trainer)
        rewrap_ddp(self.trainer, self)

    @property
    def hf_model(self) -> PreTrainedModel:
        """The Hugging Face model inside (under the LoRA wrapper, if any)."""
        return unwrap(self.model)

    @property
    def teacher(self) -> PreTrainedModel | None:
        return self._teacher[0] if self._teacher else None

    @property
    def flops_per_batch(self) -> float:
        """FLOPs of this rank's latest batch (6 x params x tokens, + 2 x for a teacher) for ThroughputMonitor."""
        params = count_parameters(self.model)
        teacher = count_parameters(self.teacher) if self.teacher is not None else 0
        return (6 * params + 2 * teacher) * self.tokens_per_batch

    def forward(self, input_ids: torch.Tensor, **kwargs):
        return self.model(input_ids=input_ids, use_cache=False, **kwargs)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            parameter = next(self.model.parameters())
            dtype = TEACHER_DTYPES.get(str(self.trainer.precision), parameter.dtype)
            self.teacher.to(device=parameter.device, dtype=dtype)
            if is_fsdp(self.trainer.strategy) and self.trainer.world_size > 1:
                shard_frozen(self.teacher)  # 1/world of the teacher per GPU, like the student

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        input_ids = batch["input_ids"]
        output = self(input_ids, labels=input_ids)
        loss = output.loss
        if self.teacher is not None:
            kd = self._distillation_loss(output.logits, input_ids)
            self.log("train/ce", loss.detach())
            self.log("train/kd", kd.detach())
            loss = (1 - self.distill.alpha) * loss + self.distill.alpha * kd
        self.tokens_per_batch = input_ids.numel()
        self.tokens_seen += input_ids.numel() * self.trainer.world_size
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/tokens_seen", float(self.tokens_seen))
        self.log("model/params", count_parameters(self.model) / 1e6)  # millions; changes at pruning events
        return loss

    def _distillation_loss(self, student_logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        temperature = self.distill.temperature
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=input_ids, use_cache=False).logits
        student = F.log_softmax(student_logits.float() / temperature, dim=-1)
        teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        kl = F.kl_div(student.flatten(0, -2), teacher.flatten(0, -2), log_target=True, reduction="batchmean")
        return kl * temperature**2

    def on_validation_epoch_start(self) -> None:
        # fresh states in this loop's grad mode: a state left by `trainer.validate` (inference mode)
        # could not be updated in place by the validation inside `fit` (no_grad)
        self.val_nll.reset()
        self.val_tokens.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        nll, tokens = summed_nll(self.model, batch["input_ids"])
        self.val_nll.update(nll)
        self.val_tokens.update(tokens)

    def on_validation_epoch_end(self) -> None:
        if self.val_tokens.update_called:
            mean_nll = self.val_nll.compute() / self.val_tokens.compute()  # token-weighted over every rank
            self.log("val/loss", mean_nll.float())
            self.log("val/ppl", torch.exp(mean_nll).float(), prog_bar=True)
            if not self.trainer.sanity_checking:
                self.val_history.append(
                    {
                        "step": self.global_step,
                        "tokens_seen": self.tokens_seen,
                        "val_loss": float(mean_nll),
                        "val_ppl": float(torch.exp(mean_nll)),
                    }
                )

    def configure_optimizers(self):
        decay, no_decay = [], []
        for param in self.model.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 or self.weight_decay_norms_and_biases else no_decay).append(param)
        lora_stage = self.method == "cpt_then_lora" and self.lora_active
        factory = (self.lora_optimizer_factory or self.optimizer_factory) if lora_stage else self.optimizer_factory
        optimizer = factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.scheduler_factory is None:
            return optimizer
        # each stage of cpt_then_lora gets its own warmup and decay over its own steps
        total = int(self.trainer.estimated_stepping_batches)
        if self.method == "cpt_then_lora":
            total = total - self.lora_from_step if lora_stage else self.lora_from_step
        scheduler = self.scheduler_factory(optimizer, num_training_steps=max(1, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hf_config"] = self.hf_model.config.to_dict()
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["lora_active"] = self.lora_active
        checkpoint["val_history"] = self.val_history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.val_history = list(checkpoint.get("val_history", []))
        saved = checkpoint.get("hf_config")
        current = self.hf_model.config.to_dict()
        if saved and any(saved.get(key) != current.get(key) for key in ARCHITECTURE_KEYS):
            self._rebuild(saved)
        if checkpoint.get("lora_active") and not self.lora_active:  # saved during the LoRA stage
            self.lora_active = True
            self.model = self._with_lora(self.hf_model).train()

    def _rebuild(self, config_dict: dict) -> None:
        """Replace the model by one built from `config_dict` (weights follow from the checkpoint)."""
        old = self.hf_model
        config = type(old.config).from_dict(config_dict)
        parameter = next(old.parameters())
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=parameter.dtype)
        self.model = self._prepare(model.to(parameter.device)).train(old.training)

    def merged_model(self) -> PreTrainedModel:
        """The plain Hugging Face model to export: LoRA adapters merged into the weights (in place)."""
        if self.lora_active:
            self.model = self.model.merge_and_unload()
        return self.hf_model
