"""One rank of a 2-process gloo group: the distillation teacher sharded with `shard_frozen` (torch's FSDP2, which
runs on CPU), its logits on a batch every rank feeds; rank zero saves them and the bytes of weights each rank holds.

Usage: RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/training/teacher_shard_worker.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prune_recover.training.distributed import shard_frozen  # noqa: E402
from tests.training.test_full_state import TOKENS, tiny_pruned_model  # noqa: E402


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    try:
        teacher = tiny_pruned_model().eval().requires_grad_(False)
        shard_frozen(teacher, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
        local_bytes = sum(p.to_local().numel() * p.element_size() for p in teacher.parameters())
        with torch.no_grad():
            logits = teacher(TOKENS, use_cache=False).logits
        held = [None] * dist.get_world_size()
        dist.all_gather_object(held, local_bytes)
        if dist.get_rank() == 0:
            torch.save({"logits": logits, "bytes_per_rank": held}, out / "teacher.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
