"""The LightningDataModule of recovery: token blocks to train and validate on, calibration windows, test ids.

Training text is a mixture of components (`prune_recover.data.mixture`): one, built from the top-level
source fields, or several under `mixture` (e.g. WikiText-2 prose and Python code), each tokenized and
packed with `Dataset.map` and interleaved by weight. Batches are `{"input_ids": [batch, block_size]}`.
The test split always comes from the top-level source (or `eval_from`). With `streaming=True` the
training split is read, tokenized and packed on the fly, each rank reading its own share; validation then reads
only the validation splits (a stream cannot hold its end out, so validating on the training split is refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, replace

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from transformers import PreTrainedTokenizerBase

from prune_recover.data.mixture import (
    SINGLE,
    CalibrationSpec,
    Component,
    calibration_windows,
    check_unused,
    component_from_config,
    interleave,
)
from prune_recover.data.packing import block_tensor, pack
from prune_recover.data.sources import Source
from prune_recover.data.tokens import batched, check_bos_setting, joined_ids, leading_bos, text_per_window, windows
from prune_recover.settings import check_whole_numbers
from prune_recover.training.resume import EpochShuffle, StreamLoader


class CausalLMDataModule(L.LightningDataModule):
    """Token blocks for training/validation, calibration windows, and evaluation ids.

    Args:
        tokenizer: The model's tokenizer (may be given later through `set_tokenizer`).
        wikitext_dir, hub_dataset, hub_config, files, text_field: The top-level source (see `Source.resolve`);
            `$PRUNE_RECOVER_WIKITEXT2` names a WikiText-2 folder when none is set.
        document_separator: `eos` ends every row with the EOS token; `none` joins rows as they are.
        bos: Start every block and window with BOS: `auto` (when the tokenizer starts texts with it), True, False.
        train_split: Split trained on (without a mixture).
        val_split: Split validated on; when equal to `train_split`, `val_fraction` of it is held out.
        test_split: Split perplexity is reported on; never trained, validated or calibrated on.
        val_fraction: Fraction of the training tokens held out (as the last blocks) for validation.
        block_size: Tokens per training sequence.
        batch_size: Sequences per batch (per device).
        max_val_blocks: Cap on validation sequences (None = all).
        streaming: Read the training split lazily (datasets streaming), packing blocks on the fly.
        num_workers: DataLoader workers.
        calibration: `CalibrationSpec` fields.
        eval_from: Another source for the validation and test splits, e.g. WikiText-2 while training on a
            pretraining corpus.
        mixture: `{name: {weight, source fields, split, val_split, val_fraction, document_separator}}`:
            train and validate on these components instead of the top-level source.
        mixture_seed: Seed of the interleaving.
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
        bos: str | bool = "auto",
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
        mixture: Mapping[str, Mapping] | None = None,
        mixture_seed: int = 0,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.sources = Source.resolve(wikitext_dir, hub_dataset, hub_config, files, text_field)
        self.eval_sources = Source.resolve(**eval_from, text_field=text_field) if eval_from else None
        counts = {"block_size": (block_size, 2), "batch_size": (batch_size, 1), "num_workers": (num_workers, 0)}
        if max_val_blocks is not None:  # null = all
            counts["max_val_blocks"] = (max_val_blocks, 1)
        check_whole_numbers({f"data.{name}": count for name, count in counts.items()})
        self.calibration = (
            calibration if isinstance(calibration, CalibrationSpec) else CalibrationSpec(**(calibration or {}))
        )
        if test_split == self.calibration.split or (not mixture and test_split in (train_split, val_split)):
            raise ValueError(f"test split '{test_split}' may not be trained, validated or calibrated on")
        check_bos_setting(bos)
        self.document_separator, self.bos = document_separator, bos
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.block_size, self.batch_size = block_size, batch_size
        self.max_val_blocks, self.streaming, self.num_workers = max_val_blocks, streaming, num_workers
        self.val_fraction, self.mixture_seed = val_fraction, mixture_seed
        if mixture:
            self.components = [component_from_config(name, spec, document_separator) for name, spec in mixture.items()]
        else:
            val_source = self.source(val_split)
            single = Component(SINGLE, self.sources, 1.0, train_split, val_split, val_fraction, document_separator)
            self.components = [replace(single, val_source=val_source)]
        held_out = [c.setting("val_split") for c in self.components if c.holds_out]
        if streaming and held_out:
            raise ValueError(
                f"data.streaming=true reads the training split as a stream, so none of it can be held out for "
                f"validation (it would be trained on too): set {held_out} to another split (e.g. valid)"
            )
        test = self.source(test_split)
        if test.is_local and test_split in test.files:
            check_unused(self.components, test.files[test_split])
        self._ids: dict[str, torch.Tensor] = {}
        self._blocks: dict[str, object] = {}

    def source(self, split: str) -> Source:
        """Where a top-level `split` comes from: `eval_from` for the validation and test splits when it is set."""
        if self.eval_sources is not None and split in (self.val_split, self.test_split) and split != self.train_split:
            return self.eval_sources
        return self.sources

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Use `tokenizer` from now on (forgets ids and blocks made with another)."""
        self.tokenizer = tokenizer
        self._ids.clear()
        self._blocks.clear()

    def describe_split(self, split: str) -> str:
        """The files (or hub dataset) behind a top-level split."""
        return self.source(split).describe(split)

    def local_file(self, split: str):
        """The one local file a top-level `split` is read from, or None (a hub dataset, or several files)."""
        source = self.source(split)
        files = source.files.get(split, []) if source.is_local else []
        return files[0] if len(files) == 1 else None

    def _check_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise RuntimeError("the data module has no tokenizer yet; call set_tokenizer(tokenizer)")

    def token_ids(self, split: str) -> torch.Tensor:
        """Every token id of a top-level `split` as one 1-D tensor (cached); the separator stands between rows only."""
        if split not in self._ids:
            self._check_tokenizer()
            self._ids[split] = joined_ids(self.source(split).rows(split), self.tokenizer, self.document_separator)
        return self._ids[split]

    def bos_id(self) -> int | None:
        """The BOS id every block and window starts with (`data.bos` for this tokenizer), or None."""
        self._check_tokenizer()
        return leading_bos(self.bos, self.tokenizer)

    def _component_blocks(self) -> list[tuple]:
        if "components" not in self._blocks:
            bos = self.bos_id()
            self._blocks["components"] = [c.blocks(self.tokenizer, self.block_size, bos) for c in self.components]
        return self._blocks["components"]

    def _val_blocks(self):
        """Validation blocks: a stream's from its validation splits alone (never packed whole), else the mixture's."""
        if not self.streaming:
            return self._train_val_blocks()[1]
        if "val" not in self._blocks:
            parts = [c.val_blocks(self.tokenizer, self.block_size, self.bos_id()) for c in self.components]
            val = interleave(parts, [c.weight for c in self.components], self.mixture_seed)
            self._blocks["val"] = val.with_format("torch")
        return self._blocks["val"]

    def _train_val_blocks(self) -> tuple:
        """Training and validation blocks (`datasets.Dataset`), each the weighted mixture of the components'."""
        if "train" not in self._blocks:
            parts, weights = self._component_blocks(), [c.weight for c in self.components]
            train = interleave([train for train, _ in parts], weights, self.mixture_seed)
            val = interleave([val for _, val in parts], weights, self.mixture_seed)
            self._blocks.update(train=train.with_format("torch"), val=val.with_format("torch"))
        return self._blocks["train"], self._blocks["val"]

    def val_ids(self) -> torch.Tensor:
        """Token ids of the validation blocks, in order (the blocks `val_dataloader` serves, before the cap)."""
        return block_tensor(self._val_blocks()).flatten()

    def train_dataloader(self) -> StatefulDataLoader:
        """Training batches from a loader whose position Lightning stores in every checkpoint (exact resume)."""
        if self.streaming:
            streams = [pack(c.rank_share(self.tokenizer), self.block_size, self.bos_id()) for c in self.components]
            stream = interleave(streams, [c.weight for c in self.components], self.mixture_seed)
            return StreamLoader(stream.with_format("torch"), batch_size=self.batch_size, num_workers=self.num_workers)
        blocks = self._train_val_blocks()[0]
        seed = torch.initial_seed()  # seed_everything's seed
        return StatefulDataLoader(
            blocks,
            batch_size=self.batch_size,
            sampler=EpochShuffle(len(blocks), seed, self.batch_size),
            num_workers=self.num_workers,
            drop_last=True,
            # the loader draws its workers' base seed per epoch from this, not from the global RNG, which then
            # holds exactly what RngStates restores (dropout masks as in the uninterrupted run)
            generator=torch.Generator().manual_seed(seed),
        )

    def val_dataloader(self) -> DataLoader:
        blocks = self._val_blocks()
        if self.max_val_blocks is not None:
            blocks = blocks.select(range(min(self.max_val_blocks, len(blocks))))
        return DataLoader(blocks, batch_size=self.batch_size, num_workers=self.num_workers)

    def check_sizes(self, calibration: bool) -> None:
        """Fail now, before weights load, if training, validation or calibration would get no data."""
        self._val_blocks()  # with a stream, the validation splits only (its training split is not read here)
        if calibration:
            self.calibration_batches()

    def calibration_batches(self) -> list[torch.Tensor]:
        """Calibration windows `[batch_size, seq_len]`: from `calibration.split`, else from the training mixture."""
        spec, bos = self.calibration, self.bos_id()
        ids = self.token_ids(spec.split) if spec.split is not None else None  # a read error keeps its own message
        try:
            if ids is not None:
                samples = windows(ids, spec.seq_len, spec.num_samples, spec.seed, bos)
            elif self.streaming:
                text = spec.num_samples * text_per_window(spec.seq_len, bos)
                samples = windows(self.components[0].first_streamed_tokens(self.tokenizer, text), spec.seq_len, bos=bos)
            else:
                blocks = [train for train, _ in self._component_blocks()]
                samples = calibration_windows(self.components, blocks, spec.num_samples, spec.seq_len, spec.seed, bos)
        except ValueError as error:  # name the settings: lower num_samples or seq_len, or give more text
            raise ValueError(f"data.calibration.num_samples / seq_len: {error}") from error
        return batched(samples, spec.batch_size)

    def describe(self) -> dict:
        """Where training, validation and test text come from, and the block and calibration settings."""
        return {
            "train": {c.name: c.describe() for c in self.components},
            "val": {c.name: c.describe_val() for c in self.components},
            "test": self.describe_split(self.test_split),
            "block_size": self.block_size,
            "bos": self.bos_id(),
            "batch_size": self.batch_size,
            "calibration": asdict(self.calibration),
        }
