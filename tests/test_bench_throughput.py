"""The throughput benchmark's two loops run on the batches the product trains on (a tiny model, a few steps).

The benchmark itself needs SmolLM2 and minutes; this catches it drifting from the training code's interfaces
(it once fed `(tensor,)` tuples after `RecoveryModule.training_step` had moved to `{"input_ids": ...}` batches).
"""

from argparse import Namespace

import torch

from bench.throughput import lightning_run, plain_run
from prune_recover.tiny_models import tiny_random


def test_both_loops_train_and_report_tokens_per_second():
    model, _ = tiny_random("llama")
    blocks = torch.randint(0, model.config.vocab_size, (8, 16))
    args = Namespace(accelerator="cpu", precision="32-true", batch_size=2, steps=4, warmup=1)
    assert lightning_run(model, blocks, args) > 0
    assert plain_run(model, blocks, args) > 0
