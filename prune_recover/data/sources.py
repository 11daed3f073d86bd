"""Where the text of each split comes from: local files (plain text, JSON lines, Parquet) or a hub dataset.

A plain-text file is one row (the whole file, read as one string: the perplexity protocol needs the
split tokenized in one piece); a JSON/Parquet file or a hub dataset gives one row per record. Every
loader returns a `datasets` dataset with a single `text` column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from prune_recover.data.tokens import joined_ids

WIKITEXT2_ENV = "PRUNE_RECOVER_WIKITEXT2"
WIKITEXT2_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.raw", "test": "wiki.test.raw"}
STRUCTURED = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
HUB_SPLITS = {"valid": "validation"}


@dataclass(frozen=True)
class Source:
    """The files of every split, or a hub dataset (`path`, `name`).

    Attributes:
        files: `{split: [paths]}` of local files; None for a hub dataset.
        hub_path: Hugging Face dataset name, e.g. `wikitext`.
        hub_name: Its configuration, e.g. `wikitext-2-raw-v1`.
        text_field: Column holding the text in structured files and hub datasets.
    """

    files: dict[str, list[Path]] | None = None
    hub_path: str | None = None
    hub_name: str | None = None
    text_field: str = field(default="text")

    @classmethod
    def resolve(
        cls,
        wikitext_dir: str | None = None,
        hub_dataset: str | None = None,
        hub_config: str | None = None,
        files: dict | None = None,
        text_field: str = "text",
    ) -> Source:
        """The source a data config names; every local file is checked to exist.

        A local WikiText-2 folder, when given, replaces the hub copy; with nothing given,
        `$PRUNE_RECOVER_WIKITEXT2` names the folder.
        """
        if files and (hub_dataset or wikitext_dir):
            raise ValueError("set one data source: files, or wikitext_dir / hub_dataset")
        if files:
            resolved = {
                split: [Path(p).expanduser() for p in ([paths] if isinstance(paths, str | Path) else paths)]
                for split, paths in files.items()
            }
            for split, paths in resolved.items():
                for path in paths:
                    if not path.is_file():
                        raise FileNotFoundError(f"data file for split '{split}' not found: {path}")
            return cls(files=resolved, text_field=text_field)
        if hub_dataset and not wikitext_dir:
            return cls(hub_path=hub_dataset, hub_name=hub_config, text_field=text_field)
        directory = wikitext_dir or os.environ.get(WIKITEXT2_ENV)
        if not directory:
            raise ValueError(
                "no data source: set data.wikitext_dir (or $PRUNE_RECOVER_WIKITEXT2), data.hub_dataset or data.files"
            )
        folder = Path(directory).expanduser()
        resolved = {}
        for split, name in WIKITEXT2_FILES.items():
            if not (folder / name).is_file():
                raise FileNotFoundError(f"WikiText-2 {split} file not found: {folder / name}")
            resolved[split] = [folder / name]
        return cls(files=resolved, text_field=text_field)

    @property
    def is_local(self) -> bool:
        return self.files is not None

    def check_split(self, split: str) -> None:
        """Raise unless `split` is one this source can serve."""
        if self.is_local and split not in self.files:
            raise ValueError(f"split '{split}' is not among the configured files {sorted(self.files)}")

    def describe(self, split: str) -> str:
        """The files (or hub dataset and split) behind `split`, for reports."""
        if self.is_local:
            files = self.files[split]
            if len(files) <= 2:
                return ", ".join(str(p) for p in files)
            root = Path(os.path.commonpath([str(p) for p in files]))
            return f"{len(files)} files in {root}: " + ", ".join(str(p.relative_to(root)) for p in files)
        return f"{self.hub_path}/{self.hub_name}:{HUB_SPLITS.get(split, split)}"

    def rows(self, split: str, streaming: bool = False):
        """The rows of `split` as a `datasets.Dataset` (or `IterableDataset` when streaming) with one `text` column."""
        self.check_split(split)
        if not self.is_local:
            rows = self._hub_rows(split, streaming)
        else:
            paths = self.files[split]
            builders = {STRUCTURED.get(p.suffix.lower(), "text") for p in paths}
            if len(builders) > 1:
                raise ValueError(f"split '{split}' mixes file kinds {sorted(builders)}; use one kind per split")
            builder = builders.pop()
            extra = {"sample_by": "document"} if builder == "text" else {}
            rows = _load_files(builder, paths, streaming, extra)
        columns = rows.column_names  # None for a stream whose features are not declared
        if columns is not None:
            if self.text_field not in columns:
                raise ValueError(f"{self.describe(split)} has no column '{self.text_field}' (columns: {columns})")
            rows = rows.select_columns([self.text_field])
        return rows.rename_column(self.text_field, "text") if self.text_field != "text" else rows

    def _hub_rows(self, split: str, streaming: bool):
        import datasets

        try:
            return datasets.load_dataset(
                self.hub_path, self.hub_name, split=HUB_SPLITS.get(split, split), streaming=streaming
            )
        except (ConnectionError, OSError, ValueError) as error:
            raise FileNotFoundError(
                f"could not load hub dataset {self.hub_path}/{self.hub_name} split '{split}' "
                f"(offline, or not in the local datasets cache): {error}. Use data.wikitext_dir or data.files instead."
            ) from error


def text_file_ids(paths: str | Path | list, tokenizer, separator: str = "eos"):
    """The ids of one plain-text domain: each file read as one string, files joined by the separator.

    Raises:
        FileNotFoundError: a file does not exist.
    """
    files = [paths] if isinstance(paths, str | Path) else list(paths)
    return joined_ids(Source.resolve(files={"text": files}).rows("text"), tokenizer, separator)


def _load_files(builder: str, paths: list[Path], streaming: bool, extra: dict):
    """Local files through a `datasets` builder; empty or unreadable files fail with their names."""
    import datasets

    empty = [str(p) for p in paths if p.stat().st_size == 0]
    if empty:
        raise ValueError(f"the data files {empty} are empty")
    try:
        return datasets.load_dataset(
            builder, data_files=[str(p) for p in paths], split="train", streaming=streaming, **extra
        )
    except datasets.exceptions.DatasetGenerationError as error:
        cause = error.__cause__ or error.__context__ or error
        raise ValueError(
            f"cannot read {[str(p) for p in paths]} as {builder}: {type(cause).__name__}: {cause}"
        ) from error
