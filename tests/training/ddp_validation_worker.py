"""Validation perplexity of one tiny model over the same 8 blocks, on 1 process or 2 DDP processes (gloo, CPU).

Usage: python tests/training/ddp_validation_worker.py OUT_JSON WIKITEXT_DIR DEVICES
"""

import json
import sys
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prune_recover.tiny_models import tiny_random  # noqa: E402
from prune_recover.training.recovery_module import RecoveryModule  # noqa: E402
from tests.conftest import tiny_data  # noqa: E402


def main(out: Path, wikitext_dir: str, devices: int) -> None:
    data = tiny_data(wikitext_dir, batch_size=2, max_val_blocks=8)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    metrics = trainer.validate(RecoveryModule(tiny_random("llama")[0]), datamodule=data, verbose=False)[0]
    if trainer.is_global_zero:
        out.write_text(json.dumps({k: float(v) for k, v in metrics.items()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
