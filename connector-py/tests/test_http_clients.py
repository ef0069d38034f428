"""The standard HTTP clients through a tunnel: a real socket from
``server.create_connection``, ``http.client`` (``connector.http``) and httpx
(``connector.httpx``, sync and asyncio), each doing HTTPS GETs to a TLS target that the agent
dials, with the certificate checked end to end."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Optional, Set, Tuple

import httpx
import pytest
from conftest import closed_port

import connector
from connector.http import HTTPConnection, HTTPSConnection
from connector.httpx import AsyncTransport, Transport
from connector.testing import LocalTunnel

BODY = b"hello over TLS, through the agent"


def open_fds() -> Set[Tuple[str, str]]:
    """This process's open descriptors and what each refers to (``socket:[inode]``...)."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
        except FileNotFoundError:  # the one listdir itself used
            pass
    return fds


def carried(tunnel: LocalTunnel) -> int:
    """Bytes the agent has carried back from targets so far."""
    (info,) = tunnel.server.agents()
    return info.bytes_from_agent


def test_create_connection_is_a_socket_spliced_to_the_tunnel(connector_tunnel: LocalTunnel) -> None:
    server = connector_tunnel.server
    echo = connector_tunnel.echo_target()
    with server.create_connection(echo.address, agent="node-0") as sock:
        assert isinstance(sock, socket.socket) and sock.fileno() >= 0
        assert sock.gettimeout() is None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted, as on a TCP socket
        with sock.makefile("rwb") as f:
            f.write(b"a line\n")
            f.flush()
            assert f.readline() == b"a line\n"
        # A half-close reaches the target as end of file; its answer still comes back.
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        assert got == b"last words"
    with server.create_connection(echo.address, timeout=30, agent="node-0") as sock:
        assert sock.gettimeout() == 30
    # A failed dial raises and leaves no descriptor behind.
    before = open_fds()
    with pytest.raises(connector.DialError) as err:
        server.create_connection(closed_port(), agent="node-0")
    assert err.value.code == connector.DialCode.REFUSED
    assert open_fds() - before == set()  # (others may have closed meanwhile)


def test_http_client_https_get_through_the_tunnel(connector_tunnel: LocalTunnel) -> None:
    web = connector_tunnel.https_target({"/hello": BODY})
    context = ssl.create_default_context(cadata=connector_tunnel.ca.cert_pem)
    before = carried(connector_tunnel)
    conn = HTTPSConnection(connector_tunnel.server, "localhost", web.port, context=context, agent="node-0")
    try:
        conn.request("GET", "/hello")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == BODY
        # TLS ran end to end: the target's certificate was checked against "localhost".
        assert isinstance(conn.sock, ssl.SSLSocket)
        peer = conn.sock.getpeercert()
        assert peer is not None and (("commonName", "connector test HTTPS target"),) in peer["subject"]
        # Keep-alive: a second request on the same connection.
        conn.request("GET", "/again")
        assert conn.getresponse().read() == b"hello from /again"
    finally:
        conn.close()
    assert carried(connector_tunnel) - before > 2 * len(BODY)  # the responses came through the agent

    # A context that does not trust the target's CA refuses it (the TLS is real).
    untrusting = HTTPSConnection(connector_tunnel.server, "localhost", web.port, agent="node-0")
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.request("GET", "/hello")
    untrusting.close()


def test_http_client_plain_http_and_dial_errors(connector_tunnel: LocalTunnel) -> None:
    web = connector_tunnel.http_target({"/status": b"all good"})
    conn = HTTPConnection(connector_tunnel.server, "127.0.0.1", web.port, timeout=30, agent_host="node-0")
    conn.request("GET", "/status")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"all good")
    assert conn.sock is not None and conn.sock.gettimeout() == 30
    conn.close()
    host, port = closed_port().split(":")
    refused = HTTPConnection(connector_tunnel.server, host, int(port), agent="node-0")
    with pytest.raises(connector.DialError) as err:
        refused.request("GET", "/")
    assert err.value.code == connector.DialCode.REFUSED


def test_httpx_https_get_through_the_tunnel(connector_tunnel: LocalTunnel) -> None:
    web = connector_tunnel.https_target({"/hello": BODY})
    context = ssl.create_default_context(cadata=connector_tunnel.ca.cert_pem)
    before = carried(connector_tunnel)
    with httpx.Client(transport=Transport(connector_tunnel.server, agent="node-0", verify=context)) as client:
        response = client.get(f"https://localhost:{web.port}/hello")
        assert response.status_code == 200
        assert response.content == BODY
        # Pooled: the second request reuses the connection.
        assert client.get(f"https://localhost:{web.port}/again").text == "hello from /again"
        stream = response.extensions["network_stream"]
        assert isinstance(stream.get_extra_info("ssl_object"), ssl.SSLSocket)
    assert carried(connector_tunnel) - before > 2 * len(BODY)

    # The target's certificate is checked: without the CA, verification fails.
    with httpx.Client(transport=Transport(connector_tunnel.server, agent="node-0")) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(f"https://localhost:{web.port}/hello")
        # A failed dial is httpx's ConnectError, with the DialError in its chain.
        with pytest.raises(httpx.ConnectError, match="connection refused") as err:
            client.get(f"http://{closed_port()}/")
        cause: Optional[BaseException] = err.value
        while cause is not None and not isinstance(cause, connector.DialError):
            cause = cause.__cause__ or cause.__context__
        assert isinstance(cause, connector.DialError) and cause.code == connector.DialCode.REFUSED
    with pytest.raises(connector.ConfigError):
        Transport(connector_tunnel.server, agent="node-0", agent_host="node-0")


@pytest.mark.asyncio
async def test_httpx_async_client_through_the_tunnel(connector_tunnel: LocalTunnel) -> None:
    web = connector_tunnel.https_target({"/hello": BODY})
    context = ssl.create_default_context(cadata=connector_tunnel.ca.cert_pem)
    before = carried(connector_tunnel)
    transport = AsyncTransport(connector_tunnel.server, agent="node-0", verify=context)
    async with httpx.AsyncClient(transport=transport) as client:
        responses = await asyncio.gather(*(client.get(f"https://localhost:{web.port}/hello") for _ in range(4)))
        assert [r.content for r in responses] == [BODY] * 4
        assert (await client.get(f"https://localhost:{web.port}/again")).text == "hello from /again"
        with pytest.raises(httpx.ConnectError, match="connection refused"):
            await client.get(f"http://{closed_port()}/")
    assert carried(connector_tunnel) - before > 4 * len(BODY)
    async with httpx.AsyncClient(transport=AsyncTransport(connector_tunnel.server, agent="node-0")) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"https://localhost:{web.port}/hello")
