"""Faults: SIGTERM mid-training, a NaN loss, and unsupported FSDP pruning (SIGKILL and SLURM's SIGUSR1 followed by a
resume: tests/test_resume.py, which also proves the resumed run bit-identical)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from prune_recover.pruning.pruner import Pruner
from prune_recover.tiny_models import tiny_random
from prune_recover.training.distributed import decoder_block_class, decoder_block_fsdp
from prune_recover.training.guards import FiniteLossGuard, NonFiniteLossError
from prune_recover.training.pruning_callback import PruningCallback
from prune_recover.training.recovery_module import RecoveryModule
from tests.conftest import tiny_data, tiny_trainer
from tests.test_train_cli import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
# Long enough that a run signalled right after its first checkpoint (step 5) is still training (the kill lands
# within a few steps of it), short enough that the resumed run finishes quickly.
STEPS = 120


def slow_run_overrides(wikitext_dir, out) -> list[str]:
    """A tiny run long enough to be interrupted: checkpoints every 5 steps, pruning at step 0."""
    return tiny_overrides(wikitext_dir, out) + [
        "logger=csv",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=1000",
        "data.block_size=256",
        "data.batch_size=8",
        "callbacks.checkpoint.every_n_train_steps=5",
    ]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"run ended ({process.returncode}) before {path} appeared:\n{process.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.2)


def train_process(overrides, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_checkpoints_at_a_step_boundary_and_exits_143_without_exporting(wikitext_dir, tmp_path):
    out = tmp_path / "run"
    first = train_process(slow_run_overrides(wikitext_dir, out))
    wait_for(out / "checkpoints" / "last.ckpt", first)
    first.send_signal(signal.SIGTERM)  # SLURM's cancel, pre-emption and time limit
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 128 + signal.SIGTERM, stderr[-3000:]  # a scheduler never sees success
    assert "stopped by SIGTERM after step" in stderr and "resume with ckpt_path=last" in stderr
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 0 < saved["global_step"] < STEPS and saved["hf_config"]["intermediate_size"] == 77
    assert not (out / "final").exists() and not (out / "pruning_report.json").exists()


class Diverge(L.Callback):
    """Stands in for a diverging run: poisons one weight at `step`."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.hf_model.model.norm.weight.fill_(float("nan"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(wikitext_dir, tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1)
    module = RecoveryModule(tiny_random("llama")[0])
    trainer = tiny_trainer(
        tmp_path, callbacks=[FiniteLossGuard(), Diverge(3), checkpoint], max_steps=10, enable_checkpointing=True
    )
    message = r"training loss is not finite at step 3 \(this rank's: nan\).*Last good checkpoint: .*last.ckpt"
    with pytest.raises(NonFiniteLossError, match=message):
        trainer.fit(module, datamodule=tiny_data(wikitext_dir))
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed in the middle of the write")


def test_a_checkpoint_write_that_dies_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    from prune_recover.training.atomic_checkpoint import AtomicCheckpointIO

    path = tmp_path / "other_fs" / "last.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"global_step": 4, "weights": torch.ones(1000)}, path)
    with pytest.raises(RuntimeError, match="middle of the write"):
        writer.save_checkpoint({"global_step": 8, "weights": torch.zeros(1000), "late": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_fsdp_refuses_pruning_after_step_zero_and_names_the_alternatives():
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=20, logger=False, enable_progress_bar=False)
    trainer.strategy._accelerator = None
    fsdp = decoder_block_fsdp("tiny-random")
    trainer._accelerator_connector.strategy = fsdp  # FSDP needs a GPU to run; the refusal happens before that
    pruning = PruningCallback(Pruner(ratio=0.5), {"kind": "cubic", "end_step": 9, "num_events": 3})
    module = RecoveryModule(tiny_random("llama")[0])
    with pytest.raises(ValueError, match="not supported under FSDP.*trainer=ddp.*recovery=none"):
        pruning.setup(trainer, module, "fit")


@pytest.mark.parametrize(
    "family, block", [("llama", "LlamaDecoderLayer"), ("qwen2", "Qwen2DecoderLayer"), ("phi3", "Phi3DecoderLayer")]
)
def test_fsdp_wraps_and_checkpoints_the_families_own_decoder_block(family, block):
    assert decoder_block_class(tiny_random(family)[0].config).__name__ == block
