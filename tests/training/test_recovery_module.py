import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from prune_recover.pruning.surgery import prune_mlp_neurons
from prune_recover.tiny_models import tiny_random
from prune_recover.training.recovery_module import RecoveryModule
from prune_recover.training.recovery_settings import DistillSettings
from tests.conftest import tiny_data, tiny_trainer


def adam(lr=3e-3):
    return partial(torch.optim.AdamW, lr=lr)


def test_full_recovery_lowers_the_loss_with_a_real_trainer(wikitext_dir, tmp_path):
    data = tiny_data(wikitext_dir)
    model, _ = tiny_random("llama")
    module = RecoveryModule(
        model,
        optimizer=adam(),
        scheduler=partial(get_cosine_with_min_lr_schedule_with_warmup, num_warmup_steps=2, min_lr_rate=0.1),
    )
    trainer = tiny_trainer(tmp_path, max_steps=30, val_check_interval=30)
    before = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    assert after < before - 0.5
    assert module.tokens_seen == 30 * 4 * 64
    assert math.isclose(
        trainer.validate(module, datamodule=data, verbose=False)[0]["val/ppl"], math.exp(after), rel_tol=1e-4
    )
    assert all(p.requires_grad for p in module.model.parameters())


def test_lora_trains_only_adapters_and_merges(wikitext_dir, tmp_path):
    data = tiny_data(wikitext_dir)
    model, _ = tiny_random("llama")
    base_weight = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    module = RecoveryModule(model, method="lora", optimizer=adam())
    trainable = {name for name, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert {name.split(".")[-4] for name in trainable} >= {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "down_proj",
    }
    trainer = tiny_trainer(tmp_path, max_steps=5)
    trainer.fit(module, datamodule=data)
    tokens = next(iter(data.val_dataloader()))["input_ids"]
    module.eval()  # LoRA dropout off
    with torch.no_grad():
        adapted = module(tokens).logits
    merged = module.merged_model()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert not torch.equal(merged.model.layers[0].mlp.up_proj.weight, base_weight)
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens).logits, adapted, rtol=1e-4, atol=1e-4)


def test_distillation_loss_is_temperature_scaled_kl_to_a_frozen_teacher():
    model, _ = tiny_random("llama")
    module = RecoveryModule(model, distill={"alpha": 0.5, "temperature": 2.0})
    teacher = module.teacher
    assert teacher is not None and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(not name.startswith("_teacher") for name, _ in module.named_parameters())
    tokens = torch.randint(3, 259, (2, 16))
    logits = module(tokens).logits
    assert module._distillation_loss(logits, tokens).abs() < 1e-6  # identical models
    with torch.no_grad():
        module.model.lm_head.weight.mul_(1.5)
    logits = module(tokens).logits
    kd = module._distillation_loss(logits, tokens)
    t = F.softmax(teacher(tokens).logits / 2, dim=-1)
    expected = (t * (t.log() - F.log_softmax(logits / 2, dim=-1))).sum(-1).mean() * 4
    torch.testing.assert_close(kd, expected, rtol=1e-4, atol=1e-6)
    kd.backward()
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "qlora"}, "recovery method must be one of"),
        ({"distill": {"alpha": 1.5}}, r"distill.alpha must be in \[0, 1\]"),
        ({"distill": {"alpha": 0.5, "temperature": 0}}, "temperature must be positive"),
    ],
)
def test_bad_recovery_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecoveryModule(tiny_random("llama")[0], **kwargs)


class LearningRates(__import__("lightning").Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_the_scheduler_spans_the_run_warmup_then_cosine_to_the_floor(wikitext_dir, tmp_path):
    schedule = partial(get_cosine_with_min_lr_schedule_with_warmup, num_warmup_steps=2, min_lr_rate=0.1)
    module = RecoveryModule(tiny_random("llama")[0], optimizer=adam(lr=1.0), scheduler=schedule)
    seen = LearningRates()
    tiny_trainer(tmp_path, callbacks=[seen], max_steps=12).fit(module, datamodule=tiny_data(wikitext_dir))
    assert seen.lrs[:3] == [0.0, 0.5, 1.0]  # num_training_steps is the run's 12 steps
    assert seen.lrs[2:] == sorted(seen.lrs[2:], reverse=True) and math.isclose(
        seen.lrs[-1], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 10))
    )


def test_checkpoint_of_a_pruned_model_rebuilds_the_shapes_on_load(tmp_path):
    model, _ = tiny_random("gemma2", num_hidden_layers=4)
    module = RecoveryModule(model)
    from prune_recover.pruning.surgery import remove_blocks

    remove_blocks(module.model, [1])
    prune_mlp_neurons(module.model, {i: torch.arange(0, 128, 2) for i in range(3)})
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)

    fresh = RecoveryModule(tiny_random("gemma2", num_hidden_layers=4)[0])
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    assert fresh.hf_model.config.layer_types == module.hf_model.config.layer_types
    assert [b.self_attn.sliding_window for b in fresh.hf_model.model.layers] == [
        b.self_attn.sliding_window for b in module.hf_model.model.layers
    ]
    tokens = torch.randint(3, 259, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens).logits, module(tokens).logits)
    assert DistillSettings().alpha == 0


class StageProbe(__import__("lightning").Callback):
    def __init__(self):
        self.trainable = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        optimized = sum(p.numel() for group in trainer.optimizers[0].param_groups for p in group["params"])
        self.trainable[trainer.global_step] = (pl_module.lora_active, optimized)


def test_cpt_then_lora_switches_stage_and_resumes_into_the_lora_stage(wikitext_dir, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = tiny_data(wikitext_dir)
    module = RecoveryModule(tiny_random("llama")[0], method="cpt_then_lora", lora_from_step=3, optimizer=adam())
    probe = StageProbe()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = tiny_trainer(tmp_path, callbacks=[probe, checkpoint], max_steps=5, enable_checkpointing=True)
    trainer.fit(module, datamodule=data)
    full_size = sum(p.numel() for p in tiny_random("llama")[0].parameters())
    assert probe.trainable[1] == (False, full_size)
    lora_stage = probe.trainable[5]
    assert lora_stage[0] and 0 < lora_stage[1] < full_size // 5
    assert len(module.val_history) >= 1 and module.val_history[0]["val_ppl"] > 1

    resumed = RecoveryModule(tiny_random("llama")[0], method="cpt_then_lora", lora_from_step=3, optimizer=adam())
    again = StageProbe()
    tiny_trainer(tmp_path, callbacks=[again], max_steps=7).fit(
        resumed, datamodule=data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert resumed.lora_active and again.trainable[7] == lora_stage
    assert resumed.val_history[: len(module.val_history)] == module.val_history
    merged = resumed.merged_model()
    assert not any("lora_" in name for name, _ in merged.named_parameters())


def test_cpt_then_lora_needs_a_switch_step():
    with pytest.raises(ValueError, match="lora_from_step >= 1"):
        RecoveryModule(tiny_random("llama")[0], method="cpt_then_lora")


@pytest.mark.parametrize(
    "lora, message",
    [
        ({"target_modules": ["q_projj"]}, r"target_modules=\['q_projj'\] names no module of the model"),
        ({"r": 0}, "r a positive integer"),
        ({"dropout": 2.0}, r"dropout in \[0, 1\)"),
    ],
)
def test_cpt_then_lora_checks_its_lora_settings_at_the_start_not_at_the_switch(lora, message):
    with pytest.raises(ValueError, match=message):
        RecoveryModule(tiny_random("llama")[0], method="cpt_then_lora", lora_from_step=3, lora=lora)
