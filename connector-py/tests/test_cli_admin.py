"""The `connector` binary's admin endpoints (`--admin`), read the way
Prometheus and kubelet probes read them: /metrics parsed by the reference
Python parser (prometheus_client), /healthz and /readyz by status code."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
from typing import Dict, Iterator, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from connector.testing import EchoTarget
from test_interop import Process, connector_bin


def get(addr: str, path: str) -> Tuple[int, str]:
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def scrape(addr: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    status, text = get(addr, "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def connect(proxy: str, target: str) -> Tuple[socket.socket, str]:
    """Sends CONNECT through the plain frontend; returns the socket and the status line."""
    host, port = proxy.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "the proxy closed before answering"
        head += chunk
    return sock, head.split(b"\r\n")[0].decode()


def admin_addr(process: Process) -> str:
    match = re.search(r"listen=(\S+)", process.wait_for("admin endpoints listening"))
    assert match
    return match.group(1)


@pytest.fixture
def tunnel(tmp_path) -> Iterator[Tuple[str, str, str, str]]:  # type: ignore[no-untyped-def]
    """A server and a node-a agent from the CLI, both with --admin; yields
    (server admin, agent admin, CONNECT proxy, QUIC address)."""
    binary = connector_bin()
    pki = tmp_path / "pki"
    subprocess.run([binary, "dev-pki", "--out", str(pki)], check=True, capture_output=True, timeout=60)
    server = Process(
        [
            binary, "server", "--listen", "127.0.0.1:0", "--server-id", "srv-admin",
            "--cert", str(pki / "server.pem"), "--key", str(pki / "server-key.pem"),
            "--tokens", str(pki / "tokens"), "--connect-plain", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        ]
    )  # fmt: skip
    agent = None
    try:
        quic = re.search(r"listen=(\S+)", server.wait_for("accepting agents"))
        proxy = re.search(r"listen=tcp://(\S+)", server.wait_for("HTTP CONNECT frontend listening"))
        assert quic and proxy
        server_admin = admin_addr(server)
        agent = Process(
            [
                binary, "agent", "--server", quic.group(1), "--server-name", "localhost",
                "--agent-id", "node-a", "--ca", str(pki / "ca.pem"), "--token-file", str(pki / "node-a.token"),
                "--identifiers", "host=node-a,ipv4=127.0.0.1", "--allow", "127.0.0.1/32",
                "--admin", "127.0.0.1:0",
            ]
        )  # fmt: skip
        agent_admin = admin_addr(agent)
        agent.wait_for("connected")
        yield server_admin, agent_admin, proxy.group(1), quic.group(1)
    finally:
        if agent is not None:
            agent.stop()
        server.stop()


def test_metrics_count_dials_agents_and_bytes_and_probes_answer(tunnel) -> None:  # type: ignore[no-untyped-def]
    server_admin, agent_admin, proxy, _ = tunnel
    echo = EchoTarget()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()

    ok, status = connect(proxy, echo.address)
    assert status.endswith("200 Connection established") or " 200 " in status, status
    payload = b"x" * 100_000
    ok.sendall(payload)
    received = b""
    while len(received) < len(payload):
        received += ok.recv(65536)
    assert received == payload
    refused, status = connect(proxy, f"127.0.0.1:{closed_port}")
    assert " 502 " in status, status
    refused.close()
    nobody, status = connect(proxy, "node-z:10250")
    assert " 503 " in status, status
    nobody.close()

    # The first tunnel is still open while both sides are scraped.
    server = scrape(server_admin)
    assert server[("connector_server_agents_connected", (("transport", "quic"),))] == 1
    assert server[("connector_server_agents_connected", (("transport", "tcp"),))] == 0
    assert server[("connector_server_info", (("server_id", "srv-admin"),))] == 1
    assert server[("connector_server_agent_connections_total", ())] == 1
    assert server[("connector_server_dials_total", (("result", "ok"),))] == 1
    assert server[("connector_server_dials_total", (("result", "refused"),))] == 1
    assert server[("connector_server_dials_total", (("result", "no_agent"),))] == 1
    assert server[("connector_server_dial_duration_seconds_count", ())] == 3
    assert server[("connector_server_dial_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert server[("connector_server_tunnels_active", ())] == 1
    assert server[("connector_server_bytes_to_targets_total", ())] == len(payload)
    assert server[("connector_server_bytes_from_targets_total", ())] == len(payload)

    agent = scrape(agent_admin)
    assert agent[("connector_agent_connected", ())] == 1
    assert agent[("connector_agent_servers_connected", ())] == 1
    assert agent[("connector_agent_servers_expected", ())] == 1
    assert agent[("connector_agent_sessions", (("transport", "quic"),))] == 1
    assert agent[("connector_agent_connects_total", ())] == 1
    assert agent[("connector_agent_dials_total", (("result", "ok"),))] == 1
    assert agent[("connector_agent_dials_total", (("result", "refused"),))] == 1
    assert agent[("connector_agent_tunnels_active", ())] == 1
    ok.close()

    for admin in (server_admin, agent_admin):
        assert get(admin, "/healthz") == (200, "ok\n")
        assert get(admin, "/readyz") == (200, "ok\n")
        assert get(admin, "/nope")[0] == 404


def test_agent_without_a_server_is_alive_but_not_ready(tmp_path) -> None:  # type: ignore[no-untyped-def]
    binary = connector_bin()
    pki = tmp_path / "pki"
    subprocess.run([binary, "dev-pki", "--out", str(pki)], check=True, capture_output=True, timeout=60)
    unused = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unused.bind(("127.0.0.1", 0))  # held, so nothing else answers on it
    agent = Process(
        [
            binary, "agent", "--server", f"127.0.0.1:{unused.getsockname()[1]}", "--server-name", "localhost",
            "--agent-id", "node-a", "--ca", str(pki / "ca.pem"), "--token-file", str(pki / "node-a.token"),
            "--admin", "127.0.0.1:0",
        ]
    )  # fmt: skip
    try:
        admin = admin_addr(agent)
        assert get(admin, "/healthz") == (200, "ok\n")
        status, body = get(admin, "/readyz")
        assert status == 503 and "holds a session with 0 of 1 server replicas" in body
        metrics = scrape(admin)
        assert metrics[("connector_agent_connected", ())] == 0
    finally:
        agent.stop()
        unused.close()


def test_json_logs_are_one_object_per_line_with_fields(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    binary = connector_bin()
    pki = tmp_path / "pki"
    subprocess.run([binary, "dev-pki", "--out", str(pki)], check=True, capture_output=True, timeout=60)
    server = Process(
        [
            binary, "--log-format", "json", "server", "--listen", "127.0.0.1:0", "--server-id", "srv-json",
            "--cert", str(pki / "server.pem"), "--key", str(pki / "server-key.pem"), "--tokens", str(pki / "tokens"),
        ]
    )  # fmt: skip
    try:
        event = json.loads(server.wait_for("accepting agents"))
        assert event["level"] == "INFO"
        assert event["fields"]["message"] == "accepting agents"
        assert event["fields"]["server_id"] == "srv-json"
        assert event["fields"]["listen"].startswith("127.0.0.1:")
    finally:
        server.stop()
