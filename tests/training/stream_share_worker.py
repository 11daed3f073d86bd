"""One rank of a 2-process gloo group streaming the training split with 2 DataLoader workers; writes the
first 16 tokens of every block it was served, as text, to OUT_DIR/rank<r>.json.

Usage: RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=p \
    python tests/training/stream_share_worker.py OUT_DIR FILES_JSON
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.training.test_streaming_shares import served_blocks  # noqa: E402


def main(out: Path, files: dict) -> None:
    dist.init_process_group("gloo")
    try:
        (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(served_blocks(files, num_workers=2)))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
