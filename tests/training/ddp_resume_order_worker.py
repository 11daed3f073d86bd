"""Two DDP ranks (gloo, CPU) training on a small corpus for 3 epochs; each records the blocks it was fed per step.

Usage: python tests/training/ddp_resume_order_worker.py OUT_DIR FILES_JSON [CKPT_PATH]
Checkpoints every 4 steps into OUT_DIR/ckpt; each rank writes OUT_DIR/rank<r>.json ({step: first tokens of each
block}). With CKPT_PATH the run resumes from it.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prune_recover.tiny_models import byte_tokenizer  # noqa: E402
from prune_recover.training.datamodule import CausalLMDataModule  # noqa: E402
from tests.conftest import tiny_trainer  # noqa: E402


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.fed: dict[int, list] = {}

    def training_step(self, batch, batch_idx):
        self.fed[self.global_step] = batch["input_ids"][:, :8].tolist()
        return (self.weight * batch["input_ids"].float()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main(out: Path, files: dict, ckpt_path: str | None) -> None:
    L.seed_everything(0)
    data = CausalLMDataModule(byte_tokenizer(), files=files, block_size=32, batch_size=2)
    module = Recorder()
    checkpoints = ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=4, save_top_k=-1)
    trainer = tiny_trainer(
        out,
        callbacks=[checkpoints],
        devices=2,
        strategy="ddp",
        max_steps=14,
        limit_val_batches=0,
        enable_checkpointing=True,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(module.fed))


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
