"""Packing a streamed dataset into fixed-length blocks on the fly, sharded over DDP ranks and workers."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset


class PackedStream(IterableDataset):
    """Rows of a (streaming) dataset, tokenized and packed into `block_size` sequences on the fly.

    Each DDP rank (and DataLoader worker) reads a disjoint shard of the packed blocks.
    """

    def __init__(self, rows, tokenizer, text_field: str, block_size: int, document_separator: str, shard: bool = True):
        self.rows, self.tokenizer, self.shard = rows, tokenizer, shard
        self.text_field, self.block_size = text_field, block_size
        self.separator = [tokenizer.eos_token_id] if document_separator == "eos" else []

    def __iter__(self) -> Iterator[tuple[torch.Tensor]]:
        rank, world = _shard() if self.shard else (0, 1)
        buffer: list[int] = []
        index = 0
        for row in self.rows:
            buffer += self.tokenizer(row[self.text_field], add_special_tokens=False)["input_ids"] + self.separator
            while len(buffer) >= self.block_size:
                block, buffer = buffer[: self.block_size], buffer[self.block_size :]
                if index % world == rank:
                    yield (torch.tensor(block, dtype=torch.long),)
                index += 1


def _shard() -> tuple[int, int]:
    """(shard index, shard count) over DDP ranks times DataLoader workers."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = torch.utils.data.get_worker_info()
    if info is not None:
        rank, world = rank * info.num_workers + info.id, world * info.num_workers
    return rank, world


def first_tokens(stream: IterableDataset, count: int) -> torch.Tensor:
    ids = []
    for (block,) in stream:
        ids.append(block)
        if sum(b.numel() for b in ids) >= count:
            break
    return torch.cat(ids)
