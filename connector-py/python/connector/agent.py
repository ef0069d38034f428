"""The agent: dials out to a server and serves its dials from its own network."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Iterable, Optional, Type, Union

from . import _connector
from ._pem import PemSource, pem_bytes, seconds
from .errors import ConfigError

__all__ = ["Agent"]


class Agent:
    """A connector agent, started at once; it reconnects with backoff until stopped.

    Options mirror the Rust ``AgentSetup``:

    - ``server``: the server's ``host:port``; ``ca``: the CA(s) its certificate
      must chain to; ``server_name``: the name expected on that certificate
      (default: the host part of ``server``).
    - Credential: ``token`` or ``token_file`` (re-read at each connection), and/or
      a client certificate ``cert`` + ``key`` (mTLS).
    - ``identifiers``: what the agent serves (``"host=node-a,ipv4=10.0.0.5,cidr=10.0.0.0/24,default-route=true"``).
    - ``allow``: destination rules (``"10.0.0.0/8"``, ``"127.0.0.1:8080"``,
      ``"*.svc.cluster.local:443"``). Default: anything except loopback,
      unspecified and cloud-metadata addresses.
    - ``max_connections``, ``keepalive``, ``idle_timeout`` (seconds).

    Use as a context manager, or call :meth:`stop`.
    """

    def __init__(
        self,
        server: str,
        *,
        ca: PemSource,
        agent_id: str,
        token: Optional[str] = None,
        token_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        cert: Optional[PemSource] = None,
        key: Optional[PemSource] = None,
        server_name: Optional[str] = None,
        identifiers: str = "",
        allow: Iterable[str] = (),
        max_connections: Optional[int] = None,
        keepalive: Optional[float] = None,
        idle_timeout: Optional[float] = None,
    ) -> None:
        if isinstance(allow, str):
            allow = [allow]
        try:
            self._inner = _connector.Agent(
                server=server,
                ca_pem=pem_bytes(ca, "ca"),
                agent_id=agent_id,
                token=token,
                token_file=None if token_file is None else os.fspath(token_file),
                cert_pem=None if cert is None else pem_bytes(cert, "cert"),
                key_pem=None if key is None else pem_bytes(key, "key"),
                server_name=server_name,
                identifiers=identifiers,
                allow=list(allow),
                max_connections=max_connections,
                keepalive=seconds(keepalive, "keepalive"),
                idle_timeout=seconds(idle_timeout, "idle_timeout"),
            )
        except (TypeError, OverflowError) as e:
            raise ConfigError(str(e)) from e

    @property
    def agent_id(self) -> str:
        """This agent's id."""
        return self._inner.agent_id

    @property
    def status(self) -> str:
        """``"connecting"``, ``"connected"``, ``"rejected"``, ``"disconnected"`` or ``"stopped"``."""
        return self._inner.status

    @property
    def status_reason(self) -> Optional[str]:
        """Why the agent is rejected or disconnected (``None`` otherwise)."""
        return self._inner.status_reason

    def wait_connected(self, timeout: Optional[float] = None) -> str:
        """Waits until the server has registered the agent; returns the server's id.

        Raises :class:`connector.AuthError` if the server rejects the agent,
        :class:`connector.TimeoutError` after ``timeout`` seconds and
        :class:`connector.ClosedError` if the agent was stopped.
        """
        return self._inner.wait_connected(seconds(timeout, "timeout"))

    def stop(self) -> None:
        """Disconnects and stops reconnecting. Safe to call twice."""
        self._inner.stop()

    close = stop

    def __enter__(self) -> "Agent":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return repr(self._inner)
