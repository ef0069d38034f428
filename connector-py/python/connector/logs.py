"""Rust log events reach Python's :mod:`logging` under ``connector.*``.

Events from the Rust core are forwarded to ``logging.getLogger("connector.core.<module>")``
(other crates: ``connector.<crate>.<module>``), if their level is at or above
the threshold. The threshold starts at the ``connector`` logger's effective
level when the package is imported (``WARNING`` unless configured); change it
with :func:`set_log_level`.
"""

from __future__ import annotations

import logging
from typing import Union

from . import _connector

__all__ = ["flush_logs", "set_log_level"]


def set_log_level(level: Union[int, str]) -> None:
    """Sets the ``connector`` logger's level and forwards Rust events at or above it."""
    logger = logging.getLogger("connector")
    logger.setLevel(level)
    _connector.set_log_level(logger.level)


def flush_logs() -> None:
    """Waits until every Rust event emitted so far has been handed to :mod:`logging`."""
    _connector.flush_logs()


def _init() -> None:
    logger = logging.getLogger("connector")
    # A library adds no output of its own: without a configured handler,
    # records go nowhere (rather than to logging's last-resort stderr handler).
    logger.addHandler(logging.NullHandler())
    _connector.set_log_level(logger.getEffectiveLevel())
