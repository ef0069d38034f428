"""asyncio as asyncio users write it: ``server.open_connection`` gives
asyncio's own StreamReader/StreamWriter, and the waits have ``_async`` forms
that leave the event loop free."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from conftest import StuckTarget, closed_port

import connector
from connector.testing import LocalTunnel, ThrowawayCa, wait_busy, wait_idle


@pytest.mark.asyncio
async def test_open_connection_gives_asyncio_streams(connector_tunnel: LocalTunnel) -> None:
    echo = connector_tunnel.echo_target()
    reader, writer = await connector_tunnel.server.open_connection(echo.address, agent="node-0")
    assert isinstance(reader, asyncio.StreamReader) and isinstance(writer, asyncio.StreamWriter)
    writer.write(b"line one\nline two\r\nrest")
    await writer.drain()
    assert await reader.readline() == b"line one\n"
    assert await reader.readuntil(b"\r\n") == b"line two\r\n"
    assert not reader.at_eof()
    # write_eof is a half-close: the echo target sees end of file and answers what is left.
    assert writer.can_write_eof()
    writer.write_eof()
    assert await reader.readexactly(4) == b"rest"
    assert await reader.read() == b""
    assert reader.at_eof()
    with pytest.raises(asyncio.IncompleteReadError):
        await reader.readexactly(1)
    writer.close()
    await writer.wait_closed()
    assert writer.is_closing()


@pytest.mark.asyncio
async def test_open_connection_with_tls(connector_tunnel: LocalTunnel) -> None:
    web = connector_tunnel.https_target({"/tls": b"secret page"})
    context = ssl.create_default_context(cadata=connector_tunnel.ca.cert_pem)
    reader, writer = await connector_tunnel.server.open_connection(
        f"localhost:{web.port}", agent="node-0", ssl=context
    )
    writer.write(b"GET /tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    await writer.drain()
    assert await reader.readline() == b"HTTP/1.1 200 OK\r\n"
    assert (await reader.read()).endswith(b"\r\n\r\nsecret page")
    assert writer.get_extra_info("peercert")["subject"] == ((("commonName", "connector test HTTPS target"),),)
    writer.close()
    await writer.wait_closed()


@pytest.mark.asyncio
async def test_open_connection_errors_and_cancel(connector_tunnel: LocalTunnel, stuck_target: StuckTarget) -> None:
    server = connector_tunnel.server
    with pytest.raises(connector.DialError) as err:
        await server.open_connection(closed_port(), agent="node-0")
    assert err.value.code == connector.DialCode.REFUSED
    with pytest.raises(connector.DialTimeoutError):
        await server.open_connection(stuck_target.address, agent="node-0", timeout=0.3)
    # Cancelling the awaiting task cancels the dial: nothing stays in flight.
    task = asyncio.ensure_future(server.open_connection(stuck_target.address, agent="node-0", timeout=120))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: wait_busy(async_operations=1, timeout=30))
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await loop.run_in_executor(None, lambda: wait_idle(timeout=30))
    assert server.agents()[0].active_streams == 0


@pytest.mark.asyncio
async def test_async_waits_leave_the_loop_free() -> None:
    ca = ThrowawayCa()
    cert, key = ca.issue("connector server", ["127.0.0.1"])
    with connector.Server(cert=cert, key=key, tokens={"t": ("node-a", "*")}) as server:
        waiting = asyncio.ensure_future(server.wait_for_agents_async(agent_ids=["node-a"], timeout=60))
        # The wait runs while the loop does other work: the agent is started from the loop itself.
        await asyncio.sleep(0)
        assert not waiting.done()
        agent = connector.Agent(server.address, ca=ca.cert_pem, agent_id="node-a", token="t")
        try:
            assert await agent.wait_connected_async(timeout=60) == server.server_id
            (info,) = await waiting
            assert info.agent_id == "node-a"
            # A timeout says who is missing.
            with pytest.raises(connector.TimeoutError, match=r"1 connected \(waiting for at least 2\); not connected: node-b$"):
                await server.wait_for_agents_async(agent_ids=["node-a", "node-b"], timeout=0.2)
        finally:
            agent.stop()
        with pytest.raises(connector.ClosedError):
            await agent.wait_connected_async(timeout=60)


@pytest.mark.asyncio
async def test_async_wait_connected_says_why() -> None:
    ca = ThrowawayCa()
    agent = connector.Agent(closed_port(), ca=ca.cert_pem, agent_id="lonely", token="t", transport="tcp")
    try:
        with pytest.raises(connector.TimeoutError) as err:
            await agent.wait_connected_async(timeout=2)
        said = str(err.value)
        assert "waiting for the agent to connect timed out" in said
        assert "the last attempt: could not connect" in said or "no attempt has ended yet" in said, said
    finally:
        agent.stop()
