"""The agent: dials out to a server and serves its dials from its own network."""

from __future__ import annotations

import os
from typing import Iterable, Optional, Sequence, Union

from . import _connector
from ._closing import ClosedOnExit
from ._pem import PemSource, pem_bytes, seconds
from ._settings import AGENT_RENAMED, settings
from .errors import ConfigError

__all__ = ["Agent"]

_NOT_SETTINGS = ("ca", "token", "cert", "key")
"""Keywords that are not settings of the schema: PEM material (text, bytes
or a path, read here) and the token itself."""


class Agent(ClosedOnExit):
    """A connector agent, started at once; it reconnects with backoff until stopped.

    The options are the settings of ``connector agent`` (``docs/settings.md``)
    under their Python names, checked by the same Rust code; ``None`` keeps
    the default. Durations are in seconds (or a text such as ``"500ms"``).

    - ``server``: the server's ``host:port``, or a list of them (one replica
      each); ``ca``: the CA(s) its certificate must chain to; ``server_name``:
      the name expected on that certificate (default: each address's host part).
    - Credential: ``token`` or ``token_file`` (re-read at each connection), and/or
      a client certificate ``cert`` + ``key`` (mTLS).
    - ``identifiers``: what the agent serves (``"host=node-a,ipv4=10.0.0.5,cidr=10.0.0.0/24,default-route=true"``).
    - ``allow``: destination rules (``"10.0.0.0/8"``, ``"127.0.0.1:8080"``,
      ``"*.svc.cluster.local:443"``). Default: anything except loopback,
      unspecified, link-local and cloud-metadata addresses.
    - ``max_connections`` (tunnelled connections served at once; more are
      answered ``OVERLOADED``), ``tunnel_idle_timeout`` (closes a tunnelled
      connection idle this long both ways; default never),
      ``tunnel_stall_timeout`` (closes a tunnelled connection one side of
      which has read nothing of what waits for it this long; default 180 s,
      ``0``: never), ``keepalive``, ``idle_timeout``.
    - Transport: ``transport`` (``"auto"``: QUIC with fallback to TCP, the
      default; ``"quic"``; ``"tcp"``), ``tcp_server`` (the server's TCP address,
      default the same as ``server``; single server only), ``proxy`` (HTTP proxy
      URL for TCP, or ``"off"``; default ``HTTPS_PROXY``/``NO_PROXY``),
      ``quic_connect_timeout`` and ``quic_probe_interval`` (auto mode),
      ``congestion`` (``"auto"``, ``"cubic"`` or ``"bbr"``), ``max_udp_payload``.

    Not exposed: the fallback's degradation thresholds (Rust defaults apply).

    Use as a context manager, or call :meth:`stop`.
    """

    def __init__(
        self,
        server: Union[str, Sequence[str]],
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
        tunnel_idle_timeout: Optional[float] = None,
        tunnel_stall_timeout: Optional[float] = None,
        keepalive: Optional[float] = None,
        idle_timeout: Optional[float] = None,
        transport: Optional[str] = None,
        tcp_server: Optional[str] = None,
        proxy: Optional[str] = None,
        quic_connect_timeout: Optional[float] = None,
        quic_probe_interval: Optional[float] = None,
        congestion: Optional[str] = None,
        max_udp_payload: Optional[int] = None,
    ) -> None:
        if isinstance(allow, str):
            allow = [allow]
        if isinstance(server, str):
            server = [server]
        options = settings(locals(), besides=_NOT_SETTINGS, renamed=AGENT_RENAMED)
        try:
            self._inner = _connector.Agent(
                options,
                ca_pem=pem_bytes(ca, "ca"),
                token=token,
                cert_pem=None if cert is None else pem_bytes(cert, "cert"),
                key_pem=None if key is None else pem_bytes(key, "key"),
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

    def metrics(self) -> str:
        """The agent's metrics in the Prometheus text format (the
        ``connector_agent_*`` series ``connector agent --admin`` serves), e.g.
        ``connector_agent_go_aways_total``: the servers that told it to go away."""
        return self._inner.metrics()

    def wait_connected(self, timeout: Optional[float] = None) -> str:
        """Waits until the server has registered the agent; returns the server's id.

        Raises :class:`connector.AuthError` if the server rejects the agent,
        :class:`connector.TimeoutError` after ``timeout`` seconds (its message
        gives the last attempt's failure: a certificate the CA does not sign,
        no server listening...) and
        :class:`connector.ClosedError` if the agent was stopped.
        """
        return self._inner.wait_connected(seconds(timeout, "timeout"))

    async def wait_connected_async(self, timeout: Optional[float] = None) -> str:
        """:meth:`wait_connected` for asyncio; cancelling the awaiting task stops the wait."""
        return await self._inner.wait_connected_async(seconds(timeout, "timeout"))

    def stop(self) -> None:
        """Disconnects and stops reconnecting. Safe to call twice."""
        self._inner.stop()

    close = stop

    def __repr__(self) -> str:
        return repr(self._inner)
