"""httpx through a tunnel: :class:`Transport` is an :class:`httpx.HTTPTransport`
whose connections are dialled through a :class:`~connector.Server`::

    import httpx
    from connector.httpx import Transport

    with httpx.Client(transport=Transport(server, verify="service-ca.pem")) as client:
        print(client.get("https://10.0.0.7:8443/healthz").text)

Needs httpx (``pip install 'connector[httpx]'``). Everything but the network
is httpx's own: TLS (``verify``, ``cert``, end to end between this process and
the target), HTTP/1.1 and HTTP/2, the connection pool and its ``limits``,
``retries``. Dial failures become :class:`httpx.ConnectError` (or
:class:`httpx.ConnectTimeout`), with the :class:`connector.DialError` in the
exception's chain (``__cause__``/``__context__``).
"""

from __future__ import annotations

import select
import socket
import ssl
from typing import Any, Iterable, Optional, Union

try:
    import httpcore
    import httpx
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("connector.httpx needs httpx: pip install 'connector[httpx]'") from e

from .errors import ConfigError, ConnectorError, DialTimeoutError
from .server import Server

__all__ = ["Transport"]


def _target(host: str, port: int) -> str:
    """``host:port`` for a dial (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class _SocketStream(httpcore.NetworkStream):
    """httpcore's view of a socket (plain, or TLS once :meth:`start_tls` ran)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        try:
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)
        except socket.timeout as e:
            raise httpcore.ReadTimeout(str(e)) from e
        except OSError as e:
            raise httpcore.ReadError(str(e)) from e

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(buffer)
        except socket.timeout as e:
            raise httpcore.WriteTimeout(str(e)) from e
        except OSError as e:
            raise httpcore.WriteError(str(e)) from e

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: Optional[str] = None, timeout: Optional[float] = None
    ) -> httpcore.NetworkStream:
        try:
            self._sock.settimeout(timeout)
            return _SocketStream(ssl_context.wrap_socket(self._sock, server_hostname=server_hostname))
        except socket.timeout as e:
            self.close()
            raise httpcore.ConnectTimeout(str(e)) from e
        except OSError as e:  # ssl.SSLError included
            self.close()
            raise httpcore.ConnectError(str(e)) from e

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            # An SSLSocket answers what httpcore and users ask of it
            # (selected_alpn_protocol, version, getpeercert).
            return self._sock if isinstance(self._sock, ssl.SSLSocket) else None
        if info == "socket":
            return self._sock
        if info == "is_readable":
            # An idle pooled connection that is readable was closed by the far side.
            if isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
                return True
            return bool(select.select([self._sock], [], [], 0)[0])
        return None


class _TunnelBackend(httpcore.NetworkBackend):
    """httpcore's network, dialling through ``server``."""

    def __init__(self, server: Server, agent: Optional[str], agent_host: Optional[str]) -> None:
        self._server = server
        self._agent = agent
        self._agent_host = agent_host

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: Optional[float] = None,
        local_address: Optional[str] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.NetworkStream:
        try:
            sock = self._server.create_connection(
                _target(host, port), timeout, agent=self._agent, host=self._agent_host
            )
        except DialTimeoutError as e:
            raise httpcore.ConnectTimeout(str(e)) from e
        except ConnectorError as e:
            raise httpcore.ConnectError(str(e)) from e
        return _SocketStream(sock)

    def connect_unix_socket(
        self, path: str, timeout: Optional[float] = None, socket_options: Optional[Iterable[Any]] = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("connections through a tunnel are TCP; a Unix socket path is not dialled")


class Transport(httpx.HTTPTransport):
    """An :class:`httpx.HTTPTransport` whose connections go through ``server``:
    ``httpx.Client(transport=Transport(server, ...))``.

    The target of each connection is the request URL's ``host:port``, as the
    agent reaches it. The agent is the one with id ``agent``, or else the one
    serving ``agent_host`` (:meth:`Server.dial`'s ``host``), or else the one
    serving the URL's host. The connect timeout (``httpx.Timeout(connect=)``)
    bounds the dial. ``verify``, ``cert``, ``trust_env``, ``http1``,
    ``http2``, ``limits`` and ``retries`` are :class:`httpx.HTTPTransport`'s.
    """

    def __init__(
        self,
        server: Server,
        *,
        agent: Optional[str] = None,
        agent_host: Optional[str] = None,
        verify: Union[ssl.SSLContext, str, bool] = True,
        cert: Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
        retries: int = 0,
    ) -> None:
        if agent is not None and agent_host is not None:
            raise ConfigError("pass agent= or agent_host=, not both")
        super().__init__(
            verify=verify, cert=cert, trust_env=trust_env, http1=http1, http2=http2, limits=limits, retries=retries
        )
        # httpx builds its pool on the local network; this one dials through
        # the tunnel (the same settings, httpcore's public API).
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError(f"connector.httpx does not support this httpx version ({httpx.__version__})")
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=http1,
            http2=http2,
            retries=retries,
            network_backend=_TunnelBackend(server, agent, agent_host),
        )
