"""One rank of a 2-process gloo group: a tiny model pruned with `pruning.reconstruct` on this rank's own
calibration batches, once with the all-reduce mean the callback passes under DDP and once without it. Writes
OUT_DIR/rank<r>.txt: a digest of the weights with the reduce, then one of the weights without it.

Usage: RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/pruning/reconstruct_ranks_worker.py OUT_DIR
"""

import hashlib
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prune_recover.pruning.pruner import Pruner  # noqa: E402
from prune_recover.tiny_models import tiny_random  # noqa: E402
from prune_recover.training.distributed import all_reduce_mean  # noqa: E402
from tests.conftest import token_batches  # noqa: E402


def digest(model) -> str:
    hashed = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        hashed.update(name.encode() + tensor.contiguous().numpy().tobytes())
    return hashed.hexdigest()


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        batches = token_batches(count=2, seq_len=32, seed=rank)  # other tokens on each rank
        pruner = Pruner(ratio=0.5, calibration_mode="sequential", reconstruct={"epochs": 2, "batch_tokens": 32})
        digests = []
        for reduce in (all_reduce_mean, None):
            model, _ = tiny_random("llama")
            pruner.prune(model, batches, reduce=reduce)
            digests.append(digest(model))
        (out / f"rank{rank}.txt").write_text(" ".join(digests))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
