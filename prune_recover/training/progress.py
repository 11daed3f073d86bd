"""What a cluster user reads while a run trains: tokens/s from Lightning's ThroughputMonitor, and a log line
every N steps (step, loss, tokens/s, learning rate, parameters, ETA) that shows up in a SLURM output file,
where a progress bar does not redraw.
"""

from __future__ import annotations

import time

import lightning as L
from lightning.pytorch.callbacks import ThroughputMonitor

from prune_recover.lm import count_parameters
from prune_recover.logs import get_logger

log = get_logger(__name__)
TOKENS_PER_S = "train/device/items_per_sec"  # the ThroughputMonitor metric of tokens per second on one device


def sequences_in(batch: dict) -> int:
    """Sequences in a training batch `{"input_ids": [batch, seq_len]}`."""
    return batch["input_ids"].shape[0]


def tokens_in(batch: dict) -> int:
    """Tokens in a training batch `{"input_ids": [batch, seq_len]}`."""
    return batch["input_ids"].numel()


class TokenThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor for token batches: logs `train/device/items_per_sec` (tokens/s), samples/s
    and, with the module's `flops_per_batch`, FLOPs/s and utilisation on GPUs Lightning knows.

    Args:
        window_size: Batches in the rolling average (nothing is logged before that many batches).
    """

    def __init__(self, window_size: int = 5):
        super().__init__(batch_size_fn=sequences_in, length_fn=tokens_in, window_size=window_size)


class ProgressLog(L.Callback):
    """A log line every `every_n_steps` optimizer steps and at the last one.

    Args:
        every_n_steps: Steps between lines.
    """

    def __init__(self, every_n_steps: int = 10):
        if every_n_steps < 1:
            raise ValueError(f"callbacks.progress.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._previous: tuple[float, int] | None = None  # (time, step) of the previous line, or of the start

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step, now = trainer.global_step, time.perf_counter()
        if self._previous is None:
            self._previous = (now, step)  # the end of the first batch (after any step-0 pruning) starts the clock
        if step == self._previous[1] or not (step % self.every_n_steps == 0 or step == trainer.max_steps):
            return
        log.info(self.line(trainer, pl_module, now))
        self._previous = (now, step)

    def line(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float) -> str:
        """`step 10/40 | loss 3.214 | 512 tok/s | lr 9.1e-05 | 102.69M params | ETA 3m12s`."""
        step, total = trainer.global_step, trainer.max_steps
        parts = [f"step {step}/{total}" if total and total > 0 else f"step {step}"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        tokens_per_s = trainer.logged_metrics.get(TOKENS_PER_S)
        if tokens_per_s is not None:
            parts.append(f"{float(tokens_per_s) * trainer.world_size:.0f} tok/s")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        parts.append(f"{count_parameters(pl_module.model) / 1e6:.2f}M params")
        if self._previous is not None and total and total > 0 and step > self._previous[1]:
            # the pace since the previous line: it includes validation and pruning events, as the rest of the run will
            seconds_per_step = (now - self._previous[0]) / (step - self._previous[1])
            parts.append(f"ETA {_duration(seconds_per_step * (total - step))}")
        return " | ".join(parts)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
