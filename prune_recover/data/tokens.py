"""Rows of text -> token ids (`Dataset.map`, cached by the dataset fingerprint), and windows cut from ids.

No special tokens are added to rows; with the `eos` separator every row ends with the EOS token, so that
documents do not run into each other once packed. Models whose tokenizer starts every text with BOS (Llama 3,
Gemma, ...) were trained with it at the first position: with `data.bos` (default
`auto`: what the tokenizer itself does) every window and training block starts with BOS, followed by the text.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

SEPARATORS = ("eos", "none")
BOS_SETTINGS = ("auto", True, False)


def check_bos_setting(setting) -> None:
    """Refuse a `data.bos` other than `auto`, true or false."""
    if setting not in BOS_SETTINGS or not isinstance(setting, (str, bool)):
        raise ValueError(f"data.bos must be one of {BOS_SETTINGS}, got {setting!r}")


def leading_bos(setting: str | bool, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The BOS id every window and block starts with, or None (`data.bos`).

    Args:
        setting: `auto` (BOS when the tokenizer puts one before a text by itself), True, or False.
    """
    check_bos_setting(setting)
    bos = tokenizer.bos_token_id
    if setting is True and bos is None:
        raise ValueError(f"data.bos=true but the tokenizer {type(tokenizer).__name__} has no BOS token")
    if setting == "auto":
        return bos if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else None
    return bos if setting else None


def tokenize_rows(rows, tokenizer: PreTrainedTokenizerBase, separator: str = "none"):
    """Add an `input_ids` column (and drop `text`) to a `datasets` dataset of rows.

    Args:
        rows: `Dataset` or `IterableDataset` with a `text` column.
        separator: `eos` appends the EOS token to every row; `none` appends nothing.
    """
    if separator not in SEPARATORS:
        raise ValueError(f"data.document_separator must be one of {SEPARATORS}, got '{separator}'")
    suffix = [tokenizer.eos_token_id] if separator == "eos" else []

    def tokenize(batch: dict) -> dict:
        encoded = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [ids + suffix for ids in encoded]}

    kwargs = {"desc": "Tokenizing"} if hasattr(rows, "cache_files") else {}  # map-style datasets show progress
    return rows.map(tokenize, batched=True, remove_columns=["text"], **kwargs)


def concatenated_ids(tokenized) -> torch.Tensor:
    """Every token of a tokenized map-style dataset, row after row, as one 1-D int64 tensor."""
    rows = tokenized.with_format("numpy")[:]["input_ids"] if len(tokenized) else []
    if len(rows) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.as_tensor(row, dtype=torch.long) for row in rows])


def joined_ids(rows, tokenizer: PreTrainedTokenizerBase, separator: str = "none") -> torch.Tensor:
    """The ids of a map-style dataset of rows, joined by the separator (between rows only).

    A split of one plain-text file is thus exactly its text tokenized in one piece, nothing added.
    """
    ids = concatenated_ids(tokenize_rows(rows, tokenizer, separator))
    return ids[:-1] if separator == "eos" and ids.numel() else ids


def text_per_window(seq_len: int, bos: int | None) -> int:
    """Text tokens in a window of `seq_len` tokens: all of them, or all but the leading BOS."""
    return seq_len - (bos is not None)


def windows(
    ids: torch.Tensor, seq_len: int, count: int | None = None, seed: int | None = None, bos: int | None = None
) -> torch.Tensor:
    """Non-overlapping windows of `seq_len` tokens, shape `[count, seq_len]`.

    Args:
        ids: 1-D token ids.
        seq_len: Tokens per window.
        count: How many windows; None takes all that fit.
        seed: None takes the first `count` windows in order; an int draws `count` of them at random.
        bos: A BOS id to start every window with (then followed by `seq_len - 1` text tokens), or None.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    text = text_per_window(seq_len, bos)
    available = ids.numel() // text
    count = available if count is None else count
    if count < 1 or count > available:
        raise ValueError(
            f"asked for {count} windows of {seq_len} tokens but the text ({ids.numel()} tokens) holds {available}"
        )
    all_windows = ids[: available * text].view(available, text)
    if seed is None:
        chosen = all_windows[:count].clone()
    else:
        order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:count]
        chosen = all_windows[order].clone()
    return chosen if bos is None else torch.cat([torch.full((count, 1), bos, dtype=chosen.dtype), chosen], dim=1)


def batched(samples: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split `[n, seq_len]` samples into a list of `[batch_size, seq_len]` batches (the last may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return list(samples.split(batch_size))
