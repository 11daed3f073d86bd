"""Where a run stops: a signal stops at an optimizer step (not between the micro-batches of an accumulated step)
and resumes exactly; under DDP a signal or a bad loss on one rank stops every rank the same way."""

import json
import os
import signal
import subprocess
import sys

import lightning as L
import torch

from prune_recover.tiny_models import tiny_random
from prune_recover.training.recovery_module import RecoveryModule
from prune_recover.training.signals import GracefulStop
from tests.conftest import REPO, tiny_data, tiny_trainer


class SignalAt(L.Callback):
    """Sends this process `signum` before the `at`-th micro-batch (0-based, counted over the whole fit)."""

    def __init__(self, at: int, signum=signal.SIGTERM):
        self.at, self.signum = at, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.fit_loop.total_batch_idx == self.at:
            os.kill(os.getpid(), self.signum)


def fit(root, wikitext_dir, callbacks=(), ckpt_path=None) -> RecoveryModule:
    module = RecoveryModule(tiny_random("llama")[0])
    trainer = tiny_trainer(root, callbacks=[GracefulStop(), *callbacks], max_steps=4, accumulate_grad_batches=4)
    trainer.fit(module, datamodule=tiny_data(wikitext_dir, batch_size=2), ckpt_path=ckpt_path)
    return module


def test_a_signal_inside_an_accumulated_step_stops_after_it_and_the_resume_is_exact(wikitext_dir, tmp_path):
    reference = fit(tmp_path / "reference", wikitext_dir)
    stop = GracefulStop()
    module = RecoveryModule(tiny_random("llama")[0])
    trainer = tiny_trainer(tmp_path / "run", callbacks=[stop, SignalAt(5)], max_steps=4, accumulate_grad_batches=4)
    trainer.fit(module, datamodule=tiny_data(wikitext_dir, batch_size=2))
    assert trainer.global_step == 2 and trainer.fit_loop.total_batch_idx == 7  # micro-batch 6 of 8 -> step 2's end
    assert stop.stopped.signum == signal.SIGTERM
    resumed = fit(tmp_path / "run", wikitext_dir, ckpt_path=stop.stopped.checkpoint)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


def run_ddp(mode: str, tmp_path, wikitext_dir) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "tests/training/ddp_stop_worker.py", mode, str(tmp_path), str(wikitext_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_a_signal_on_one_ddp_rank_stops_both_with_that_signal(tmp_path, wikitext_dir):
    ranks = run_ddp("signal", tmp_path, wikitext_dir)
    assert [r["signum"] for r in ranks] == [signal.SIGUSR1] * 2, ranks  # rank 0 got none
    assert ranks[0]["checkpoint"] == ranks[1]["checkpoint"] == str(tmp_path / "hpc_ckpt_1.ckpt")
    assert (tmp_path / "hpc_ckpt_1.ckpt").is_file() and ranks[0]["global_step"] == ranks[1]["global_step"] == 3


def test_a_nan_loss_on_one_ddp_rank_stops_both_with_the_clear_error(tmp_path, wikitext_dir):
    ranks = run_ddp("nan", tmp_path, wikitext_dir)
    assert [r.get("error") for r in ranks] == ["NonFiniteLossError"] * 2, ranks
    assert "this rank's: nan" in ranks[1]["message"] and "at step 2" in ranks[0]["message"]
