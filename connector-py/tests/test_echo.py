"""Bulk echo of 16 MiB each way through the tunnel, sync and asyncio."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import List, Tuple

import pytest
from conftest import pattern, sha256

import connector
from connector.testing import LocalTunnel

SIZE = 16 * 1024 * 1024
CHUNK = 256 * 1024


def test_sync_echo_16_mib_each_way(connector_tunnel: LocalTunnel) -> None:
    echo = connector_tunnel.echo_target()
    data = pattern(SIZE, 1)
    with connector_tunnel.server.dial(echo.address, host="node-0", timeout=30) as stream:
        assert isinstance(stream, connector.Stream)
        assert stream.agent_id == "node-0"
        errors: List[BaseException] = []

        def send() -> None:
            try:
                view = memoryview(data)
                for i in range(0, SIZE, CHUNK):
                    stream.sendall(view[i : i + CHUNK])
                stream.shutdown_write()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        writer = threading.Thread(target=send)
        writer.start()
        digest = hashlib.sha256()
        received = 0
        while True:
            block = stream.read(CHUNK)
            if not block:
                break
            digest.update(block)
            received += len(block)
        writer.join()
        assert errors == []
    assert received == SIZE
    assert digest.hexdigest() == sha256(data)


def test_asyncio_echo_16_mib_each_way(connector_tunnel: LocalTunnel) -> None:
    echo = connector_tunnel.echo_target()
    data = pattern(SIZE, 2)

    async def main() -> Tuple[int, str]:
        stream = await connector_tunnel.server.dial_async(echo.address, host="node-0", timeout=30)
        assert isinstance(stream, connector.AsyncStream)
        async with stream:

            async def send() -> None:
                for i in range(0, SIZE, CHUNK):
                    await stream.write(data[i : i + CHUNK])
                    await stream.drain()
                await stream.shutdown_write()

            async def receive() -> Tuple[int, str]:
                digest = hashlib.sha256()
                n = 0
                while True:
                    block = await stream.read(CHUNK)
                    if not block:
                        return n, digest.hexdigest()
                    digest.update(block)
                    n += len(block)

            _, got = await asyncio.gather(send(), receive())
        assert stream.closed
        return got

    received, digest = asyncio.run(main())
    assert received == SIZE
    assert digest == sha256(data)


@pytest.mark.asyncio
async def test_asyncio_stream_helpers(connector_tunnel: LocalTunnel) -> None:
    echo = connector_tunnel.echo_target()
    async with await connector_tunnel.server.dial_async(echo.address, agent="node-0") as stream:
        await stream.write(bytearray(b"abc") + b"defgh")
        assert await stream.readexactly(3) == b"abc"
        await stream.shutdown_write()
        assert await stream.readall() == b"defgh"
        with pytest.raises(connector.ClosedError):
            await stream.write(b"after shutdown")
