"""Stop on a scheduler's signal at a step boundary, with a resumable checkpoint, and never exit as a success.

SLURM sends SIGUSR1 shortly before the time limit (`#SBATCH --signal=SIGUSR1@90`) and SIGTERM on cancel,
preemption and timeout. `GracefulStop` installs its own handlers at setup (so Lightning leaves SIGUSR1
alone) and again when training starts (replacing Lightning's SIGTERM handler, whose flag would end the
loop without a checkpoint and exit with status 0), notes the signal, and at the end of the current
optimizer step (not between the micro-batches of an accumulated step, whose gradients a checkpoint does not hold),
with all ranks agreeing on the signal (any rank's; SIGTERM if ranks got different ones):
- SIGUSR1: writes `hpc_ckpt_N.ckpt` in the trainer's root directory (Lightning resumes from it by itself)
  and, under SLURM, requeues the job with `scontrol requeue`;
- SIGTERM: writes `last.ckpt` in the checkpoint callback's directory (`ckpt_path=last` resumes from it).
The run stops, and the job raises `Interrupted`, which the command line turns into exit code 128 + signal.
A checkpoint written inside the signal handler, as Lightning's own SIGUSR1 handler does, would catch the
step half done; one written at the boundary resumes bit for bit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
import torch

from prune_recover.logs import get_logger

log = get_logger(__name__)
HANDLED = (signal.SIGTERM, signal.SIGUSR1)


class Interrupted(RuntimeError):
    """Training stopped on a signal after writing a resumable checkpoint.

    Attributes:
        signum: The signal received.
        checkpoint: The checkpoint written at the stop.
    """

    def __init__(self, signum: int, checkpoint: str, step: int):
        self.signum, self.checkpoint = signum, checkpoint
        name = signal.Signals(signum).name
        then = "the job was requeued" if signum == signal.SIGUSR1 and slurm_job_id() else "resume with ckpt_path=last"
        super().__init__(f"stopped by {name} after step {step}; resumable checkpoint: {checkpoint} ({then})")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the shell's convention for a process ended by a signal."""
        return 128 + self.signum


def slurm_job_id() -> str | None:
    """`<array job>_<task>` or the job id under SLURM, else None."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class GracefulStop(L.Callback):
    """Turn SIGTERM / SIGUSR1 into a checkpoint at the next step boundary and a stop (see the module docstring)."""

    def __init__(self):
        self.received: int | None = None  # the signal noted on this rank
        self.stopped: Interrupted | None = None  # set once the stop happened
        self._previous: dict[int, object] = {}
        self._step_seen: int | None = None  # the optimizer step at the last batch end

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._note) for signum in HANDLED}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_seen = trainer.global_step
        if self._previous:  # the trainer registered its SIGTERM handler in between: this one replaces it
            for signum in HANDLED:
                signal.signal(signum, self._note)

    def _note(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        stepped, self._step_seen = trainer.global_step != self._step_seen, trainer.global_step
        if not stepped:  # inside an accumulated step: every rank is at the same micro-batch, so all return here
            return
        # One collective for the decision and the signal: a rank that got none gives 0, so any rank's signal
        # stops every rank, and the larger number (SIGTERM over SIGUSR1) when ranks got different ones.
        noted = torch.tensor(self.received or 0, device=trainer.strategy.root_device)
        signum = int(trainer.strategy.reduce(noted, reduce_op="max"))
        if signum == 0:
            return
        if signum == signal.SIGUSR1:
            path = hpc_checkpoint_path(trainer.default_root_dir)
        else:
            folder = Path(getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir)
            path = str(folder / "last.ckpt")
        trainer.save_checkpoint(path)
        if signum == signal.SIGUSR1 and trainer.is_global_zero and slurm_job_id():
            requeue(slurm_job_id())
        self.stopped = Interrupted(signum, path, trainer.global_step)
        log.warning("%s", self.stopped)
        trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def hpc_checkpoint_path(folder: str | Path) -> str:
    """`hpc_ckpt_<N+1>.ckpt` in `folder`, N the highest number there (Lightning's naming, which it resumes from)."""
    numbers = [
        int(m.group(1)) for p in Path(folder).glob("hpc_ckpt_*.ckpt") if (m := re.match(r"hpc_ckpt_(\d+)", p.name))
    ]
    return str(Path(folder) / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt")


def requeue(job_id: str) -> None:
    """Ask SLURM to requeue `job_id` (it then restarts the same command, which resumes from the hpc checkpoint)."""
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode == 0:
        log.info("Requeued SLURM job %s", job_id)
    else:
        log.error("scontrol requeue %s failed (%d): %s", job_id, result.returncode, result.stderr.strip())
