"""LightningDataModule for causal-LM recovery: corpus -> token stream -> fixed-length blocks.

Sources (exactly one):
- `wikitext_dir`: a folder of WikiText-2 `wiki.train.tokens` / `wiki.valid.raw` / `wiki.test.raw`
  (takes precedence over `hub_dataset`, so offline runs only need the folder or its environment variable);
- `hub_dataset` (+ `hub_config`): a Hugging Face dataset, e.g. `wikitext` / `wikitext-2-raw-v1`;
- `files`: `{split: path or [paths]}` of local `.txt`-like, `.json`/`.jsonl` or `.parquet` files.

A plain-text file is read as one string and tokenized once; rows of a dataset are joined with
`document_separator` (nothing for WikiText, whose rows are lines, or the EOS token for documents).
Ids are cached on disk. With `streaming=True`, rows are read, tokenized and packed on the fly
(sharded across DDP ranks), for corpora that do not fit in memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from transformers import PreTrainedTokenizerBase

from prune_recover.models import cache_root
from prune_recover.streaming import PackedStream, first_tokens
from prune_recover.text import WIKITEXT2_ENV, WIKITEXT2_FILES, batched, tokenize_file, tokenizer_fingerprint, windows

STRUCTURED = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


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
        document_separator: `eos` puts the EOS token between rows; `none` joins them as they are.
        train_split: Split trained on.
        val_split: Split validated on; when equal to `train_split`, `val_fraction` of it is held out.
        test_split: Split perplexity is reported on; never trained or calibrated on.
        val_fraction: Fraction of the training blocks held out (from the end) as validation.
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
        self.sources = self._resolve_sources(wikitext_dir, hub_dataset, hub_config, files)
        self.eval_sources = self._resolve_sources(**eval_from) if eval_from else None
        if document_separator not in ("eos", "none"):
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
        self.text_field = text_field
        self.document_separator = document_separator
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.val_fraction = val_fraction
        self.block_size, self.batch_size = block_size, batch_size
        self.max_val_blocks = max_val_blocks
        self.streaming = streaming
        self.num_workers = num_workers
        self._ids: dict[str, torch.Tensor] = {}

    def _resolve_sources(self, wikitext_dir=None, hub_dataset=None, hub_config=None, files=None) -> dict:
        if files and (hub_dataset or wikitext_dir):
            raise ValueError("set one data source: files, or wikitext_dir / hub_dataset")
        if wikitext_dir:  # a local WikiText-2 folder, when given, replaces the hub copy
            hub_dataset = None
        if files:
            sources = {
                split: [Path(p).expanduser() for p in ([paths] if isinstance(paths, str | Path) else paths)]
                for split, paths in files.items()
            }
            for split, paths in sources.items():
                for path in paths:
                    if not path.is_file():
                        raise FileNotFoundError(f"data file for split '{split}' not found: {path}")
            return {"kind": "files", "files": sources}
        if hub_dataset:
            return {"kind": "hub", "path": hub_dataset, "name": hub_config}
        directory = wikitext_dir or os.environ.get(WIKITEXT2_ENV)
        if not directory:
            raise ValueError(
                "no data source: set data.wikitext_dir (or $PRUNE_RECOVER_WIKITEXT2), data.hub_dataset or data.files"
            )
        folder = Path(directory).expanduser()
        sources = {}
        for split, name in WIKITEXT2_FILES.items():
            if not (folder / name).is_file():
                raise FileNotFoundError(f"WikiText-2 {split} file not found: {folder / name}")
            sources[split] = [folder / name]
        return {"kind": "files", "files": sources}

    def source(self, split: str) -> dict:
        """Where `split` comes from: `eval_from` for the validation and test splits when it is set."""
        if self.eval_sources is not None and split in (self.val_split, self.test_split) and split != self.train_split:
            return self.eval_sources
        return self.sources

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._ids.clear()

    def _check_split(self, split: str) -> None:
        source = self.source(split)
        if source["kind"] == "files" and split not in source["files"]:
            raise ValueError(f"split '{split}' is not among the configured files {sorted(source['files'])}")

    def describe_split(self, split: str) -> str:
        source = self.source(split)
        if source["kind"] == "files":
            return ", ".join(str(p) for p in source["files"][split])
        return f"{source['path']}/{source['name']}:{self._hub_split(split)}"

    def token_ids(self, split: str) -> torch.Tensor:
        """Every token id of `split`, as one 1-D tensor (cached in memory and on disk)."""
        if self.tokenizer is None:
            raise RuntimeError("the data module has no tokenizer yet; call set_tokenizer(tokenizer)")
        self._check_split(split)
        if split not in self._ids:
            self._ids[split] = self._load_ids(split)
        return self._ids[split]

    def _load_ids(self, split: str) -> torch.Tensor:
        if self.source(split)["kind"] == "files":
            parts = [self._file_ids(path) for path in self.source(split)["files"][split]]
            return self._join(parts)
        dataset = self._hub(split, streaming=False)
        key = f"{dataset._fingerprint}-{tokenizer_fingerprint(self.tokenizer)}-{self.document_separator}"
        return self._cached(f"hub-{split}", key, lambda: self._rows_to_ids(dataset[self.text_field]))

    def _file_ids(self, path: Path) -> torch.Tensor:
        builder = STRUCTURED.get(path.suffix.lower())
        if builder is None:
            return tokenize_file(path, self.tokenizer)
        import datasets

        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
        stat = path.stat()
        key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{tokenizer_fingerprint(self.tokenizer)}"
        return self._cached(
            path.name, key + self.document_separator, lambda: self._rows_to_ids(dataset[self.text_field])
        )

    def _rows_to_ids(self, texts: list[str]) -> torch.Tensor:
        if self.document_separator == "none":
            return torch.tensor(self.tokenizer("".join(texts), add_special_tokens=False)["input_ids"])
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return self._join([torch.tensor(ids, dtype=torch.long) for ids in encoded])

    def _join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if len(parts) == 1:
            return parts[0]
        separator = [self.tokenizer.eos_token_id] if self.document_separator == "eos" else []
        pieces = []
        for part in parts:
            pieces += [part, torch.tensor(separator, dtype=torch.long)]
        return torch.cat(pieces[:-1])

    def _cached(self, name: str, key: str, compute) -> torch.Tensor:
        path = cache_root() / "tokens" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
        if path.is_file():
            return torch.load(path)
        ids = compute().to(torch.long)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(ids, tmp)
        tmp.replace(path)
        return ids

    def _hub_split(self, split: str) -> str:
        return "validation" if split == "valid" else split

    def _hub(self, split: str, streaming: bool):
        import datasets

        source = self.source(split)
        try:
            return datasets.load_dataset(
                source["path"], source["name"], split=self._hub_split(split), streaming=streaming
            )
        except (ConnectionError, OSError, ValueError) as error:
            raise FileNotFoundError(
                f"could not load hub dataset {source['path']}/{source['name']} split '{split}' "
                f"(offline, or not in the local datasets cache): {error}. Use data.wikitext_dir or data.files instead."
            ) from error

    def _blocks(self, ids: torch.Tensor) -> torch.Tensor:
        count = ids.numel() // self.block_size
        if count == 0:
            raise ValueError(f"the split holds {ids.numel()} tokens, fewer than one block of {self.block_size}")
        return ids[: count * self.block_size].view(count, self.block_size)

    def _train_val_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training and validation token streams, the held-out part cut from the end of the training split."""
        train = self.token_ids(self.train_split)
        if self.val_split != self.train_split:
            return train, self.token_ids(self.val_split)
        held_out = max(self.block_size, int(train.numel() * self.val_fraction) // self.block_size * self.block_size)
        return train[:-held_out], train[-held_out:]

    def val_ids(self) -> torch.Tensor:
        """Token ids the validation blocks are cut from."""
        return self._train_val_ids()[1]

    def train_dataloader(self) -> DataLoader:
        if self.streaming:
            return DataLoader(self._stream(self.train_split), batch_size=self.batch_size, num_workers=self.num_workers)
        blocks = self._blocks(self._train_val_ids()[0])
        return DataLoader(
            TensorDataset(blocks),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        blocks = self._blocks(self._train_val_ids()[1])[: self.max_val_blocks]
        return DataLoader(TensorDataset(blocks), batch_size=self.batch_size, num_workers=self.num_workers)

    def _stream(self, split: str, shard: bool = True) -> IterableDataset:
        if self.source(split)["kind"] == "hub":
            rows = self._hub(split, streaming=True)
        else:
            import datasets

            paths = self.source(split)["files"][split]
            builder = STRUCTURED.get(paths[0].suffix.lower(), "text")
            extra = {"keep_linebreaks": True} if builder == "text" else {}
            rows = datasets.load_dataset(
                builder, data_files=[str(p) for p in paths], split="train", streaming=True, **extra
            )
        return PackedStream(rows, self.tokenizer, self.text_field, self.block_size, self.document_separator, shard)

    def calibration_batches(self) -> list[torch.Tensor]:
        """Calibration windows `[batch_size, seq_len]` from the calibration (default: training) split."""
        spec = self.calibration
        if spec.split is not None:
            ids = self.token_ids(spec.split)
        elif self.streaming:
            # every rank reads the same first tokens, so every rank calibrates on the same windows
            ids = first_tokens(self._stream(self.train_split, shard=False), spec.num_samples * spec.seq_len)
        else:
            ids = self._train_val_ids()[0]
        return batched(windows(ids, spec.seq_len, spec.num_samples, spec.seed), spec.batch_size)

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
