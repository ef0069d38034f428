"""httpx through a tunnel: :class:`Transport` is an :class:`httpx.HTTPTransport`
(and :class:`AsyncTransport` an :class:`httpx.AsyncHTTPTransport`) whose
connections are dialled through a :class:`~connector.Server`::

    import httpx
    from connector.httpx import AsyncTransport, Transport

    with httpx.Client(transport=Transport(server, verify="service-ca.pem")) as client:
        print(client.get("https://10.0.0.7:8443/healthz").text)

    async with httpx.AsyncClient(transport=AsyncTransport(server, verify="service-ca.pem")) as client:
        print((await client.get("https://10.0.0.7:8443/healthz")).text)

Needs httpx (``pip install 'connector[httpx]'``; :class:`AsyncTransport`
runs on asyncio and needs anyio >= 4.10, which the extra requires). Everything but the network
is httpx's own: TLS (``verify``, ``cert``, end to end between this process and
the target), HTTP/1.1 and HTTP/2, the connection pool and its ``limits``,
``retries``. Dial failures become :class:`httpx.ConnectError` (or
:class:`httpx.ConnectTimeout`), with the :class:`connector.DialError` in the
exception's chain (``__cause__``/``__context__``).
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from typing import Any, ClassVar, Dict, Iterable, Iterator, Optional, Type, Union

try:
    import anyio
    import anyio.abc
    import anyio.streams.tls
    import httpcore
    import httpx
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("connector.httpx needs httpx: pip install 'connector[httpx]'") from e

from .errors import ConfigError, ConnectorError, DialTimeoutError
from .server import Server, _target

__all__ = ["AsyncTransport", "Transport"]


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
            return _is_readable(self._sock)
        return None


def _is_readable(sock: Optional[socket.socket]) -> bool:
    """Whether ``sock`` has something to read (for an idle pooled connection:
    the far side closed it)."""
    if sock is None:
        return True
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    return bool(select.select([sock], [], [], 0)[0])


_NO_UNIX_SOCKETS = "connections through a tunnel are TCP; a Unix socket path is not dialled"
"""Why the network backends refuse a Unix socket."""


class _Dialling:
    """Where the network backends dial: through ``server``, by the agent
    with id ``agent`` or else the one serving ``agent_host``."""

    def __init__(self, server: Server, agent: Optional[str], agent_host: Optional[str]) -> None:
        self._server = server
        self._agent = agent
        self._agent_host = agent_host


class _TunnelBackend(_Dialling, httpcore.NetworkBackend):
    """httpcore's network, dialling through ``server``."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: Optional[float] = None,
        local_address: Optional[str] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.NetworkStream:
        with _connect_errors():
            sock = self._server.create_connection(
                _target(host, port), timeout, agent=self._agent, host=self._agent_host
            )
        return _SocketStream(sock)

    def connect_unix_socket(
        self, path: str, timeout: Optional[float] = None, socket_options: Optional[Iterable[Any]] = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError(_NO_UNIX_SOCKETS)


@contextlib.contextmanager
def _connect_errors() -> Iterator[None]:
    """Turns a failed dial into httpcore's error (httpx makes it its own)."""
    try:
        yield
    except ConnectorError as e:
        error = httpcore.ConnectTimeout if isinstance(e, DialTimeoutError) else httpcore.ConnectError
        raise error(str(e)) from e


class _AsyncSocketStream(httpcore.AsyncNetworkStream):
    """httpcore's view of an anyio stream over a tunnel's socket (plain, or TLS)."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        try:
            with anyio.fail_after(timeout):
                return await self._stream.receive(max_bytes)
        except anyio.EndOfStream:
            return b""
        except TimeoutError as e:
            raise httpcore.ReadTimeout(str(e)) from e
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            raise httpcore.ReadError(str(e)) from e

    async def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        if not buffer:
            return
        try:
            with anyio.fail_after(timeout):
                await self._stream.send(buffer)
        except TimeoutError as e:
            raise httpcore.WriteTimeout(str(e)) from e
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            raise httpcore.WriteError(str(e)) from e

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: Optional[str] = None, timeout: Optional[float] = None
    ) -> httpcore.AsyncNetworkStream:
        try:
            with anyio.fail_after(timeout):
                tls = await anyio.streams.tls.TLSStream.wrap(
                    self._stream, hostname=server_hostname, ssl_context=ssl_context, standard_compatible=False
                )
        except BaseException as e:
            await self.aclose()
            if isinstance(e, TimeoutError):
                raise httpcore.ConnectTimeout(str(e)) from e
            if isinstance(e, (anyio.BrokenResourceError, anyio.EndOfStream, OSError)):  # ssl.SSLError included
                raise httpcore.ConnectError(str(e)) from e
            raise
        return _AsyncSocketStream(tls)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._stream.extra(anyio.streams.tls.TLSAttribute.ssl_object, None)
        if info == "socket":
            return self._stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if info == "is_readable":
            return _is_readable(self._stream.extra(anyio.abc.SocketAttribute.raw_socket, None))
        return None


class _AsyncTunnelBackend(_Dialling, httpcore.AsyncNetworkBackend):
    """httpcore's asyncio network, dialling through ``server``."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: Optional[float] = None,
        local_address: Optional[str] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.AsyncNetworkStream:
        with _connect_errors():
            sock = await self._server._socket_async(_target(host, port), self._agent, self._agent_host, timeout)
        return _AsyncSocketStream(await anyio.abc.UNIXSocketStream.from_socket(sock))

    async def connect_unix_socket(
        self, path: str, timeout: Optional[float] = None, socket_options: Optional[Iterable[Any]] = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError(_NO_UNIX_SOCKETS)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


_DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
"""httpx's default limits."""


def _pool_settings(
    verify: Union[ssl.SSLContext, str, bool],
    cert: Any,
    trust_env: bool,
    http1: bool,
    http2: bool,
    limits: httpx.Limits,
    retries: int,
) -> dict[str, Any]:
    """The keyword arguments of httpcore's connection pools for a
    transport's settings, as httpx's own transports build them."""
    return {
        "ssl_context": httpx.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env),
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
        "http1": http1,
        "http2": http2,
        "retries": retries,
    }


class _TunnelTransport:
    """The constructor :class:`Transport` and :class:`AsyncTransport` share:
    httpx's own transport (the next class in the MRO) with its settings, then
    its pool (a ``_pool_class``) replaced by one with the same settings whose
    network backend (a ``_backend_class``) dials through ``server``."""

    # Any: each transport pairs its own pool and backend classes, which these
    # annotations cannot say; so ``_pool`` keeps the type httpx's transport gives it.
    _pool_class: ClassVar[Type[Any]]
    """httpcore's pool that httpx's transport builds (and this one replaces)."""
    _backend_class: ClassVar[Type[Any]]
    """httpcore's network backend for that pool, dialling through the tunnel."""

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
        limits: httpx.Limits = _DEFAULT_LIMITS,
        retries: int = 0,
    ) -> None:
        if agent is not None and agent_host is not None:
            raise ConfigError("pass agent= or agent_host=, not both")
        self._check_requirements()
        settings: Dict[str, Any] = dict(
            verify=verify, cert=cert, trust_env=trust_env, http1=http1, http2=http2, limits=limits, retries=retries
        )
        super().__init__(**settings)
        # httpx builds its pool on the local network; this one dials through
        # the tunnel (the same settings, httpcore's public API).
        if not isinstance(getattr(self, "_pool", None), self._pool_class):
            raise RuntimeError(f"connector.httpx does not support this httpx version ({httpx.__version__})")
        self._pool = self._pool_class(
            **_pool_settings(**settings),
            network_backend=self._backend_class(server, agent, agent_host),
        )

    def _check_requirements(self) -> None:
        """Raises :class:`ImportError` if what this transport needs besides httpx is missing."""


class Transport(_TunnelTransport, httpx.HTTPTransport):
    """An :class:`httpx.HTTPTransport` whose connections go through ``server``:
    ``httpx.Client(transport=Transport(server, ...))``.

    The target of each connection is the request URL's ``host:port``, as the
    agent reaches it. The agent is the one with id ``agent``, or else the one
    serving ``agent_host`` (:meth:`Server.dial`'s ``host``), or else the one
    serving the URL's host. The connect timeout (``httpx.Timeout(connect=)``)
    bounds the dial. ``verify``, ``cert``, ``trust_env``, ``http1``,
    ``http2``, ``limits`` and ``retries`` are :class:`httpx.HTTPTransport`'s.
    """

    _pool_class = httpcore.ConnectionPool
    _backend_class = _TunnelBackend


class AsyncTransport(_TunnelTransport, httpx.AsyncHTTPTransport):
    """:class:`Transport` for :class:`httpx.AsyncClient` on asyncio:
    ``httpx.AsyncClient(transport=AsyncTransport(server, ...))``. Cancelling
    a request's task cancels its dial."""

    _pool_class = httpcore.AsyncConnectionPool
    _backend_class = _AsyncTunnelBackend

    def _check_requirements(self) -> None:
        if not hasattr(anyio.abc.UNIXSocketStream, "from_socket"):
            raise ImportError(f"connector.httpx.AsyncTransport needs anyio >= 4.10, not {_anyio_version()}")


def _anyio_version() -> str:
    """The installed anyio's version."""
    from importlib.metadata import version

    return version("anyio")
