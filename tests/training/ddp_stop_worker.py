"""Two DDP ranks (gloo, CPU) where only rank 1 meets trouble at step 2: a SIGUSR1 (`signal`) or a NaN loss (`nan`).

Usage: python tests/training/ddp_stop_worker.py MODE OUT_DIR WIKITEXT_DIR
Each rank writes `rank<r>.json`: how its fit ended (the exception's class and message, or the stop's signal and
checkpoint). A 60 s process-group timeout bounds a rank left waiting for the other.
"""

import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prune_recover.tiny_models import tiny_random  # noqa: E402
from prune_recover.training.guards import FiniteLossGuard  # noqa: E402
from prune_recover.training.recovery_module import RecoveryModule  # noqa: E402
from prune_recover.training.signals import GracefulStop  # noqa: E402
from tests.conftest import tiny_data, tiny_trainer  # noqa: E402


class TroubleOnRankOne(L.Callback):
    def __init__(self, mode: str):
        self.mode = mode

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank != 1 or trainer.global_step != 2:
            return
        if self.mode == "signal":
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            with torch.no_grad():
                pl_module.hf_model.model.norm.weight.fill_(float("nan"))


def main(mode: str, out: Path, wikitext_dir: str) -> None:
    stop = GracefulStop()
    trainer = tiny_trainer(
        out,
        callbacks=[stop, FiniteLossGuard(), TroubleOnRankOne(mode)],
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo", timeout=timedelta(seconds=60)),
        max_steps=20,
        limit_val_batches=0,
    )
    try:
        trainer.fit(RecoveryModule(tiny_random("llama")[0]), datamodule=tiny_data(wikitext_dir))
        ended = {"signum": stop.stopped and stop.stopped.signum, "checkpoint": stop.stopped and stop.stopped.checkpoint}
    except Exception as error:  # noqa: BLE001 - recorded for the test to read
        ended = {"error": type(error).__name__, "message": str(error)}
    ended["global_step"] = trainer.global_step
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(ended))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
