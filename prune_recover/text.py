"""Token streams from text files and fixed-length windows cut from them.

A split file is read as one string and tokenized once (the perplexity protocol requires it);
the ids are cached next to converted models, keyed by the file's bytes and the tokenizer, so a
second run does not tokenize again.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from prune_recover.models import cache_root

WIKITEXT2_ENV = "PRUNE_RECOVER_WIKITEXT2"
WIKITEXT2_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.raw", "test": "wiki.test.raw"}


def wikitext2_file(directory: str | Path | None, split: str) -> Path:
    """Path of a local WikiText-2 split (`train`, `valid`, `test`).

    Args:
        directory: Folder holding the `wiki.*` files; None reads `$PRUNE_RECOVER_WIKITEXT2`.
        split: Which split.
    """
    if split not in WIKITEXT2_FILES:
        raise ValueError(f"WikiText-2 split '{split}' does not exist; choose one of {sorted(WIKITEXT2_FILES)}")
    directory = directory or os.environ.get(WIKITEXT2_ENV)
    if not directory:
        raise ValueError(f"No WikiText-2 directory given: set data.wikitext_dir or ${WIKITEXT2_ENV}")
    path = Path(directory).expanduser() / WIKITEXT2_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(f"WikiText-2 {split} file not found: {path}")
    return path


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash that changes whenever the tokenizer would produce different ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    description = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256(description.encode()).hexdigest()[:12]


def tokenize_file(path: str | Path, tokenizer: PreTrainedTokenizerBase, cache: bool = True) -> torch.Tensor:
    """Read a UTF-8 text file as one string and return its token ids (1-D int64).

    No BOS/EOS or other special tokens are added. With `cache`, ids are stored under
    `cache_root()/tokens` and reused while the file bytes and the tokenizer stay the same.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Text file not found: {path}")
    data = path.read_bytes()
    key = f"{hashlib.sha256(data).hexdigest()[:16]}-{tokenizer_fingerprint(tokenizer)}"
    cached = cache_root() / "tokens" / f"{path.name}-{key}.pt"
    if cache and cached.is_file():
        return torch.load(cached)
    text = data.decode("utf-8")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        torch.save(ids, tmp)
        tmp.replace(cached)
    return ids


def windows(ids: torch.Tensor, seq_len: int, count: int | None = None, seed: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of `seq_len` tokens, shape `[count, seq_len]`.

    Args:
        ids: 1-D token ids.
        seq_len: Tokens per window.
        count: How many windows; None takes all that fit.
        seed: None takes the first `count` windows in order; an int draws `count` of them at random.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    available = ids.numel() // seq_len
    count = available if count is None else count
    if count < 1 or count > available:
        raise ValueError(f"asked for {count} windows of {seq_len} tokens but the text holds {available}")
    all_windows = ids[: available * seq_len].view(available, seq_len)
    if seed is None:
        return all_windows[:count].clone()
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:count]
    return all_windows[order].clone()


def batched(samples: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split `[n, seq_len]` samples into a list of `[batch_size, seq_len]` batches (the last may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return list(samples.split(batch_size))
