"""The public surface: fixtures, targets, agents' information, typing files."""

from __future__ import annotations

import concurrent.futures
import pathlib
import threading

from conftest import HANG_GUARD_SECONDS, accept_queue

import connector
import connector.testing
from connector.http import HTTPConnection
from connector.testing import LocalTunnel


def test_fixture_and_http_target(connector_tunnel: LocalTunnel) -> None:
    web = connector_tunnel.http_target({"/status": b"all good"})
    with connector_tunnel.server.dial(web.address, host="node-0") as stream:
        stream.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = stream.readall()
    assert response.startswith(b"HTTP/1.1 200")
    assert response.endswith(b"all good")


def test_agent_information(connector_tunnel: LocalTunnel) -> None:
    (info,) = connector_tunnel.server.agents()
    assert isinstance(info, connector.AgentInfo)
    assert (info.agent_id, info.identity, info.identifiers) == ("node-0", "node-0", "host=node-0")
    assert info.remote_addr is not None and info.remote_addr.startswith("127.0.0.1:")
    assert info.active_streams == 0 and info.connected_for >= 0
    assert info.transport == "quic" and info.server_id == connector_tunnel.server.server_id
    assert info.connected_since > 1e9 and info.rtt is not None and info.rtt >= 0
    assert info.last_disconnect is None and info.last_disconnect_at is None
    web = connector_tunnel.http_target({"/": b"x" * 1000})
    with connector_tunnel.server.dial(web.address, host="node-0") as stream:
        request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        stream.sendall(request)
        response = stream.readall()
    (info,) = connector_tunnel.server.agents()
    assert (info.bytes_to_agent, info.bytes_from_agent) == (len(request), len(response))
    assert "node-0" in repr(info)
    agent = connector_tunnel.agents[0]
    assert agent.agent_id == "node-0" and agent.status == "connected" and agent.status_reason is None
    assert connector_tunnel.server.address.startswith("127.0.0.1:")
    assert connector_tunnel.server.port == int(connector_tunnel.server.address.rsplit(":", 1)[1])


def test_mtls_agent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = connector.testing.ThrowawayCa()
    cert, key = ca.issue("connector server", ["127.0.0.1"])
    agent_cert, agent_key = ca.issue("node-m", ["node-m"])
    (tmp_path / "agent.pem").write_text(agent_cert)
    with connector.Server(cert=cert, key=key, client_ca=ca.cert_pem) as server, connector.Agent(
        server.address, ca=ca.cert_pem.encode(), agent_id="node-m",
        cert=tmp_path / "agent.pem", key=agent_key, allow=["127.0.0.1/32"],
    ):  # fmt: skip
        (info,) = server.wait_for_agents(agent_ids=["node-m"], timeout=60)
        assert info.identity == "node-m" and info.identifiers == "host=node-m"
        echo = connector.testing.EchoTarget()
        with server.dial(echo.address, host="node-m") as stream:
            assert stream.write(b"mtls") == 4
            assert stream.readexactly(4) == b"mtls"
        echo.close()


def test_package_ships_type_information() -> None:
    root = pathlib.Path(connector.__file__).parent
    assert (root / "py.typed").exists()
    assert (root / "_connector.pyi").exists()
    assert connector.__version__
    for name in set(connector.__all__) - {"Authenticator", "TokenSpec"}:
        assert getattr(connector, name).__doc__, name
    assert issubclass(connector.TimeoutError, TimeoutError)
    assert issubclass(connector.ConfigError, ValueError)
    assert issubclass(connector.StreamError, ConnectionError)


def test_http_target_serves_concurrent_requests_concurrently(connector_tunnel: LocalTunnel) -> None:
    # Each request is answered only once all N have arrived: a target that
    # serves one request (or a few) at a time never answers.
    n = 50
    arrived = threading.Barrier(n, timeout=HANG_GUARD_SECONDS / 2)

    def together(path: str) -> bytes:
        arrived.wait()
        return f"all {n} at once".encode()

    web = connector_tunnel.http_target({"/together": together})
    # The listener queues a burst of N connections instead of dropping SYNs
    # beyond socketserver's default backlog of 5 (each dropped one waits
    # for the client's retransmission, a second or more).
    assert accept_queue(web.port)[1] >= n

    def get(_: int) -> bytes:
        conn = HTTPConnection(connector_tunnel.server, "127.0.0.1", web.port, agent="node-0")
        try:
            conn.request("GET", "/together")
            return conn.getresponse().read()
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        assert list(pool.map(get, range(n))) == [f"all {n} at once".encode()] * n
