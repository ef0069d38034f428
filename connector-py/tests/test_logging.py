"""Rust tracing events reach Python logging; secrets stay out of them."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest

import connector
from connector.testing import LocalTunnel


@pytest.fixture
def debug_logs() -> Iterator[None]:
    connector.set_log_level(logging.DEBUG)
    yield
    connector.set_log_level(logging.WARNING)


def test_rust_events_reach_python_logging(debug_logs: None, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG, logger="connector")
    with LocalTunnel(1) as tunnel:
        echo = tunnel.echo_target()
        with tunnel.server.dial(echo.address, host="node-0") as stream:
            stream.sendall(b"x")
            assert stream.readexactly(1) == b"x"
    connector.flush_logs()
    records = [r for r in caplog.records if r.name.startswith("connector.core")]
    messages = [(r.name, r.levelno, r.getMessage()) for r in records]
    assert any(
        name == "connector.core.server" and level == logging.INFO and "accepting agents" in msg
        for name, level, msg in messages
    ), messages
    # Span fields give context: which dial, through which agent, to where.
    assert any(
        "dial succeeded" in msg and "request_id=" in msg and "agent=node-0" in msg and echo.address in msg
        for _, _, msg in messages
    ), messages
    # Tokens (token-node-0) never appear in what is logged.
    assert not any("token-node-0" in r.getMessage() for r in caplog.records)


def test_threshold_filters_rust_events(caplog) -> None:  # type: ignore[no-untyped-def]
    connector.set_log_level(logging.ERROR)
    try:
        caplog.set_level(logging.DEBUG, logger="connector")
        # Events emitted before the threshold changed may still be queued.
        connector.flush_logs()
        caplog.clear()
        with LocalTunnel(1):
            pass
        connector.flush_logs()
        assert not any(r.levelno < logging.ERROR and r.name.startswith("connector.core") for r in caplog.records)
    finally:
        connector.set_log_level(logging.WARNING)
