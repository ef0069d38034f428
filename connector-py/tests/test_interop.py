"""A Python agent serves a `connector server` process started from the CLI."""

from __future__ import annotations

import os
import pathlib
import queue
import re
import subprocess
import threading
from typing import Iterator, List, Set, Tuple

import pytest

import connector
from connector.testing import EchoTarget


def connector_bin() -> str:
    path = os.environ.get("CONNECTOR_BIN")
    if not path:
        pytest.fail("set CONNECTOR_BIN to the `connector` binary (run-tests.sh builds it and sets it)")
    return path


class Process:
    """A child process whose stderr lines are collected by a thread."""

    def __init__(self, args: List[str]) -> None:
        env = dict(os.environ, CONNECTOR_LOG="info")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: List[str] = []
        self.returned: Set[int] = set()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, needle: str) -> str:
        """The first log line containing `needle` not returned before (hang guard: 60 s).

        Lines already read while waiting for something else count too: tasks that start
        together log in either order.
        """
        for index, line in enumerate(self.seen):
            if index not in self.returned and needle in line:
                self.returned.add(index)
                return line
        while True:
            try:
                line = self.lines.get(timeout=60)
            except queue.Empty:
                raise AssertionError(f"no log line with {needle!r}; saw:\n" + "".join(self.seen)) from None
            self.seen.append(line)
            if needle in line:
                self.returned.add(len(self.seen) - 1)
                return line

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def cli_server(tmp_path: pathlib.Path) -> Iterator[Tuple[pathlib.Path, str, str]]:
    binary = connector_bin()
    pki = tmp_path / "pki"
    subprocess.run([binary, "dev-pki", "--out", str(pki)], check=True, capture_output=True, timeout=60)
    server = Process(
        [
            binary, "server",
            "--listen", "127.0.0.1:0",
            "--cert", str(pki / "server.pem"),
            "--key", str(pki / "server-key.pem"),
            "--tokens", str(pki / "tokens"),
            "--server-id", "cli-server",
            "--proxy-strategies", "destHost,default",
            "--connect-plain", "127.0.0.1:0",
        ]
    )  # fmt: skip
    try:
        listen = re.search(r"listen=(\S+)", server.wait_for("accepting agents"))
        connect = re.search(r"listen=(?:tcp://)?(\S+)", server.wait_for("HTTP CONNECT frontend listening"))
        assert listen and connect
        yield pki, listen.group(1), connect.group(1)
    finally:
        server.stop()


def test_python_agent_serves_the_cli_server(cli_server) -> None:  # type: ignore[no-untyped-def]
    pki, quic_addr, connect_addr = cli_server
    echo = EchoTarget()
    with connector.Agent(
        quic_addr,
        ca=pki / "ca.pem",
        agent_id="node-a",
        token_file=pki / "node-a.token",
        allow=["127.0.0.1/32"],
    ) as agent:
        assert agent.wait_connected(timeout=60) == "cli-server"
        # The CLI server's HTTP CONNECT frontend dials through the Python agent.
        import socket

        host, port = connect_addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=60) as client:
            client.sendall(f"CONNECT {echo.address} HTTP/1.1\r\nHost: {echo.address}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(1)
                assert chunk, head
                head += chunk
            assert head.startswith(b"HTTP/1.1 200"), head
            client.sendall(b"interop works")
            client.shutdown(socket.SHUT_WR)
            body = b""
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    break
                body += chunk
            assert body == b"interop works"


def test_cli_server_rejects_a_wrong_token(cli_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pki, quic_addr, _ = cli_server
    with connector.Agent(quic_addr, ca=pki / "ca.pem", agent_id="node-a", token="not-the-token") as agent:
        with pytest.raises(connector.AuthError) as err:
            agent.wait_connected(timeout=60)
    assert "not recognised" in err.value.reason
