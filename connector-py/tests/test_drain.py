"""Server.drain (a rolling update): new dials refused at once, agents told to
go away, open streams finish, then the drain ends. Real QUIC on loopback.

The grace is an hour: a drain that waited it out would trip the hang guard
(conftest.HANG_GUARD_SECONDS), so these tests also show that the drain ends
once the open stream is closed."""

from __future__ import annotations

import asyncio
from typing import Callable

import pytest

from conftest import run_in_thread
from connector import Agent, ConfigError, DialError, Server
from connector.testing import LocalTunnel

GRACE = 3600.0


def go_aways(agent: Agent) -> int:
    """The agent's ``connector_agent_go_aways_total``."""
    for line in agent.metrics().splitlines():
        name, _, value = line.partition(" ")
        if name == "connector_agent_go_aways_total":
            return int(value)
    raise AssertionError("no connector_agent_go_aways_total in the agent's metrics")


def drain_begun(server: Server, target: str, drain_ended: Callable[[], bool]) -> None:
    """Returns once the drain has begun: until then a dial through an unknown
    agent fails with ``no_agent`` without leaving the server, from then on
    with ``shutting_down``. A drain that ended already (one that does
    nothing) fails the test."""
    while True:
        with pytest.raises(DialError) as probe:
            server.dial(target, agent="nobody", timeout=30)
        if probe.value.kind != "no_agent":
            assert probe.value.kind == "shutting_down", probe.value
            return
        assert not drain_ended(), "the drain returned with a stream open"


async def drain_begun_async(server: Server, target: str, drain_ended: Callable[[], bool]) -> None:
    """:func:`drain_begun` with ``dial_async``."""
    while True:
        with pytest.raises(DialError) as probe:
            await server.dial_async(target, agent="nobody", timeout=30)
        if probe.value.kind != "no_agent":
            assert probe.value.kind == "shutting_down", probe.value
            return
        assert not drain_ended(), "the drain returned with a stream open"


def test_drain_refuses_dials_and_lets_open_streams_finish(connector_tunnel: LocalTunnel) -> None:
    server, agent = connector_tunnel.server, connector_tunnel.agents[0]
    echo = connector_tunnel.echo_target()
    stream = server.dial(echo.address, agent="node-0", timeout=30)
    stream.timeout = 30
    assert go_aways(agent) == 0

    thread, _, errors = run_in_thread(server.drain, GRACE)
    drain_begun(server, echo.address, lambda: not thread.is_alive())

    # A new dial is refused: the server is shutting down.
    with pytest.raises(DialError) as refused:
        server.dial(echo.address, agent="node-0", timeout=30)
    assert refused.value.kind == "shutting_down" and "shutting down" in str(refused.value)

    # The stream dialled before still carries bytes both ways.
    stream.sendall(b"still open while draining")
    assert stream.readexactly(25) == b"still open while draining"
    assert thread.is_alive(), "the drain waits for the open stream"

    # Once it is closed, the drain ends (well before its grace).
    stream.shutdown_write()
    assert stream.readall() == b""
    stream.close()
    thread.join()
    assert errors == []
    # The agent was told to go away (it acknowledged before the drain ended).
    assert go_aways(agent) == 1
    server.drain(GRACE)  # drained already: returns at once
    with pytest.raises(DialError) as after:
        server.dial(echo.address, agent="node-0", timeout=30)
    assert after.value.kind == "shutting_down"
    server.close()


@pytest.mark.asyncio
async def test_drain_async(connector_tunnel: LocalTunnel) -> None:
    server, agent = connector_tunnel.server, connector_tunnel.agents[0]
    echo = connector_tunnel.echo_target()
    stream = await server.dial_async(echo.address, agent="node-0", timeout=30)
    drain: "asyncio.Future[None]" = asyncio.ensure_future(server.drain_async(GRACE))
    await drain_begun_async(server, echo.address, drain.done)

    with pytest.raises(DialError) as refused:
        await server.dial_async(echo.address, agent="node-0", timeout=30)
    assert refused.value.kind == "shutting_down"
    await stream.write(b"ping")
    assert await stream.readexactly(4) == b"ping"
    assert not drain.done(), "the drain waits for the open stream"

    await stream.shutdown_write()
    assert await stream.readall() == b""
    await stream.close()
    await drain
    assert go_aways(agent) == 1


def test_drain_grace_must_be_seconds(connector_tunnel: LocalTunnel) -> None:
    for grace in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            connector_tunnel.server.drain(grace)
    with pytest.raises(ConfigError):
        connector_tunnel.server.drain(None)  # type: ignore[arg-type]
    # Refused before it began: the server still dials.
    echo = connector_tunnel.echo_target()
    connector_tunnel.server.dial(echo.address, agent="node-0", timeout=30).close()
