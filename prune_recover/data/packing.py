"""Packing token rows into fixed-length blocks: `Dataset.map` with a group-texts function.

Rows are concatenated within each map batch and cut into `block_size` pieces (or, with a BOS id, into
BOS + `block_size - 1` tokens); the tail of a batch that does not fill a block is dropped. The same function
packs map-style datasets (cached by the dataset fingerprint) and streams (packed on the fly).
"""

from __future__ import annotations

from itertools import chain

import torch

from prune_recover.data.tokens import text_per_window

GROUP_ROWS = 1000  # rows concatenated per map batch (the Hugging Face group-texts recipe's default)


def group_texts(batch: dict, block_size: int, bos: int | None = None) -> dict:
    """Concatenate the `input_ids` rows of a batch and cut them into `block_size` blocks (tail dropped), each
    started with `bos` when it is given."""
    ids = list(chain.from_iterable(batch["input_ids"]))
    text = text_per_window(block_size, bos)
    head = [] if bos is None else [bos]
    usable = len(ids) // text * text
    return {"input_ids": [head + ids[start : start + text] for start in range(0, usable, text)]}


def pack(tokenized, block_size: int, bos: int | None = None):
    """Blocks of `block_size` tokens from a tokenized `Dataset` or `IterableDataset` (column `input_ids`)."""
    if block_size < 2:
        raise ValueError(f"data.block_size must be >= 2, got {block_size}")
    kwargs = {"desc": f"Packing into blocks of {block_size}"} if hasattr(tokenized, "cache_files") else {}
    return tokenized.map(
        group_texts,
        batched=True,
        batch_size=GROUP_ROWS,
        fn_kwargs={"block_size": block_size, "bos": bos},
        remove_columns=["input_ids"],
        **kwargs,
    )


def block_tensor(blocks) -> torch.Tensor:
    """The blocks of a packed map-style dataset as one `[num_blocks, block_size]` int64 tensor."""
    return blocks.with_format("torch")[:]["input_ids"].to(torch.long)
