"""The tunnel server: agents connect to it, and it dials through them."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl as _ssl
from typing import Any, Callable, Iterable, List, Mapping, Optional, Tuple, Union

from . import _connector
from ._closing import ClosedOnExit
from ._connector import AgentInfo, AsyncStream, AuthRequest, Accept, Reject, Stream
from ._pem import PemSource, pem_bytes, seconds
from ._settings import SERVER_RENAMED, settings
from .errors import ConfigError

__all__ = ["Authenticator", "Server", "TokenSpec"]

Authenticator = Callable[[AuthRequest], Union[Accept, Reject]]
"""A callable deciding whether an agent may connect: gets an :class:`AuthRequest`,
returns :class:`Accept` or :class:`Reject`. If it raises, the agent is rejected
and the exception logged on ``connector.auth``."""

TokenSpec = Union[str, Tuple[str, str]]
"""What a token grants: an identity (which may then claim ``host=<identity>``
only), or ``(identity, allow)`` where ``allow`` is ``"*"`` (anything) or
identifiers such as ``"host=node-a,cidr=10.0.0.0/24"``."""


def _token_entries(tokens: Mapping[str, TokenSpec]) -> List[Tuple[str, str, Optional[str]]]:
    entries: List[Tuple[str, str, Optional[str]]] = []
    for token, spec in tokens.items():
        if isinstance(spec, str):
            entries.append((token, spec, None))
        elif isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(s, str) for s in spec):
            entries.append((token, spec[0], spec[1]))
        else:
            # Never echo the token itself.
            raise ConfigError("each tokens= value must be an identity or an (identity, allow) pair of strings")
    return entries


_NOT_SETTINGS = ("cert", "key", "tokens", "client_ca", "authenticator")
"""Keywords that are not settings of the schema: PEM material, token
entries and the authenticator (``cert``/``key``/``client_ca`` are PEM text,
bytes or a path, read here)."""


class _TunnelSocket(socket.socket):
    """A local socket spliced to a tunnelled connection: TCP-level options
    (``TCP_NODELAY``, which ``http.client`` and others set) are accepted and
    ignored, since the connection to the target is the agent's."""

    def setsockopt(self, level: int, *args: Any) -> None:
        if level != socket.IPPROTO_TCP:
            super().setsockopt(level, *args)


def _target(host: str, port: int) -> str:
    """``host:port`` for a dial (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _host_of(target: str) -> str:
    """The host part of ``host:port`` (``[v6]:port`` without brackets)."""
    host = target.rsplit(":", 1)[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _grace(grace: float) -> float:
    value = seconds(grace, "grace")
    if value is None:
        raise ConfigError("grace must be a number of seconds, not None")
    return value


class Server(ClosedOnExit):
    """A connector server: accepts agents over QUIC (and TCP) and dials through them.

    The options are the settings of ``connector server`` (``docs/settings.md``:
    each is described there, and ``connector server --help``) under their
    Python names, checked by the same Rust code; ``None`` keeps the default.
    Durations are in seconds (or a text such as ``"500ms"``).

    Authentication (at least one is required), tried in this order:

    - ``tokens``: ``{token: identity}`` or ``{token: (identity, allow)}``;
      ``tokens_file``: the ``connector server --tokens`` format, re-read when it changes.
    - ``client_ca``: CA(s) for agents' client certificates (mTLS). With
      ``client_certificates="authenticate"`` (the default without an
      ``authenticator``) a verified certificate admits the agent by itself: its
      common name is the identity, its DNS/IP names what it may claim. With
      ``"verify-only"`` (the default *with* an ``authenticator``) TLS only
      verifies the chain and the authenticator decides, seeing the certificate
      in :class:`AuthRequest` (``certificates``, ``certificate_name``,
      ``certificate_identifiers``).
    - ``kube_service_accounts``: Kubernetes ServiceAccounts (``"NAMESPACE/NAME"``)
      whose tokens admit agents, checked with a TokenReview against the
      apiserver of ``kubeconfig`` (default: the pod's in-cluster configuration),
      for ``kube_audiences`` (default ``["connector"]``); a token bound to a
      pod may serve only that pod's node. ``kube_unbound_identifiers`` says
      what a token without a node may claim (``"none"``, the default: refused),
      ``kube_review_cache_ttl`` how long a review is reused.
    - ``authenticator``: a Python callable (see :data:`Authenticator`).

    Other options: ``listen`` (UDP ``ip:port``), ``server_id`` (reported to
    agents), ``server_count`` (replicas behind the agents' address),
    ``max_agents``, ``max_streams_per_agent``, ``max_pending_dials`` (dials
    waiting for an agent's answer, server-wide), ``max_pre_hello``,
    ``max_handshakes``, ``max_unadmitted_per_source``, ``auth_timeout``, ``hello_timeout``,
    ``dial_timeout`` (the default of :meth:`dial`'s ``timeout``), ``keepalive``,
    ``idle_timeout``, ``proxy_strategies`` (how host dials pick an agent),
    ``tcp_listen`` (the TCP fallback listener: ``"same"`` as the QUIC address,
    the default; ``"off"``; or an ``ip:port``), ``congestion`` (``"auto"``,
    ``"cubic"`` or ``"bbr"``) and ``max_udp_payload`` (upper bound of QUIC path
    MTU discovery). With ``lease_namespace`` the server counts the replicas by
    their Leases (``lease_label``, ``lease_duration``, ``lease_renew_interval``)
    and reports that count instead of ``server_count``.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        cert: PemSource,
        key: PemSource,
        listen: str = "127.0.0.1:0",
        tokens: Optional[Mapping[str, TokenSpec]] = None,
        tokens_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        client_ca: Optional[PemSource] = None,
        client_certificates: Optional[str] = None,
        kube_service_accounts: Optional[Union[str, Iterable[str]]] = None,
        kube_audiences: Optional[Union[str, Iterable[str]]] = None,
        kube_unbound_identifiers: Optional[str] = None,
        kube_review_cache_ttl: Optional[float] = None,
        kubeconfig: Optional[Union[str, "os.PathLike[str]"]] = None,
        authenticator: Optional[Authenticator] = None,
        server_id: Optional[str] = None,
        server_count: Optional[int] = None,
        lease_namespace: Optional[str] = None,
        lease_label: Optional[str] = None,
        lease_duration: Optional[float] = None,
        lease_renew_interval: Optional[float] = None,
        max_agents: Optional[int] = None,
        max_streams_per_agent: Optional[int] = None,
        max_pending_dials: Optional[int] = None,
        max_pre_hello: Optional[int] = None,
        max_handshakes: Optional[int] = None,
        max_unadmitted_per_source: Optional[int] = None,
        auth_timeout: Optional[float] = None,
        hello_timeout: Optional[float] = None,
        dial_timeout: Optional[float] = None,
        keepalive: Optional[float] = None,
        idle_timeout: Optional[float] = None,
        proxy_strategies: Optional[Union[str, Iterable[str]]] = None,
        tcp_listen: Optional[str] = None,
        congestion: Optional[str] = None,
        max_udp_payload: Optional[int] = None,
    ) -> None:
        options = settings(locals(), besides=_NOT_SETTINGS, renamed=SERVER_RENAMED)
        try:
            self._inner = _connector.Server(
                options,
                cert_pem=pem_bytes(cert, "cert"),
                key_pem=pem_bytes(key, "key"),
                tokens=None if tokens is None else _token_entries(tokens),
                client_ca_pem=None if client_ca is None else pem_bytes(client_ca, "client_ca"),
                authenticator=authenticator,
            )
        except (TypeError, OverflowError) as e:
            raise ConfigError(str(e)) from e
        self._closed = False

    @property
    def address(self) -> str:
        """Where agents connect: the bound UDP address, ``ip:port``."""
        return self._inner.address

    @property
    def port(self) -> int:
        """The bound UDP port."""
        return self._inner.port

    @property
    def tcp_address(self) -> Optional[str]:
        """Where agents connect over the TCP fallback, ``ip:port`` (``None`` when ``tcp_listen="off"``)."""
        return self._inner.tcp_address

    @property
    def server_id(self) -> str:
        """This server's id, as reported to agents (:meth:`Agent.wait_connected` returns it)."""
        return self._inner.server_id

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def agents(self) -> List[AgentInfo]:
        """The connected agents, sorted by agent id."""
        return self._inner.agents()

    def wait_for_agents(
        self, count: int = 1, *, agent_ids: Iterable[str] = (), timeout: Optional[float] = None
    ) -> List[AgentInfo]:
        """Waits until at least ``count`` agents, including every one of
        ``agent_ids``, are connected; returns :meth:`agents`.

        Raises :class:`connector.TimeoutError` after ``timeout`` seconds.
        """
        return self._inner.wait_for_agents(count, list(agent_ids), seconds(timeout, "timeout"))

    async def wait_for_agents_async(
        self, count: int = 1, *, agent_ids: Iterable[str] = (), timeout: Optional[float] = None
    ) -> List[AgentInfo]:
        """:meth:`wait_for_agents` for asyncio; cancelling the awaiting task stops the wait."""
        return await self._inner.wait_for_agents_async(count, list(agent_ids), seconds(timeout, "timeout"))

    def dial(
        self,
        target: str,
        agent: Optional[str] = None,
        host: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> Stream:
        """Opens a TCP connection to ``target`` (``host:port``) from an agent's network.

        The agent is the one with id ``agent``, or else the one serving
        ``host``, or else the one serving the target's host. Blocks (with the
        GIL released, interruptible by Ctrl-C) for at most ``timeout`` seconds
        (default: the server's ``dial_timeout``, 30 s unless set).

        Raises :class:`connector.DialError` (with ``.code``), or
        :class:`connector.DialTimeoutError` when the deadline passes.
        """
        return self._inner.dial(target, agent, host, seconds(timeout, "timeout"))

    async def dial_async(
        self,
        target: str,
        agent: Optional[str] = None,
        host: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> AsyncStream:
        """:meth:`dial` for asyncio; cancelling the awaiting task cancels the dial."""
        return await self._inner.dial_async(target, agent, host, seconds(timeout, "timeout"))

    def create_connection(
        self,
        target: str,
        timeout: Optional[float] = None,
        *,
        agent: Optional[str] = None,
        host: Optional[str] = None,
    ) -> socket.socket:
        """:meth:`dial`, as a connected :class:`socket.socket`, like
        :func:`socket.create_connection`: for code that needs a real socket
        (``http.client``, :mod:`ssl`, ``select``, a library's own socket
        handling). See :mod:`connector.http` and :mod:`connector.httpx` for
        HTTP clients.

        The socket is one end of a local socket pair; the runtime copies
        between its other end and the tunnelled connection (both ways, end of
        file becoming a half-close: ``sock.shutdown(socket.SHUT_WR)`` reaches
        the target as end of file). ``timeout``: seconds the dial may take,
        and the socket's timeout, as :func:`socket.create_connection` sets it;
        ``None``: the server's ``dial_timeout``, and a blocking socket. TCP
        options (``TCP_NODELAY``...) are accepted and ignored: the agent's
        TCP connection to the target is its own.

        Raises what :meth:`dial` raises.
        """
        fd = self._inner.dial_socket(target, agent, host, seconds(timeout, "timeout"))
        sock = _TunnelSocket(fileno=fd)
        sock.settimeout(timeout)
        return sock

    async def open_connection(
        self,
        target: str,
        *,
        agent: Optional[str] = None,
        host: Optional[str] = None,
        timeout: Optional[float] = None,
        limit: int = 2**16,
        ssl: Union[_ssl.SSLContext, bool, None] = None,
        server_hostname: Optional[str] = None,
    ) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """:meth:`dial` for asyncio's streams, like :func:`asyncio.open_connection`:
        returns a real :class:`asyncio.StreamReader` and
        :class:`asyncio.StreamWriter` (``readline``, ``readuntil``,
        ``readexactly``, ``at_eof``, ``write`` + ``drain``, ``write_eof``,
        ``close`` + ``wait_closed``).

        ``timeout`` bounds the dial (default: the server's ``dial_timeout``).
        ``limit`` is the reader's buffer limit; ``ssl`` (``True`` or an
        :class:`ssl.SSLContext`) speaks TLS to the target, checking
        ``server_hostname`` (default: the target's host). Cancelling the
        awaiting task cancels the dial. Raises what :meth:`dial_async` raises.
        """
        sock = await self._socket_async(target, agent, host, timeout)
        try:
            if ssl and server_hostname is None:
                server_hostname = _host_of(target)
            return await asyncio.open_connection(
                sock=sock, limit=limit, ssl=ssl, server_hostname=server_hostname if ssl else None
            )
        except BaseException:
            sock.close()
            raise

    async def _socket_async(
        self, target: str, agent: Optional[str], host: Optional[str], timeout: Optional[float]
    ) -> socket.socket:
        """:meth:`create_connection` for asyncio (a blocking socket, which the
        caller hands to its event loop). The socket exists before the dial so
        that a cancelled dial leaves nothing open."""
        fd, dialled = self._inner.dial_socket_async(target, agent, host, seconds(timeout, "timeout"))
        sock = _TunnelSocket(fileno=fd)
        try:
            await dialled
        except BaseException:
            sock.close()
            raise
        return sock

    def drain(self, grace: float = 30.0) -> None:
        """Drains the server, then shuts it down: what ``connector server`` does on SIGTERM.

        At once, new dials fail with :class:`connector.DialError` (``kind``
        ``"shutting_down"``), new agents are refused, and every agent is told
        to go away (it connects to another replica). Streams already dialled
        keep working and may finish within ``grace`` seconds; then the rest is
        closed. Blocks (with the GIL released) until done: as soon as every
        agent has acknowledged and every stream has ended, and after at most
        ``grace`` plus 3 seconds. Ctrl-C stops the wait, not the drain; call
        :meth:`close` to stop at once.
        """
        self._inner.drain(_grace(grace))

    async def drain_async(self, grace: float = 30.0) -> None:
        """:meth:`drain` for asyncio; cancelling the awaiting task stops the wait, not the drain."""
        await self._inner.drain_async(_grace(grace))

    def close(self) -> None:
        """Stops accepting agents, refuses new dials and disconnects every agent."""
        self._closed = True
        self._inner.close()

    def __repr__(self) -> str:
        return repr(self._inner)
