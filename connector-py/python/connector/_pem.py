"""PEM material given as PEM text, bytes or a file path."""

from __future__ import annotations

import os
from typing import Union

from .errors import ConfigError

PemSource = Union[str, bytes, "os.PathLike[str]"]
"""PEM text (``str`` starting with ``-----BEGIN``), PEM bytes, or a path to a PEM file."""


def pem_bytes(value: PemSource, what: str) -> bytes:
    """The PEM bytes of ``value``; :class:`ConfigError` if a file cannot be read."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    if isinstance(value, (str, os.PathLike)):
        try:
            with open(value, "rb") as f:
                return f.read()
        except OSError as e:
            raise ConfigError(f"cannot read {what} from {os.fspath(value)!r}: {e.strerror}") from e
    raise ConfigError(f"{what} must be PEM text, PEM bytes or a path, not {type(value).__name__}")


def seconds(value: object, what: str) -> "float | None":
    """``None`` or a float number of seconds (``ConfigError`` otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number of seconds, not {type(value).__name__}")
    return float(value)
