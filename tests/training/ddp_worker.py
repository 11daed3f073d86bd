"""A 2-process DDP (gloo, CPU) run that prunes mid-training on statistics of its own training batches (each
rank sees other batches, so only the all-reduce makes them agree); each rank writes the neurons it chose at
every event, before the re-wrap broadcasts rank zero's weights, and what it ended with.

Usage: python tests/training/ddp_worker.py OUT_DIR WIKITEXT_DIR   (Lightning starts the second rank itself)
"""

import hashlib
import json
import sys
from functools import partial
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prune_recover.arch import decoder_blocks  # noqa: E402
from prune_recover.pruning.pruner import Pruner  # noqa: E402
from prune_recover.tiny_models import tiny_random  # noqa: E402
from prune_recover.training.pruning_callback import PruningCallback  # noqa: E402
from prune_recover.training.recovery_module import RecoveryModule  # noqa: E402
from tests.conftest import tiny_data  # noqa: E402


class KeptLog(L.Callback):
    """The kept neuron indices of each event as this rank chose them (placed after the pruning callback)."""

    def __init__(self, pruning):
        self.pruning, self.kept = pruning, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if len(self.pruning.events) > len(self.kept):
            self.kept.append({str(k): v.tolist() for k, v in self.pruning.last_event.kept.items()})


class LossLog(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def main(out: Path, wikitext_dir: str) -> None:
    L.seed_everything(0)
    schedule = {"kind": "linear", "start_step": 4, "end_step": 8, "num_events": 2}
    pruning = PruningCallback(Pruner(ratio=0.5, depth={"num_blocks": 1}), schedule, stats_source="training")
    losses, kept = LossLog(), KeptLog(pruning)
    module = RecoveryModule(tiny_random("llama")[0], optimizer=partial(torch.optim.AdamW, lr=3e-3))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[pruning, kept, losses],
    )
    trainer.fit(module, datamodule=tiny_data(wikitext_dir))
    digest = hashlib.sha256()
    for name, tensor in sorted(module.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    config = module.hf_model.config
    result = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "shape": [config.intermediate_size, config.num_hidden_layers, len(decoder_blocks(module.model))],
        "digest": digest.hexdigest(),
        "losses": losses.losses,
        "events": pruning.events,
        "kept": kept.kept,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
