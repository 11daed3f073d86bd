"""Settings of the recovery module that are not a factory: LoRA adapters and distillation (`recovery.module`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters (`recovery.module.lora`); defaults follow Shortened LLaMA.

    Attributes:
        r: Rank.
        alpha: Scaling numerator (`lora_alpha`); the update is scaled by alpha / r.
        dropout: Dropout on the adapter input.
        target_modules: Module names to adapt; `all-linear` = every linear projection but the LM head.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            task_type="CAUSAL_LM",
        )


@dataclass(frozen=True)
class DistillSettings:
    """Distillation from the unpruned model (`recovery.module.distill`).

    Attributes:
        alpha: Weight of the KL term; the loss is (1 - alpha) * CE + alpha * T^2 * KL. 0 disables it.
        temperature: Softmax temperature T for both teacher and student logits.
    """

    alpha: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"recovery distill.alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"recovery distill.temperature must be positive, got {self.temperature}")
