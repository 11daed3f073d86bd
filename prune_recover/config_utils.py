"""Hydra helpers shared by the entry point and the tests."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate


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
