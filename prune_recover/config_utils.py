"""Hydra helpers shared by the entry point and the tests."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf


def stable_id(text: str) -> str:
    """An 8-character id derived from `text` (an absolute output path), stable across restarts."""
    return hashlib.sha1(os.path.abspath(str(text)).encode()).hexdigest()[:8]


def register_resolvers() -> None:
    """Register the `${stable_id:...}` resolver used by the configs (idempotent)."""
    if not OmegaConf.has_resolver("stable_id"):
        OmegaConf.register_new_resolver("stable_id", stable_id)


def build(node: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` with plain containers, re-raising the constructor's own error.

    Hydra wraps every constructor error in `InstantiationException`; users should see the
    `ValueError` / `FileNotFoundError` that says what was wrong, with its original type.
    """
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as error:
        if error.__cause__ is not None:
            raise error.__cause__ from None
        raise
