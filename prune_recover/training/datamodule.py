"""The LightningDataModule of recovery: token blocks to train and validate on, calibration windows, test ids.

Text comes from a `Source` (local files, WikiText-2 folder or hub dataset, see `prune_recover.data`),
is tokenized and packed with `Dataset.map`, and served as `{"input_ids": [batch, block_size]}`. When
validation uses the training split, its last blocks are held out. With `streaming=True` the training
split is read, tokenized and packed on the fly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import lightning as L
import torch
import torch.distributed as dist
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from prune_recover.data.packing import block_tensor, pack
from prune_recover.data.sources import Source
from prune_recover.data.tokens import SEPARATORS, batched, concatenated_ids, tokenize_rows, windows


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration windows for data-driven pruning (`data.calibration`).

    Attributes:
        split: Split to draw from; null = the training split (its training part when `val_fraction` carves one).
        num_samples: Number of windows.
        seq_len: Tokens per window.
        batch_size: Windows per forward pass.
        seed: Windows drawn at random with this seed; null takes the first ones in order.
    """

    split: str | None = None
    num_samples: int = 64
    seq_len: int = 512
    batch_size: int = 4
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.seq_len < 2 or self.batch_size < 1:
            raise ValueError(
                "data.calibration needs num_samples >= 1, seq_len >= 2 and batch_size >= 1, got "
                f"{self.num_samples}, {self.seq_len}, {self.batch_size}"
            )


class CausalLMDataModule(L.LightningDataModule):
    """Token blocks for training/validation, calibration windows, and evaluation ids.

    Args:
        tokenizer: The model's tokenizer (may be given later through `set_tokenizer`).
        wikitext_dir: Local WikiText-2 folder; `$PRUNE_RECOVER_WIKITEXT2` is used when it is null
            and no other source is set.
        hub_dataset: Hugging Face dataset name (needs the hub or its local cache).
        hub_config: Its configuration name.
        files: `{split: path or [paths]}` of local files.
        text_field: Column holding the text in structured files and hub datasets.
        document_separator: `eos` ends every row with the EOS token; `none` joins rows as they are.
        train_split: Split trained on.
        val_split: Split validated on; when equal to `train_split`, `val_fraction` of it is held out.
        test_split: Split perplexity is reported on; never trained or calibrated on.
        val_fraction: Fraction of the training tokens held out (as the last blocks) for validation.
        block_size: Tokens per training sequence.
        batch_size: Sequences per batch (per device).
        max_val_blocks: Cap on validation sequences (None = all).
        streaming: Read the training split lazily (datasets streaming), packing blocks on the fly.
        num_workers: DataLoader workers.
        calibration: `CalibrationSpec` fields.
        eval_from: Another source (`wikitext_dir`, `hub_dataset` + `hub_config`, or `files`) for the
            validation and test splits, e.g. WikiText-2 while training on a pretraining corpus.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase | None = None,
        wikitext_dir: str | None = None,
        hub_dataset: str | None = None,
        hub_config: str | None = None,
        files: Mapping[str, str | list[str]] | None = None,
        text_field: str = "text",
        document_separator: str = "eos",
        train_split: str = "train",
        val_split: str = "valid",
        test_split: str = "test",
        val_fraction: float = 0.0,
        block_size: int = 512,
        batch_size: int = 4,
        max_val_blocks: int | None = None,
        streaming: bool = False,
        num_workers: int = 0,
        calibration: CalibrationSpec | Mapping | None = None,
        eval_from: Mapping | None = None,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.sources = Source.resolve(wikitext_dir, hub_dataset, hub_config, files, text_field)
        self.eval_sources = Source.resolve(**eval_from, text_field=text_field) if eval_from else None
        if document_separator not in SEPARATORS:
            raise ValueError(f"data.document_separator must be 'eos' or 'none', got '{document_separator}'")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if val_split == train_split and val_fraction == 0:
            raise ValueError(f"validating on the training split '{train_split}' needs data.val_fraction > 0")
        if block_size < 2 or batch_size < 1:
            raise ValueError(f"data.block_size must be >= 2 and batch_size >= 1, got {block_size}, {batch_size}")
        self.calibration = (
            calibration if isinstance(calibration, CalibrationSpec) else CalibrationSpec(**(calibration or {}))
        )
        if test_split in (train_split, val_split, self.calibration.split):
            raise ValueError(f"test split '{test_split}' may not be trained, validated or calibrated on")
        self.document_separator = document_separator
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.val_fraction = val_fraction
        self.block_size, self.batch_size = block_size, batch_size
        self.max_val_blocks = max_val_blocks
        self.streaming = streaming
        self.num_workers = num_workers
        self._ids: dict[str, torch.Tensor] = {}
        self._blocks: dict[str, object] = {}

    def source(self, split: str) -> Source:
        """Where `split` comes from: `eval_from` for the validation and test splits when it is set."""
        if self.eval_sources is not None and split in (self.val_split, self.test_split) and split != self.train_split:
            return self.eval_sources
        return self.sources

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._ids.clear()
        self._blocks.clear()

    def describe_split(self, split: str) -> str:
        return self.source(split).describe(split)

    def local_file(self, split: str):
        """The one local file `split` is read from, or None (a hub dataset, or several files)."""
        source = self.source(split)
        files = source.files.get(split, []) if source.is_local else []
        return files[0] if len(files) == 1 else None

    def _tokenized(self, split: str, streaming: bool = False, rank_share: bool = False):
        """Tokenized rows of `split`; with `rank_share`, only this rank's share of a stream's rows."""
        if self.tokenizer is None:
            raise RuntimeError("the data module has no tokenizer yet; call set_tokenizer(tokenizer)")
        rows = self.source(split).rows(split, streaming=streaming)
        if rank_share and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # the library's split: whole shards per rank when they divide evenly, else every world-th row;
            # DataLoader workers then split this rank's shards among themselves (datasets does it)
            rows = split_dataset_by_node(rows, rank=dist.get_rank(), world_size=dist.get_world_size())
        return tokenize_rows(rows, self.tokenizer, self.document_separator)

    def token_ids(self, split: str) -> torch.Tensor:
        """Every token id of `split`, rows joined by the separator, as one 1-D tensor (cached in memory).

        The separator stands between rows only: a one-file split is its text's ids, nothing added.
        """
        if split not in self._ids:
            ids = concatenated_ids(self._tokenized(split))
            self._ids[split] = ids[:-1] if self.document_separator == "eos" and ids.numel() else ids
        return self._ids[split]

    def _train_val_blocks(self) -> tuple:
        """Training and validation blocks (`datasets.Dataset`); a held-out part is the training split's last blocks."""
        if not self._blocks:
            train = pack(self._tokenized(self.train_split), self.block_size)
            if self.val_split != self.train_split:
                val = pack(self._tokenized(self.val_split), self.block_size)
            else:
                tokens = self.token_ids(self.train_split).numel()
                held_out = max(1, int(tokens * self.val_fraction) // self.block_size)
                if held_out >= len(train):
                    raise ValueError(
                        f"the split '{self.train_split}' gives {len(train)} blocks of {self.block_size} tokens; "
                        f"holding out {held_out} for validation leaves none to train on"
                    )
                kept = len(train) - held_out
                train, val = train.select(range(kept)), train.select(range(kept, len(train)))
            for name, blocks in (("train", train), ("val", val)):
                if len(blocks) == 0:
                    raise ValueError(f"the {name} split holds fewer tokens than one block of {self.block_size}")
            self._blocks.update(train=train.with_format("torch"), val=val.with_format("torch"))
        return self._blocks["train"], self._blocks["val"]

    def val_ids(self) -> torch.Tensor:
        """Token ids of the validation blocks, in order (the blocks `val_dataloader` serves, before the cap)."""
        return block_tensor(self._train_val_blocks()[1]).flatten()

    def train_dataloader(self) -> DataLoader:
        if self.streaming:
            rows = self._tokenized(self.train_split, streaming=True, rank_share=True)
            stream = pack(rows, self.block_size).with_format("torch")
            return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers)
        return DataLoader(
            self._train_val_blocks()[0],
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        blocks = self._train_val_blocks()[1]
        if self.max_val_blocks is not None:
            blocks = blocks.select(range(min(self.max_val_blocks, len(blocks))))
        return DataLoader(blocks, batch_size=self.batch_size, num_workers=self.num_workers)

    def calibration_batches(self) -> list[torch.Tensor]:
        """Calibration windows `[batch_size, seq_len]` from the calibration (default: training) split."""
        spec = self.calibration
        if spec.split is not None:
            ids = self.token_ids(spec.split)
        elif self.streaming:
            ids = self._first_streamed_tokens(spec.num_samples * spec.seq_len)
        else:
            ids = block_tensor(self._train_val_blocks()[0]).flatten()
        return batched(windows(ids, spec.seq_len, spec.num_samples, spec.seed), spec.batch_size)

    def _first_streamed_tokens(self, count: int) -> torch.Tensor:
        """The first `count` tokens of the training stream (the same on every rank)."""
        ids: list[int] = []
        for row in self._tokenized(self.train_split, streaming=True):
            ids += row["input_ids"]
            if len(ids) >= count:
                break
        return torch.tensor(ids, dtype=torch.long)

    def describe(self) -> dict:
        return {
            "train": self.describe_split(self.train_split),
            "val": self.describe_split(self.val_split)
            + (f" (last {self.val_fraction:.0%})" if self.val_split == self.train_split else ""),
            "test": self.describe_split(self.test_split),
            "block_size": self.block_size,
            "batch_size": self.batch_size,
            "calibration": asdict(self.calibration),
        }
