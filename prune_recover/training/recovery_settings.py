"""Settings of the recovery module that are not a factory: LoRA adapters and distillation (`recovery.module`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

METHODS = ("full", "distill", "lora", "cpt_then_lora")


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

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and self.r > 0) or not self.alpha > 0 or not 0 <= self.dropout < 1:
            raise ValueError(
                "recovery.module.lora needs r a positive integer, alpha > 0 and dropout in [0, 1), "
                f"got r={self.r!r}, alpha={self.alpha!r}, dropout={self.dropout!r}"
            )

    def check_targets(self, model) -> None:
        """Raise now if `target_modules` names no module of `model` (peft would raise only when the adapters are
        added: for `cpt_then_lora`, at `lora_from_step`, hours into the run)."""
        from peft.tuners.tuners_utils import check_target_module_exists

        if self.target_modules == "all-linear":
            return
        config = self.peft_config()
        if not any(check_target_module_exists(config, name) for name, _ in model.named_modules()):
            raise ValueError(
                f"recovery.module.lora.target_modules={self.target_modules!r} names no module of the model "
                "(e.g. q_proj, v_proj, gate_proj, or all-linear)"
            )

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


def method_settings(
    method: str,
    lora: LoraSettings | Mapping | None,
    distill: DistillSettings | Mapping | None,
    lora_from_step: int | None,
) -> tuple[LoraSettings, DistillSettings]:
    """The LoRA and distillation settings of a recovery method, refused when they cannot serve it."""
    if method not in METHODS:
        raise ValueError(f"recovery method must be one of {METHODS}, got '{method}'")
    if method == "cpt_then_lora" and (lora_from_step is None or lora_from_step < 1):
        raise ValueError(f"cpt_then_lora needs recovery.module.lora_from_step >= 1, got {lora_from_step}")
    distill = distill if isinstance(distill, DistillSettings) else DistillSettings(**(distill or {}))
    if method == "distill" and distill.alpha == 0:
        raise ValueError("recovery method 'distill' needs recovery.module.distill.alpha > 0 (1 = logits only)")
    return lora if isinstance(lora, LoraSettings) else LoraSettings(**(lora or {})), distill
