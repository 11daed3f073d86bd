"""Where prune_recover keeps its cache, and how it writes files so that no reader sees half of one."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path


def cache_root() -> Path:
    """Where converted models and generated task files are cached (`PRUNE_RECOVER_CACHE` overrides)."""
    return Path(os.environ.get("PRUNE_RECOVER_CACHE", Path.home() / ".cache" / "prune_recover"))


def write_json_atomic(path: str | Path, data: dict) -> Path:
    """Write `data` as JSON so that `path` is never seen half-written."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) so that `path` is never seen half-written."""
    return write_bytes_atomic(path, lambda file: file.write(text.encode()))


def write_bytes_atomic(path: str | Path, write) -> Path:
    """Call `write(file)` on a temporary file beside `path`, flush it to disk, then rename it over `path`.

    A crash or kill at any moment leaves either the old complete file or the new complete one, never a
    truncated file, also when `path` is on another filesystem than `$TMPDIR` (the temporary file is a sibling,
    so the rename is atomic), and the temporary file is removed if `write` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def temporary_sibling(target: Path, tag: str = "tmp") -> Path:
    """A fresh hidden path next to `target` (same directory, hence same filesystem: renames are atomic)."""
    return target.parent / f".{target.name}.{tag}-{uuid.uuid4().hex[:8]}"


def replace_dir(new: Path, target: Path) -> None:
    """Swap the complete directory `new` into `target` (a directory or a file), removing the old one only after
    the swap."""
    old = temporary_sibling(target, "old")
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def publish_dir(new: Path, target: Path) -> bool:
    """Move the complete directory `new` to `target` unless another writer's is already there (then drop `new`).

    For caches whose content is fixed by their name (two ranks converting the same file at once): `target`,
    once there, is never renamed away under a reader, and the second writer neither fails nor replaces it.
    Returns whether `new` was the one published.
    """
    try:
        new.rename(target)  # atomic; fails when a non-empty target exists
        return True
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(new, ignore_errors=True)
        return False


def move_aside(folder: Path, paths: list[Path]) -> Path:
    """Move `paths` (inside `folder`) into a new `folder/replaced-<time>/`, never deleting them; return it."""
    aside = Path(folder) / f"replaced-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    aside.mkdir()
    for path in paths:
        shutil.move(str(path), aside / Path(path).name)
    return aside
