"""Helpers for tunnel tests: a local server with agents, and targets to dial.

Installed with the package as a pytest plugin, so these fixtures are there in
every test session:

- ``connector_tunnel``: a :class:`LocalTunnel` with one agent (``node-0``);
- ``connector_tunnel_factory``: ``factory(agents=N, **options)`` making more
  (all closed after the test).

Example::

    def test_echo(connector_tunnel):
        echo = connector_tunnel.echo_target()
        with connector_tunnel.server.dial(echo.address, host="node-0") as s:
            s.sendall(b"ping")
            s.shutdown_write()
            assert s.readall() == b"ping"
"""

from __future__ import annotations

import http.server
import os
import socket
import ssl
import tempfile
import threading
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import _connector
from ._closing import ClosedOnExit
from ._connector import EchoTarget, ThrowawayCa, diagnostics, wait_busy, wait_idle
from .agent import Agent
from .server import Authenticator, Server

__all__ = [
    "EchoTarget",
    "HttpTarget",
    "LocalTunnel",
    "Route",
    "ThrowawayCa",
    "diagnostics",
    "rust_echo_transfer",
    "wait_busy",
    "wait_idle",
]


def rust_echo_transfer(
    server: Server, target: str, total: int, chunk: int = 256 * 1024, agent: Optional[str] = None
) -> float:
    """The Rust-API baseline of a bulk transfer: dials ``target`` (an echo
    server) through ``server`` with the Rust API (no Python in the data path),
    sends ``total`` bytes in ``chunk``-byte writes while reading the echo back,
    and returns the seconds it took."""
    return _connector.rust_echo_transfer(server._inner, target, total, chunk, agent)


Route = Union[bytes, Callable[[str], bytes]]
"""What :class:`HttpTarget` answers on a path: a body, or a callable given the
path and returning the body (called in the thread serving the request, so it
may block without holding up other requests)."""


class HttpTarget:
    """An HTTP/1.1 server on 127.0.0.1 (threads of this process), or HTTPS
    with ``tls=(cert_pem, key_pem)`` (e.g. from :meth:`ThrowawayCa.issue`).

    ``GET /anything`` answers ``200`` with the body ``hello from /anything``,
    or with ``routes[path]`` when given (see :data:`Route`). Each connection
    is served by its own thread and the listen backlog holds
    :data:`socket.SOMAXCONN` connections, so concurrent requests are served
    concurrently (as a real service would), not queued behind each other.
    """

    def __init__(
        self, routes: Optional[Mapping[str, Route]] = None, *, tls: Optional[Tuple[str, str]] = None
    ) -> None:
        table: Dict[str, Route] = dict(routes or {})
        context: Optional[ssl.SSLContext] = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            # ssl loads a certificate chain from files only; they are read at once.
            with tempfile.TemporaryDirectory(prefix="connector-http-target-") as tmp:
                cert_file, key_file = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
                for path, pem in ((cert_file, tls[0]), (key_file, tls[1])):
                    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                        f.write(pem)
                context.load_cert_chain(cert_file, key_file)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                route = table.get(self.path, f"hello from {self.path}".encode())
                body = route if isinstance(route, bytes) else route(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            # socketserver's default backlog is 5: a burst of connections
            # beyond it waits for the client's SYN retransmission (1 s, 3 s...).
            request_queue_size = socket.SOMAXCONN

            def finish_request(self, request: Any, client_address: Any) -> None:
                # The TLS handshake runs in the connection's own thread.
                if context is not None:
                    try:
                        request = context.wrap_socket(request, server_side=True)
                    except (OSError, ssl.SSLError):
                        return
                super().finish_request(request, client_address)

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away is not the target's problem

        self.tls = tls is not None
        """Whether this target speaks HTTPS."""
        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="connector-http-target", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, to dial."""
        return f"127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        """The port."""
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        """Stops the server."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class LocalTunnel(ClosedOnExit):
    """A server on loopback with ``agents`` agents connected to it, ready to dial.

    Agents are named ``node-0``, ``node-1``, ... (or ``agent_ids``), each
    claiming ``host=<its id>`` and allowed to reach ``127.0.0.0/8``, so a dial
    with ``host="node-3"`` goes through ``node-3``. They authenticate with the
    tokens ``token-<id>``; with ``authenticator`` given, the server asks it
    too (tokens first). ``agent_options`` go to each of these agents'
    :class:`Agent` (e.g. ``{"max_connections": 1}``); ``server_options`` to the
    :class:`Server`. The constructor returns once every agent is connected.
    """

    def __init__(
        self,
        agents: int = 1,
        *,
        agent_ids: Optional[Sequence[str]] = None,
        authenticator: Optional[Authenticator] = None,
        agent_options: Optional[Mapping[str, Any]] = None,
        timeout: float = 60.0,
        **server_options: Any,
    ) -> None:
        self.ca = ThrowawayCa("connector test CA")
        """The CA that issued the server's certificate (agents trust it)."""
        cert, key = self.ca.issue("connector server", ["localhost", "127.0.0.1"])
        ids = list(agent_ids) if agent_ids is not None else [f"node-{i}" for i in range(agents)]
        self.server = Server(
            cert=cert,
            key=key,
            tokens={f"token-{i}": (i, "*") for i in ids},
            authenticator=authenticator,
            **server_options,
        )
        """The server."""
        self.agents: List[Agent] = []
        """The agents, in order."""
        self._closers: List[Callable[[], None]] = []
        try:
            for agent_id in ids:
                self.add_agent(agent_id, wait=False, **dict(agent_options or {}))
            self.server.wait_for_agents(len(ids), agent_ids=ids, timeout=timeout)
            for agent in self.agents:
                agent.wait_connected(timeout=timeout)
        except BaseException:
            self.close()
            raise

    def add_agent(
        self, agent_id: str, *, token: Optional[str] = None, wait: bool = True, **options: Any
    ) -> Agent:
        """Starts one more agent (token ``token-<agent_id>`` unless given,
        claiming ``host=<agent_id>``, allowed ``127.0.0.0/8``); with ``wait``,
        returns once it is connected (``AuthError`` if rejected)."""
        options.setdefault("identifiers", f"host={agent_id}")
        options.setdefault("allow", ["127.0.0.0/8"])
        agent = Agent(
            self.server.address,
            ca=self.ca.cert_pem,
            agent_id=agent_id,
            token=f"token-{agent_id}" if token is None else token,
            **options,
        )
        self.agents.append(agent)
        if wait:
            agent.wait_connected(timeout=60)
        return agent

    def echo_target(self) -> EchoTarget:
        """A TCP echo server on 127.0.0.1, closed with the tunnel."""
        target = EchoTarget()
        self._closers.append(target.close)
        return target

    def http_target(self, routes: Optional[Mapping[str, Route]] = None) -> HttpTarget:
        """An HTTP server on 127.0.0.1 (see :class:`HttpTarget`), closed with the tunnel."""
        target = HttpTarget(routes)
        self._closers.append(target.close)
        return target

    def https_target(self, routes: Optional[Mapping[str, Route]] = None) -> HttpTarget:
        """An HTTPS server on 127.0.0.1 (see :class:`HttpTarget`) whose
        certificate :attr:`ca` issued for ``localhost`` and ``127.0.0.1``
        (trust ``ca.cert_pem``, e.g. ``ssl.create_default_context(cadata=tunnel.ca.cert_pem)``);
        closed with the tunnel."""
        target = HttpTarget(routes, tls=self.ca.issue("connector test HTTPS target", ["localhost", "127.0.0.1"]))
        self._closers.append(target.close)
        return target

    def close(self) -> None:
        """Stops the agents, the server and the targets."""
        for agent in self.agents:
            agent.stop()
        if hasattr(self, "server"):
            self.server.close()
        for close in reversed(self._closers):
            close()
        self._closers.clear()


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def connector_tunnel() -> Iterator[LocalTunnel]:
        """A :class:`LocalTunnel` with one agent, ``node-0``."""
        with LocalTunnel(1) as tunnel:
            yield tunnel

    @pytest.fixture
    def connector_tunnel_factory() -> Iterator[Callable[..., LocalTunnel]]:
        """Makes :class:`LocalTunnel` s (``factory(agents=N, **options)``), closed after the test."""
        made: List[LocalTunnel] = []

        def factory(agents: int = 1, **options: Any) -> LocalTunnel:
            tunnel = LocalTunnel(agents, **options)
            made.append(tunnel)
            return tunnel

        yield factory
        for tunnel in made:
            tunnel.close()
