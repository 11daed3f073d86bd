"""Local text corpora split into files, and the calibration batches drawn from them.

`TextSplits` names the train/valid/test files of a plain-text corpus (WikiText-2 by default) and
checks that they exist when it is built, before any model is loaded. Token ids come from
`text.tokenize_file` (tokenized once, cached).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from prune_recover.text import WIKITEXT2_FILES, batched, tokenize_file, wikitext2_file, windows


@dataclass(frozen=True)
class CalibrationSpec:
    """Which calibration windows to draw (`data.calibration`).

    Attributes:
        split: Split to draw from (never the evaluation split).
        num_samples: Number of windows.
        seq_len: Tokens per window.
        batch_size: Windows per forward pass.
        seed: Windows are drawn at random with this seed; null takes the first ones in order.
    """

    split: str = "valid"
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


class TextSplits:
    """The split files of a local plain-text corpus.

    Args:
        wikitext_dir: A folder of WikiText-2 `wiki.{train.tokens,valid.raw,test.raw}` files; None
            reads `$PRUNE_RECOVER_WIKITEXT2`. Ignored when `files` is given.
        files: Explicit `{split: path}` mapping for any other corpus.
        calibration: Calibration window settings (`CalibrationSpec` fields).
        eval_split: The split perplexity is reported on; calibration may not use it.

    Raises:
        FileNotFoundError: a split file does not exist.
        ValueError: calibration would read the evaluation split.
    """

    def __init__(
        self,
        wikitext_dir: str | None = None,
        files: Mapping[str, str] | None = None,
        calibration: CalibrationSpec | Mapping | None = None,
        eval_split: str = "test",
    ):
        if files:
            self.files = {split: Path(path).expanduser() for split, path in files.items()}
            for split, path in self.files.items():
                if not path.is_file():
                    raise FileNotFoundError(f"data file for split '{split}' not found: {path}")
        else:
            self.files = {split: wikitext2_file(wikitext_dir, split) for split in WIKITEXT2_FILES}
        spec = calibration if isinstance(calibration, CalibrationSpec) else CalibrationSpec(**(calibration or {}))
        self.calibration = spec
        self.eval_split = eval_split
        for split in (spec.split, eval_split):
            self.path(split)
        if spec.split == eval_split:
            raise ValueError(f"calibration split '{spec.split}' is the evaluation split; calibrate on another one")

    def path(self, split: str) -> Path:
        if split not in self.files:
            raise ValueError(f"split '{split}' is not among the configured files {sorted(self.files)}")
        return self.files[split]

    def token_ids(self, split: str, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """All token ids of a split (the file read as one string)."""
        return tokenize_file(self.path(split), tokenizer)

    def calibration_batches(self, tokenizer: PreTrainedTokenizerBase) -> list[torch.Tensor]:
        """The calibration windows, as `[batch_size, seq_len]` batches."""
        spec = self.calibration
        samples = windows(self.token_ids(spec.split, tokenizer), spec.seq_len, spec.num_samples, spec.seed)
        return batched(samples, spec.batch_size)
