"""Training data as a weighted mixture of sources: each component is packed on its own, then blocks are interleaved.

A component is one source (a WikiText-2 folder, local files, a hub dataset) with the split it trains on
and where its validation comes from (its own split, or the last `val_fraction` of the training blocks).
Blocks never mix domains; `datasets.interleave_datasets` draws them with the components' weights (map-style
or streaming alike) until the first component runs out. Calibration windows are drawn from every
component in proportion to its weight. A data module without a mixture is a mixture of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from datasets.distributed import split_dataset_by_node
from transformers import PreTrainedTokenizerBase

from prune_recover.data.packing import block_tensor, pack
from prune_recover.data.sources import Source
from prune_recover.data.tokens import SEPARATORS, joined_ids, text_per_window, tokenize_rows, windows
from prune_recover.settings import check_whole_numbers

SINGLE = "data"  # the name of the one component of a data module without a mixture
SOURCE_FIELDS = ("wikitext_dir", "hub_dataset", "hub_config", "files", "text_field")


@dataclass(frozen=True)
class Component:
    """One source of the training mixture.

    Attributes:
        name: Name in reports (`wikitext`, `code`, ...).
        source: Where the text comes from.
        weight: Share of training blocks and calibration windows (normalised over the components).
        train_split: The split trained on.
        val_split: The split validated on; None (or `train_split`) holds out the last `val_fraction`
            of the training blocks.
        val_fraction: Fraction of the training tokens held out when validating on the training split.
        separator: `eos` ends every row (document) with the EOS token; `none` joins rows as they are.
        val_source: Where `val_split` comes from when it is not `source` (a data module's `eval_from`).
    """

    name: str
    source: Source
    weight: float = 1.0
    train_split: str = "train"
    val_split: str | None = None
    val_fraction: float = 0.0
    separator: str = "eos"
    val_source: Source | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"{self.setting('weight')} must be positive, got {self.weight}")
        if self.separator not in SEPARATORS:
            raise ValueError(
                f"{self.setting('document_separator')} must be one of {SEPARATORS}, got '{self.separator}'"
            )
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"{self.setting('val_fraction')} must be in [0, 1), got {self.val_fraction}")
        if self.holds_out and self.val_fraction == 0:
            raise ValueError(
                f"validating on the training split '{self.train_split}' needs {self.setting('val_fraction')} > 0"
            )
        self.source.check_split(self.train_split)

    def setting(self, name: str) -> str:
        """The config key of one of this component's settings (`data.X`, or `data.mixture.NAME.X`)."""
        return f"data.{name}" if self.name == SINGLE else f"data.mixture.{self.name}.{name}"

    @property
    def holds_out(self) -> bool:
        """Whether validation is the held-out end of the training split."""
        return self.val_split in (None, self.train_split)

    def describe(self) -> str:
        """Source, split and weight, for reports."""
        return f"{self.source.describe(self.train_split)} (weight {self.weight:g})"

    def describe_val(self) -> str:
        """Where validation comes from, for reports."""
        if self.holds_out:
            return f"{self.source.describe(self.train_split)} (last {self.val_fraction:.0%})"
        return (self.val_source or self.source).describe(self.val_split)

    def tokenized(self, split: str, tokenizer: PreTrainedTokenizerBase, streaming: bool = False):
        """Tokenized rows of `split` from the component's source (the validation source for `val_split`)."""
        source = self.val_source if split == self.val_split and self.val_source is not None else self.source
        return tokenize_rows(source.rows(split, streaming=streaming), tokenizer, self.separator)

    def rank_share(self, tokenizer: PreTrainedTokenizerBase):
        """This rank's share of the training split as a stream, tokenized (each rank tokenizes only its own rows)."""
        rows = self.source.rows(self.train_split, streaming=True)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # the library's split: whole shards per rank when they divide evenly, else every world-th row;
            # DataLoader workers then split this rank's shards among themselves (datasets does it)
            rows = split_dataset_by_node(rows, rank=dist.get_rank(), world_size=dist.get_world_size())
        return tokenize_rows(rows, tokenizer, self.separator)

    def first_streamed_tokens(self, tokenizer: PreTrainedTokenizerBase, count: int) -> torch.Tensor:
        """The first `count` tokens of the training split read as a stream (the same on every rank)."""
        ids: list[int] = []
        for row in self.tokenized(self.train_split, tokenizer, streaming=True):
            ids += row["input_ids"]
            if len(ids) >= count:
                break
        return torch.tensor(ids[:count], dtype=torch.long)

    def val_blocks(self, tokenizer: PreTrainedTokenizerBase, block_size: int, bos: int | None = None):
        """The validation split packed into blocks, without reading the training split (a component that holds
        part of its training split out has no validation split of its own: see `blocks`)."""
        if self.holds_out:
            raise ValueError(f"{self.describe()} validates on the held-out end of its training split")
        val = pack(self.tokenized(self.val_split, tokenizer), block_size, bos)
        self._check_not_empty("validation", val, block_size)
        return val

    def _check_not_empty(self, name: str, part, block_size: int) -> None:
        if len(part) == 0:
            raise ValueError(f"{self.describe()}: the {name} text holds fewer tokens than one block of {block_size}")

    def blocks(self, tokenizer: PreTrainedTokenizerBase, block_size: int, bos: int | None = None) -> tuple:
        """`(train, val)` packed map-style datasets of `block_size` tokens (each started with `bos` if given)."""
        train = pack(self.tokenized(self.train_split, tokenizer), block_size, bos)
        if not self.holds_out:
            val = self.val_blocks(tokenizer, block_size, bos)
        else:
            tokens = joined_ids(self.source.rows(self.train_split), tokenizer, self.separator).numel()
            held_out = max(1, int(tokens * self.val_fraction) // text_per_window(block_size, bos))
            if held_out >= len(train):
                raise ValueError(
                    f"{self.describe()} gives {len(train)} blocks of {block_size} tokens; holding out {held_out} "
                    "for validation leaves none to train on"
                )
            kept = len(train) - held_out
            train, val = train.select(range(kept)), train.select(range(kept, len(train)))
        self._check_not_empty("training", train, block_size)
        self._check_not_empty("validation", val, block_size)
        return train, val


def component_from_config(name: str, spec: dict, default_separator: str = "eos") -> Component:
    """A component from its `data.mixture.<name>` node: source fields, `weight`, `split`, `val_split`,
    `val_fraction`, `document_separator`."""
    spec = dict(spec)
    source = Source.resolve(**{key: spec.pop(key) for key in SOURCE_FIELDS if key in spec})
    settings = {"separator": spec.pop("document_separator", default_separator)}
    settings.update(weight=spec.pop("weight", 1.0), train_split=spec.pop("split", "train"))
    settings.update(val_split=spec.pop("val_split", None), val_fraction=spec.pop("val_fraction", 0.0))
    if spec:
        allowed = ["weight", "split", "val_split", "val_fraction", "document_separator", *SOURCE_FIELDS]
        raise ValueError(f"data.mixture.{name}: unknown setting(s) {sorted(spec)}; allowed: {allowed}")
    return Component(name, source, **settings)


def check_unused(components: list[Component], test_files: list) -> None:
    """Refuse components that train or validate on any of the test files."""
    test_files = set(test_files)
    for component in components:
        used = [component.train_split] + ([] if component.holds_out else [component.val_split])
        for split in used:
            source = component.source
            if split == component.val_split and component.val_source is not None:
                source = component.val_source
            if source.is_local and set(source.files.get(split, [])) & test_files:
                raise ValueError(
                    f"the test files {sorted(map(str, test_files))} may not be trained or validated on "
                    f"(data component '{component.name}', split '{split}')"
                )


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration windows for data-driven pruning (`data.calibration`).

    Attributes:
        split: Split of the data module's top-level source to draw from; null = the training mixture (each
            component's training part, in proportion to its weight).
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
        counts = {
            "num_samples": (self.num_samples, 1),
            "seq_len": (self.seq_len, 2),
            "batch_size": (self.batch_size, 1),
        }
        check_whole_numbers({f"data.calibration.{name}": count for name, count in counts.items()})


def interleave(parts: list, weights: list[float], seed: int):
    """Blocks of several datasets (map-style or streams) drawn with `weights` until the first runs out."""
    if len(parts) == 1:
        return parts[0]
    from datasets import interleave_datasets

    total = sum(weights)
    return interleave_datasets(
        parts, probabilities=[w / total for w in weights], seed=seed, stopping_strategy="first_exhausted"
    )


def proportional_counts(total: int, weights: list[float]) -> list[int]:
    """Split `total` items in proportion to `weights` (largest remainders first), summing exactly to `total`."""
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def calibration_windows(
    components: list[Component],
    train_blocks: list,
    num_samples: int,
    seq_len: int,
    seed: int | None,
    bos: int | None = None,
) -> torch.Tensor:
    """`num_samples` windows of `seq_len` tokens from the components' training blocks, in proportion to weight
    (the text of the blocks, re-cut: each window started with `bos` when it is given, as the blocks are)."""
    counts = proportional_counts(num_samples, [c.weight for c in components])
    drawn = [
        windows(block_tensor(blocks)[:, int(bos is not None) :].flatten(), seq_len, count, seed, bos)
        for blocks, count in zip(train_blocks, counts, strict=True)
        if count
    ]
    return torch.cat(drawn)
