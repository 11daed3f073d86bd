"""A standard-library logger that stays silent on every rank but zero, so multi-GPU runs log once."""

from __future__ import annotations

import logging

from lightning.fabric.utilities.rank_zero import rank_zero_only


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(rank_zero_only, "rank", 0) == 0


def get_logger(name: str) -> logging.Logger:
    """Logger `name` that only emits on global rank zero."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _RankZeroFilter) for f in logger.filters):
        logger.addFilter(_RankZeroFilter())
    return logger
