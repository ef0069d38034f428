"""PEM material given as PEM text, bytes or a file path."""

from __future__ import annotations

import os
from typing import Union

from .errors import ConfigError

PemSource = Union[str, bytes, "os.PathLike[str]"]
"""PEM text (``str`` starting with ``-----BEGIN``), PEM bytes, or a path to a PEM file."""


def pem_bytes(value: PemSource, what: str) -> bytes:
    """The PEM bytes of ``value``; :class:`ConfigError` if it is neither PEM
    text nor a file that can be read."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(value, str) and not os.path.exists(path):
            # Text that is no PEM and names no file: say both, since either was meant.
            # A key's text is not repeated (it may be key material without its header).
            shown = "" if what == "key" else f": {_excerpt(value)}"
            raise ConfigError(
                f"{what} is neither PEM text (starting with -----BEGIN) nor the path of an existing file{shown}"
            )
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise ConfigError(f"cannot read {what} from {path!r}: {e.strerror}") from e
    raise ConfigError(f"{what} must be PEM text, PEM bytes or a path, not {type(value).__name__}")


def _excerpt(text: str, limit: int = 60) -> str:
    """``text`` quoted, cut to ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def seconds(value: object, what: str) -> "float | None":
    """``None`` or a float number of seconds (``ConfigError`` otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number of seconds, not {type(value).__name__}")
    return float(value)
