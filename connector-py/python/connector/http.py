"""``http.client`` through a tunnel: :class:`HTTPConnection` and
:class:`HTTPSConnection` are the standard library's classes, connecting
through a :class:`~connector.Server` instead of the local network::

    import ssl
    from connector.http import HTTPSConnection

    context = ssl.create_default_context(cafile="service-ca.pem")
    conn = HTTPSConnection(server, "10.0.0.7", 8443, context=context)
    conn.request("GET", "/healthz")
    print(conn.getresponse().read())

Everything else is ``http.client``'s own (TLS with the ``context`` and the
host name, keep-alive, ``set_tunnel`` for an HTTP proxy on the far side).
"""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Optional, Tuple

from .server import Server, _target

__all__ = ["HTTPConnection", "HTTPSConnection"]


class _Dialler:
    """``http.client``'s connection factory, dialling through ``server``."""

    def __init__(
        self, server: Server, agent: Optional[str], agent_host: Optional[str], dial_timeout: Optional[float]
    ) -> None:
        self.server = server
        self.agent = agent
        self.agent_host = agent_host
        self.dial_timeout = dial_timeout

    def __call__(
        self, address: Tuple[str, int], timeout: object = None, source_address: object = None
    ) -> socket.socket:
        # http.client passes its own timeout (or the "global default" sentinel).
        sock = self.server.create_connection(
            _target(*address), self.dial_timeout, agent=self.agent, host=self.agent_host
        )
        sock.settimeout(timeout if timeout is None or isinstance(timeout, (int, float)) else socket.getdefaulttimeout())
        return sock


class HTTPConnection(http.client.HTTPConnection):
    """:class:`http.client.HTTPConnection` whose connection is dialled through ``server``.

    ``host`` and ``port`` are the target as the agent reaches it (and the
    ``Host`` header). The agent is the one with id ``agent``, or else the one
    serving ``agent_host`` (:meth:`Server.dial`'s ``host``), or else the one
    serving ``host``. ``dial_timeout`` bounds the dial (default: the
    server's ``dial_timeout``); ``timeout`` is the socket's, as in
    ``http.client``.
    """

    def __init__(
        self,
        server: Server,
        host: str,
        port: Optional[int] = None,
        timeout: Optional[float] = None,
        *,
        agent: Optional[str] = None,
        agent_host: Optional[str] = None,
        dial_timeout: Optional[float] = None,
        blocksize: int = 8192,
    ) -> None:
        super().__init__(host, port, timeout=timeout, blocksize=blocksize)
        # http.client's hook for how the socket is made (its connect() does
        # the rest: TCP_NODELAY, set_tunnel).
        self._create_connection = _Dialler(server, agent, agent_host, dial_timeout)


class HTTPSConnection(http.client.HTTPSConnection):
    """:class:`http.client.HTTPSConnection` whose connection is dialled
    through ``server``; TLS runs end to end between this process and the
    target, with ``context`` (default: :func:`ssl.create_default_context`,
    checking the certificate against ``host``).

    The other arguments are those of :class:`HTTPConnection`.
    """

    def __init__(
        self,
        server: Server,
        host: str,
        port: Optional[int] = None,
        timeout: Optional[float] = None,
        *,
        context: Optional[ssl.SSLContext] = None,
        agent: Optional[str] = None,
        agent_host: Optional[str] = None,
        dial_timeout: Optional[float] = None,
        blocksize: int = 8192,
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context, blocksize=blocksize)
        self._create_connection = _Dialler(server, agent, agent_host, dial_timeout)
