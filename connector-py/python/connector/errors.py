"""The exceptions connector raises, all rooted at :class:`ConnectorError`."""

from __future__ import annotations

import builtins
import enum
from typing import Optional, Union

__all__ = [
    "AuthError",
    "ClosedError",
    "ConfigError",
    "ConnectorError",
    "DialCode",
    "DialError",
    "DialTimeoutError",
    "ListenError",
    "StreamError",
    "TimeoutError",
]


class DialCode(enum.IntEnum):
    """Why a dial failed: the protocol's dial codes (``DialError.code``)."""

    OK = 0
    """The agent connected (never raised)."""
    REFUSED = 1
    """The target refused the connection (TCP RST: nothing listens on the port)."""
    UNREACHABLE = 2
    """No route to the target, or no agent for it, or the agent's connection failed."""
    TIMED_OUT = 3
    """The dial did not finish before its deadline."""
    DNS_FAILURE = 4
    """The target's name did not resolve on the agent's side."""
    DENIED_BY_POLICY = 5
    """The agent's destination policy forbids the target."""
    OVERLOADED = 6
    """The agent is at its limit of tunnelled connections."""
    INVALID_TARGET = 7
    """The target is not ``host:port``."""
    INTERNAL = 8
    """Any other failure."""


class ConnectorError(Exception):
    """Base class of every exception raised by connector."""


class ConfigError(ConnectorError, ValueError):
    """Invalid settings or arguments (bad certificate, unknown identifier, ...)."""


class TimeoutError(ConnectorError, builtins.TimeoutError):
    """A deadline passed (``timeout=`` of a call, or a stream's ``timeout``).

    Also a builtin :class:`TimeoutError`, so ``except TimeoutError`` catches it.
    """


class DialError(ConnectorError):
    """A dial failed.

    Attributes:
        code: the :class:`DialCode` (an ``int`` if this version does not know it).
        kind: where it failed: ``"failed"`` (the agent reported ``code``),
            ``"no_agent"``, ``"agent_busy"`` (the server's ``max_streams_per_agent``),
            ``"too_many_pending_dials"`` (the server's ``max_pending_dials``),
            ``"timed_out"``, ``"invalid_target"``, ``"transport"``, ``"protocol"`` or
            ``"shutting_down"``.
        agent: the agent's id, when one was chosen.
        target: the target, when known.
    """

    code: Union[DialCode, int]
    kind: str
    agent: Optional[str]
    target: Optional[str]

    def __init__(
        self,
        message: str,
        *,
        code: int,
        kind: str = "failed",
        agent: Optional[str] = None,
        target: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        try:
            self.code = DialCode(code)
        except ValueError:
            self.code = code
        self.kind = kind
        self.agent = agent
        self.target = target


class DialTimeoutError(DialError, TimeoutError):
    """A dial that timed out: both a :class:`DialError` (code ``TIMED_OUT``)
    and a :class:`TimeoutError`."""


class AuthError(ConnectorError):
    """The server rejected the agent.

    Attributes:
        code: the server's reject code (e.g. ``"Unauthenticated"``).
        reason: the server's reason.
    """

    code: str
    reason: str

    def __init__(self, message: str, *, code: str = "Unauthenticated", reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class ListenError(ConnectorError, builtins.OSError):
    """A listener could not be bound: the address is in use (``errno``
    :data:`errno.EADDRINUSE`), not available on this machine
    (``EADDRNOTAVAIL``), or needs privileges (``EACCES``).

    An :class:`OSError`: ``errno`` and ``strerror`` are set (``errno`` is
    ``None`` if the system gave none); ``except OSError`` catches it.
    """


class StreamError(ConnectorError, builtins.ConnectionError):
    """A transfer failed: the connection was reset, lost, or ended early."""


class ClosedError(ConnectorError):
    """The stream, server or agent was closed (also raised in other threads
    blocked on a stream when it is closed)."""
