import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM

from prune_recover.arch import decoder_blocks, gated_mlps
from prune_recover.evaluation.evaluator import Evaluator
from prune_recover.models import save_pretrained_atomic
from prune_recover.pruning.calibration import NeuronStats
from prune_recover.pruning.pruner import Pruner
from prune_recover.tiny_models import tiny_random
from prune_recover.training.pruning_callback import PruningCallback
from prune_recover.training.recovery_module import RecoveryModule
from tests.conftest import tiny_data, tiny_trainer

CUBIC = {"kind": "cubic", "start_step": 2, "end_step": 6, "num_events": 3}


class MomentProbe(L.Callback):
    """Records layer 0's gate Adam moments before (placed first) or after (placed last) each batch start."""

    def __init__(self):
        self.snapshots = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        weight = gated_mlps(pl_module.model)[0].gate_proj.weight
        state = trainer.optimizers[0].state.get(weight, {})
        if "exp_avg" in state:
            self.snapshots[trainer.global_step] = (state["exp_avg"].clone(), state["exp_avg_sq"].clone())


class KeptProbe(L.Callback):
    def __init__(self, pruning):
        self.pruning, self.kept = pruning, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        event = self.pruning.last_event
        if event is not None and self.pruning.events[-1]["step"] == trainer.global_step:
            self.kept[trainer.global_step] = event.kept[0].clone()


def test_cubic_schedule_reaches_the_target_and_slices_adam_moments(wikitext_dir, tmp_path):
    model, _ = tiny_random("llama")
    pruning = PruningCallback(Pruner(ratio=0.5), CUBIC)
    before, after, kept = MomentProbe(), MomentProbe(), KeptProbe(pruning)
    module = RecoveryModule(model)
    trainer = tiny_trainer(tmp_path, callbacks=[before, pruning, kept, after], max_steps=9)
    trainer.fit(module, datamodule=tiny_data(wikitext_dir))

    assert [e["step"] for e in pruning.events] == [2, 4, 6]
    assert [e["intermediate_size"] for e in pruning.events] == [83, 66, 64]
    assert module.hf_model.config.intermediate_size == 64
    assert all(m.intermediate_size == 64 for m in gated_mlps(module.model))
    for step in (4, 6):  # events after the optimizer has state
        exp_avg, exp_avg_sq = before.snapshots[step]
        new_avg, new_avg_sq = after.snapshots[step]
        torch.testing.assert_close(new_avg, exp_avg[kept.kept[step]], rtol=0, atol=0)
        torch.testing.assert_close(new_avg_sq, exp_avg_sq[kept.kept[step]], rtol=0, atol=0)
    assert trainer.global_step == 9


class CrashAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class ArchitectureProbe(L.Callback):
    def on_train_start(self, trainer, pl_module):
        config = pl_module.hf_model.config
        self.seen = (config.intermediate_size, config.num_hidden_layers, list(config.layer_types))


def pruning_trainer(tmp_path, pruning, *extra, max_steps=9):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1)
    return tiny_trainer(
        tmp_path, callbacks=[pruning, checkpoint, *extra], max_steps=max_steps, enable_checkpointing=True
    )


def test_crash_after_the_first_event_resumes_with_pruned_shapes_and_finishes_the_schedule(wikitext_dir, tmp_path):
    data = tiny_data(wikitext_dir)
    depth = {"num_blocks": 2, "criterion": "angular"}
    first = PruningCallback(Pruner(ratio=0.5, depth=depth), CUBIC)
    qwen2 = {"num_hidden_layers": 6, "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 3}
    module = RecoveryModule(tiny_random("qwen2", **qwen2)[0])
    with pytest.raises(RuntimeError, match="simulated crash"):
        pruning_trainer(tmp_path, first, CrashAt(3)).fit(module, datamodule=data)
    assert [e["step"] for e in first.events] == [2]
    crashed_shape = (module.hf_model.config.intermediate_size, module.hf_model.config.num_hidden_layers)
    assert crashed_shape == (83, 5)
    layer_types = module.hf_model.config.layer_types

    second = PruningCallback(Pruner(ratio=0.5, depth=depth), CUBIC)
    resumed = RecoveryModule(tiny_random("qwen2", **qwen2)[0])
    at_start = ArchitectureProbe()
    trainer = pruning_trainer(tmp_path, second, at_start)
    trainer.fit(resumed, datamodule=data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))

    assert [e["step"] for e in second.events] == [2, 4, 6]
    assert second.events[0] == first.events[0]
    assert [e["intermediate_size"] for e in second.events] == [83, 66, 64]
    assert resumed.hf_model.config.intermediate_size == 64
    assert len(decoder_blocks(resumed.model)) == resumed.hf_model.config.num_hidden_layers == 4
    assert at_start.seen == (83, 5, layer_types) and "sliding_attention" in layer_types
    assert trainer.global_step == 9 and resumed.tokens_seen == 9 * 4 * 64


def test_lora_adapters_follow_a_mid_training_event_and_the_merged_export_reloads(wikitext_dir, tmp_path):
    data = tiny_data(wikitext_dir)
    pruning = PruningCallback(Pruner(importance="wanda", ratio=0.25), {"kind": "oneshot", "start_step": 3})
    module = RecoveryModule(tiny_random("llama")[0], method="lora")
    tiny_trainer(tmp_path, callbacks=[pruning], max_steps=6).fit(module, datamodule=data)

    down = gated_mlps(module.model)[0].down_proj
    assert down.lora_A["default"].weight.shape == (8, 96) and down.base_layer.weight.shape == (64, 96)
    assert gated_mlps(module.model)[0].gate_proj.lora_B["default"].weight.shape == (96, 8)
    assert module.model.base_model.model.model.layers[0].mlp.gate_proj.lora_B["default"].weight.abs().sum() > 0
    module.eval()
    merged = module.merged_model()
    tokens = next(iter(data.val_dataloader()))["input_ids"]
    save_pretrained_atomic(merged, data.tokenizer, tmp_path / "final")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).logits, merged(tokens).logits)
    assert reloaded.config.intermediate_size == 96


def test_training_statistics_replace_the_calibration_pass(wikitext_dir, tmp_path, monkeypatch):
    data = tiny_data(wikitext_dir)
    calls = []
    original = data.calibration_batches
    monkeypatch.setattr(data, "calibration_batches", lambda: calls.append(1) or original())
    pruning = PruningCallback(
        Pruner(ratio=0.5), {"kind": "linear", "start_step": 0, "end_step": 4, "num_events": 2}, stats_source="training"
    )
    module = RecoveryModule(tiny_random("llama")[0])
    tiny_trainer(tmp_path, callbacks=[pruning], max_steps=5).fit(module, datamodule=data)
    assert [e["step"] for e in pruning.events] == [0, 4]
    assert len(calls) == 1  # only the step-0 event, before any training batch, needed calibration
    assert module.hf_model.config.intermediate_size == 64


TRAINING_STATS = {"kind": "linear", "start_step": 0, "end_step": 6, "num_events": 2}


def test_training_statistics_leave_validation_batches_out(wikitext_dir, tmp_path):
    data = tiny_data(wikitext_dir)
    pruning = PruningCallback(Pruner(ratio=0.5), TRAINING_STATS, stats_source="training")
    module = RecoveryModule(tiny_random("llama")[0])
    tiny_trainer(tmp_path, callbacks=[pruning], max_steps=7, val_check_interval=2).fit(module, datamodule=data)
    # steps 0..5 trained between the events; the 3 validations in between (2 batches each) are not statistics
    assert pruning.events[1]["statistics_tokens"] == 6 * data.batch_size * data.block_size


class StopAfter(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trainer.should_stop = trainer.global_step >= self.step


def test_training_statistics_survive_a_resume(wikitext_dir, tmp_path):
    def run(ckpt_path=None, seed=0, stop=None):
        torch.manual_seed(seed)
        pruning = PruningCallback(Pruner(ratio=0.5), TRAINING_STATS, stats_source="training")
        module = RecoveryModule(tiny_random("llama")[0])
        saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
        callbacks = [pruning, saving, *([StopAfter(stop)] if stop else [])]
        trainer = tiny_trainer(tmp_path, callbacks=callbacks, max_steps=7, enable_checkpointing=True)
        trainer.fit(module, datamodule=tiny_data(wikitext_dir), ckpt_path=ckpt_path)
        return pruning

    interrupted = run(stop=4)
    assert len(interrupted.events) == 1  # stopped between the two events, statistics half gathered
    resumed = run(ckpt_path=str(next((tmp_path / "ckpt").glob("*step=3.ckpt"))), seed=1)
    uninterrupted = run()
    assert resumed.events[1]["statistics_tokens"] == uninterrupted.events[1]["statistics_tokens"] > 0
    assert torch.equal(resumed.last_event.kept[0], uninterrupted.last_event.kept[0])


def test_event_logs_perplexity_and_parameters(wikitext_dir, tmp_path):
    data = tiny_data(wikitext_dir)
    evaluator = Evaluator({"test": data.token_ids("test")}, seq_lens=[64], max_windows=2)
    pruning = PruningCallback(Pruner(ratio=0.5), evaluator=evaluator)
    module = RecoveryModule(tiny_random("llama")[0])
    trainer = tiny_trainer(tmp_path, callbacks=[pruning], max_steps=2)
    trainer.fit(module, datamodule=data)
    event = pruning.events[0]
    assert event["ppl_after"] > 1 and event["params"] == 181184 - 4 * 64 * 3 * 64
    assert pruning.base["params"] == 181184 and pruning.base["ppl"] > 1
    assert trainer.callback_metrics["prune/params"] == pytest.approx(event["params"] / 1e6)
    assert trainer.callback_metrics["model/params"] == pytest.approx(event["params"] / 1e6)


def test_schedule_beyond_max_steps_is_rejected(wikitext_dir, tmp_path):
    pruning = PruningCallback(Pruner(ratio=0.5), {"kind": "oneshot", "start_step": 10})
    with pytest.raises(ValueError, match="last pruning event is at step 10 but trainer.max_steps is 6"):
        tiny_trainer(tmp_path, callbacks=[pruning]).fit(
            RecoveryModule(tiny_random("llama")[0]), datamodule=tiny_data(wikitext_dir)
        )
    with pytest.raises(ValueError, match="stats_source must be one of"):
        PruningCallback(Pruner(ratio=0.5), stats_source="gradients")


class AutocastProbe(L.Callback):
    """Records, for every no-grad forward pass of block 0 (the calibration passes: validation is off), whether
    bf16 autocast was on."""

    def __init__(self):
        self.calibration_autocast = []

    def on_fit_start(self, trainer, pl_module):
        def record(module, args):
            if not torch.is_grad_enabled():
                self.calibration_autocast.append(torch.is_autocast_enabled("cpu"))

        decoder_blocks(pl_module.model)[0].register_forward_pre_hook(record)


def test_calibration_runs_in_the_trainers_precision_with_float32_statistics(wikitext_dir, tmp_path):
    probe = AutocastProbe()
    pruning = PruningCallback(Pruner(ratio=0.5), {"kind": "oneshot", "start_step": 1})
    trainer = tiny_trainer(
        tmp_path, callbacks=[probe, pruning], max_steps=2, precision="bf16-mixed", limit_val_batches=0
    )
    trainer.fit(RecoveryModule(tiny_random("llama")[0]), datamodule=tiny_data(wikitext_dir))
    assert probe.calibration_autocast and all(probe.calibration_autocast)
    assert pruning.events[0]["intermediate_size"] == 64


def test_statistics_under_autocast_are_the_float32_ones():
    torch.manual_seed(0)
    x, target = torch.randn(64, 16), torch.randn(64, 16)
    plain, autocast = (NeuronStats.zeros(16, torch.device("cpu"), gram=True, cross=True) for _ in range(2))
    plain.add(x, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast.add(x, target)
    assert torch.equal(plain.gram, autocast.gram) and torch.equal(plain.cross, autocast.cross)
