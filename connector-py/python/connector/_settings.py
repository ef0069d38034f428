"""Constructor keyword arguments into the settings schema of the Rust core
(``connector_core::settings``), which parses and checks every value exactly
as the ``connector`` binary's flags and the C API's keys."""

from __future__ import annotations

import os
from typing import Any, Collection, Dict, Mapping

SERVER_RENAMED: Mapping[str, str] = {"tokens_file": "tokens", "congestion": "congestion_control"}
"""``Server`` keywords whose setting has another name (``tokens`` is the file's)."""

AGENT_RENAMED: Mapping[str, str] = {"congestion": "congestion_control"}
"""``Agent`` keywords whose setting has another name."""


def settings(options: Mapping[str, Any], *, besides: Collection[str], renamed: Mapping[str, str]) -> Dict[str, Any]:
    """The settings among a constructor's ``locals()``: everything but ``self``
    and ``besides`` (what is not a setting), renamed, paths as text, other
    iterables as lists. ``None`` (keep the default) is passed on and skipped."""
    out: Dict[str, Any] = {}
    for name, value in options.items():
        if name == "self" or name in besides:
            continue
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        elif not isinstance(value, (str, bytes, int, float, list, tuple)) and value is not None:
            try:
                value = list(value)
            except TypeError:
                pass  # the extension names the setting and the type
        out[renamed.get(name, name)] = value
    return out
