"""Streaming across ranks and workers: every training block is served exactly once in an epoch.

Each row is `BLOCK - 1` bytes plus the EOS that ends it, so every row packs into exactly one block and a
block names its row. Four files (whole shards) are split between 2 gloo ranks by
`datasets.distributed.split_dataset_by_node`, and each rank's shards between its 2 DataLoader workers by
`datasets` itself.
"""

import json
from collections import Counter
from pathlib import Path

from prune_recover.tiny_models import byte_tokenizer
from prune_recover.training.datamodule import CausalLMDataModule
from tests.training.two_ranks import run_two_ranks

BLOCK = 32
ROWS_PER_FILE = 13
WORKER = Path(__file__).with_name("stream_share_worker.py")


def row_text(file: int, row: int) -> str:
    return f"file {file} row {row:03d} ".ljust(BLOCK - 1, "x")


def write_files(folder: Path) -> dict:
    paths = []
    for file in range(4):
        path = folder / f"part{file}.jsonl"
        path.write_text("".join(json.dumps({"text": row_text(file, row)}) + "\n" for row in range(ROWS_PER_FILE)))
        paths.append(str(path))
    held_out = {}
    for split in ("valid", "test"):
        held_out[split] = folder / f"{split}.jsonl"
        held_out[split].write_text(json.dumps({"text": f"held out {split} text " * 20}) + "\n")
    return {"train": paths, **{split: str(path) for split, path in held_out.items()}}


def served_blocks(files: dict, num_workers: int) -> list[str]:
    """The rows (by their first 16 bytes) of every block the training loader serves, in one epoch."""
    tokenizer = byte_tokenizer()
    data = CausalLMDataModule(
        tokenizer, files=files, block_size=BLOCK, batch_size=1, streaming=True, num_workers=num_workers
    )
    return [tokenizer.decode(batch["input_ids"][0, :16]) for batch in data.train_dataloader()]


def test_two_ranks_with_two_workers_each_serve_every_block_exactly_once(tmp_path):
    files = write_files(tmp_path)
    alone = served_blocks(files, num_workers=0)
    assert len(alone) == 4 * ROWS_PER_FILE and len(set(alone)) == len(alone)  # one block per row

    run_two_ranks(WORKER, str(tmp_path), json.dumps(files))
    shares = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]

    assert all(shares), "every rank serves blocks"
    assert not set(shares[0]) & set(shares[1]), "the ranks' shares are disjoint"
    served = Counter(shares[0] + shares[1])
    assert served == Counter(alone), "together the ranks serve every block exactly once"
