"""Shared helpers for the connector tests: loopback only, real QUIC and TCP."""

from __future__ import annotations

import faulthandler
import hashlib
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, List, Tuple, TypeVar

import pytest

# A hang is a failure (with every thread's traceback), not a wait.
HANG_GUARD_SECONDS = 240


@pytest.fixture(autouse=True)
def hang_guard() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_GUARD_SECONDS, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


def pattern(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random bytes."""
    import random

    return random.Random(seed).getrandbits(size * 8).to_bytes(size, "little")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HoldTarget:
    """A TCP server on 127.0.0.1 that accepts connections and keeps them,
    silent, until the test sends on or closes them."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.connections: List[socket.socket] = []

    def accept(self) -> socket.socket:
        conn, _ = self.listener.accept()
        self.connections.append(conn)
        return conn

    def close(self) -> None:
        for c in self.connections:
            c.close()
        self.listener.close()


@pytest.fixture
def hold_target() -> Iterator[HoldTarget]:
    target = HoldTarget()
    yield target
    target.close()


def accept_queue(port: int) -> Tuple[int, int]:
    """The accept queue of the listener on 127.0.0.1:``port``: (length, limit),
    as the kernel reports it to ``ss`` (iproute2): a listener's Recv-Q is the
    connections waiting for accept(), its Send-Q the backlog limit (what it
    passed to listen(), capped by net.core.somaxconn). /proc/net/tcp has the
    length but not the limit."""
    out = subprocess.run(
        ["ss", "-ltnH", f"src 127.0.0.1:{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    if len(out) < 3 or out[0] != "LISTEN":
        raise RuntimeError(f"no listener on 127.0.0.1:{port} in `ss -ltn`: {out}")
    return int(out[1]), int(out[2])


class StuckTarget:
    """A listening socket whose accept queue is full and never drained, so a
    further TCP connect gets no answer: Linux drops a SYN for a listener whose
    accept queue is full (whatever tcp_abort_on_overflow says, which only
    concerns the final ACK), and a dial to it stays in progress until its
    deadline.

    Whether the queue is full is read from the kernel (/proc/net/tcp), not
    guessed from how long a connect takes: each filler's connect completes
    (the queue had room for it), and the next is made only once the kernel
    shows the previous one queued.
    """

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        port = self.listener.getsockname()[1]
        self.address = "127.0.0.1:%d" % port
        self.fillers: List[socket.socket] = []
        length, limit = accept_queue(port)
        # The kernel's "full" is length > limit (listen(0) still queues one).
        while length <= limit:
            self.fillers.append(socket.create_connection(("127.0.0.1", port)))
            # The handshake's last ACK is queued by the kernel right after the
            # client's connect returns; wait until it shows (bounded by the hang guard).
            while (length := accept_queue(port)[0]) < len(self.fillers):
                time.sleep(0.001)

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.listener.close()


@pytest.fixture
def stuck_target() -> Iterator[StuckTarget]:
    target = StuckTarget()
    yield target
    target.close()


def closed_port() -> str:
    """An address on 127.0.0.1 where nothing listens."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


T = TypeVar("T")


def run_in_thread(fn: Callable[..., T], *args: Any) -> Tuple[threading.Thread, List[T], List[BaseException]]:
    """Starts fn(*args) in a thread; returns (thread, result list, error list)."""
    result: List[T] = []
    error: List[BaseException] = []

    def body() -> None:
        try:
            result.append(fn(*args))
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            error.append(e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, result, error
