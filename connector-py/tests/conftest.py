"""Shared helpers for the connector tests: loopback only, real QUIC and TCP."""

from __future__ import annotations

import faulthandler
import hashlib
import socket
import sys
import threading
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


class StuckTarget:
    """A listening socket whose accept queue is full and never drained, so a
    further TCP connect gets no answer (its SYN is dropped): a dial to it
    stays in progress until its deadline."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.fillers: List[socket.socket] = []
        # Fill the accept queue: connect until a connect no longer completes.
        for _ in range(8):
            s = socket.socket()
            s.settimeout(0.5)
            try:
                s.connect(self.listener.getsockname())
            except (socket.timeout, OSError):
                s.close()
                break
            self.fillers.append(s)

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
