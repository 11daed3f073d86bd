"""One rank of a 2-process gloo group: a tiny model sharded with torch's FSDP2 (`fully_shard`, which runs on CPU;
Lightning's FSDPStrategy needs CUDA), one AdamW step on the same batch on both ranks, then the gather that the
job uses for evaluation and export. Rank zero writes the exported copy to OUT_DIR/gathered.

Usage: RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p python tests/training/fsdp_gather_worker.py OUT_DIR
"""

import sys
from pathlib import Path

import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from prune_recover.arch import decoder_blocks  # noqa: E402
from prune_recover.training.full_state import gather_full_state, unsharded_copy  # noqa: E402
from tests.training.test_full_state import one_step, tiny_pruned_model  # noqa: E402


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    try:
        model = tiny_pruned_model()
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for block in decoder_blocks(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        one_step(model)
        state = gather_full_state(model)  # every rank takes part
        if dist.get_rank() == 0:
            unsharded_copy(model, state).save_pretrained(out / "gathered")
        else:
            assert state == {}, "only rank zero receives the full state"
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
