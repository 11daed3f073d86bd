"""The throughput benchmark's two loops run on the batches the product trains on (a tiny model, a few steps).

The benchmark itself needs SmolLM2 and minutes; this catches it drifting from the training code's interfaces
(it once fed `(tensor,)` tuples after `RecoveryModule.training_step` had moved to `{"input_ids": ...}` batches).
"""

import time
from argparse import Namespace

import lightning as L
import torch

from bench.throughput import StepTimer, batches, lightning_run, plain_run
from prune_recover.tiny_models import tiny_random
from prune_recover.training.recovery_module import RecoveryModule
from tests.conftest import tiny_trainer


def test_both_loops_train_and_report_tokens_per_second():
    model, _ = tiny_random("llama")
    blocks = torch.randint(0, model.config.vocab_size, (8, 16))
    args = Namespace(accelerator="cpu", precision="32-true", batch_size=2, steps=4, warmup=1)
    assert lightning_run(model, blocks, args) > 0
    assert plain_run(model, blocks, args) > 0


class SlowTeardown(L.Callback):
    def on_fit_end(self, trainer, pl_module):
        self.started = time.perf_counter()
        time.sleep(0.2)


def test_the_lightning_loops_clock_stops_at_the_last_step_not_after_the_fits_teardown(tmp_path):
    model, _ = tiny_random("llama")
    timer, slow = StepTimer(warmup=1), SlowTeardown()
    trainer = tiny_trainer(tmp_path, callbacks=[timer, slow], max_steps=4)
    blocks = torch.randint(0, model.config.vocab_size, (8, 16))
    trainer.fit(RecoveryModule(model), batches(blocks, 2))
    assert timer.start < timer.end <= slow.started and timer.tokens == 3 * 2 * 16
    assert timer.tokens_per_s() == timer.tokens / (timer.end - timer.start)
