"""asyncio: cancelling a task mid-dial or mid-read leaves nothing behind."""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import HoldTarget, StuckTarget

import connector
from connector.testing import LocalTunnel, diagnostics, wait_busy, wait_idle


@pytest.mark.asyncio
async def test_cancelling_a_dial_leaves_nothing_stuck(connector_tunnel: LocalTunnel, stuck_target: StuckTarget) -> None:
    server = connector_tunnel.server
    threads_before = threading.active_count()
    task = asyncio.ensure_future(server.dial_async(stuck_target.address, host="node-0", timeout=120))
    # The dial is running on the runtime (it cannot finish: the target never answers).
    await asyncio.get_running_loop().run_in_executor(None, lambda: wait_busy(async_operations=1, timeout=30))
    assert not task.done()
    task.cancel()
    results = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    # The Rust side of the dial is dropped: no operation in flight, the agent's slot is free.
    wait_idle(timeout=30)
    assert diagnostics() == {"blocking_calls": 0, "async_operations": 0}
    assert server.agents()[0].active_streams == 0
    assert threading.active_count() <= threads_before + 1  # the executor's worker thread at most
    # And the tunnel still works.
    echo = connector_tunnel.echo_target()
    async with await server.dial_async(echo.address, host="node-0") as stream:
        await stream.write(b"after cancel")
        assert await stream.readexactly(12) == b"after cancel"


@pytest.mark.asyncio
async def test_cancelling_a_read_keeps_the_stream_usable(connector_tunnel: LocalTunnel, hold_target: HoldTarget) -> None:
    stream = await connector_tunnel.server.dial_async(hold_target.address, host="node-0")
    peer = hold_target.accept()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(stream.read(), timeout=0.2)
    wait_idle(timeout=30)
    peer.sendall(b"hello")
    assert await stream.readexactly(5) == b"hello"
    await stream.close()
    with pytest.raises(connector.ClosedError):
        await stream.read()


@pytest.mark.asyncio
async def test_async_dial_errors(connector_tunnel: LocalTunnel, stuck_target: StuckTarget) -> None:
    with pytest.raises(connector.DialTimeoutError):
        await connector_tunnel.server.dial_async(stuck_target.address, host="node-0", timeout=0.3)
    with pytest.raises(connector.DialError) as err:
        await connector_tunnel.server.dial_async("127.0.0.1:80", host="nobody")
    assert err.value.kind == "no_agent"
