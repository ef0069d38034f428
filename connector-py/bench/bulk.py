"""Bulk-transfer throughput through the tunnel: Python API vs Rust API, in one run.

Starts a local server, one agent and a TCP echo target (all in this process,
QUIC over loopback), then sends SIZE bytes through an echo connection while
reading the echo back, with:

- the Rust API (``Server::dial`` + tokio, no Python in the data path),
- the Python blocking API (``Stream.sendall`` in a thread, ``Stream.read`` loop),
- the Python asyncio API (``AsyncStream.write`` / ``read`` tasks).

Each is run ROUNDS times, interleaved; the median is reported as payload
MiB/s (each way: SIZE bytes go out and SIZE bytes come back).

    python bench/bulk.py [--size-mib 128] [--rounds 3] [--chunk-kib 256]

Measure a release wheel (run-tests.sh installs a dev build):

    cd connector-py && maturin build --release --out /tmp/wheels && pip install --force-reinstall /tmp/wheels/connector-*.whl
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from typing import Dict, List

from connector.testing import LocalTunnel, rust_echo_transfer


def python_sync(tunnel: LocalTunnel, target: str, size: int, chunk: int) -> float:
    block = b"\x5a" * chunk
    started = time.perf_counter()
    with tunnel.server.dial(target, agent="node-0") as stream:

        def send() -> None:
            left = size
            while left > 0:
                n = min(left, chunk)
                stream.sendall(block if n == chunk else block[:n])
                left -= n
            stream.shutdown_write()

        writer = threading.Thread(target=send)
        writer.start()
        got = 0
        while True:
            data = stream.read(chunk)
            if not data:
                break
            got += len(data)
        writer.join()
    elapsed = time.perf_counter() - started
    assert got == size, (got, size)
    return elapsed


def python_asyncio(tunnel: LocalTunnel, target: str, size: int, chunk: int) -> float:
    block = b"\x5a" * chunk

    async def main() -> float:
        started = time.perf_counter()
        async with await tunnel.server.dial_async(target, agent="node-0") as stream:

            async def send() -> None:
                left = size
                while left > 0:
                    n = min(left, chunk)
                    await stream.write(block if n == chunk else block[:n])
                    left -= n
                await stream.shutdown_write()

            async def receive() -> int:
                got = 0
                while True:
                    data = await stream.read(chunk)
                    if not data:
                        return got
                    got += len(data)

            _, got = await asyncio.gather(send(), receive())
        assert got == size, (got, size)
        return time.perf_counter() - started

    return asyncio.run(main())


def rust(tunnel: LocalTunnel, target: str, size: int, chunk: int) -> float:
    return rust_echo_transfer(tunnel.server, target, size, chunk, agent="node-0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-kib", type=int, default=256)
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    chunk = args.chunk_kib * 1024
    runs = {"Rust API": rust, "Python (blocking)": python_sync, "Python (asyncio)": python_asyncio}
    times: Dict[str, List[float]] = {name: [] for name in runs}
    with LocalTunnel(1) as tunnel:
        echo = tunnel.echo_target()
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(run(tunnel, echo.address, size, chunk))
    mib = size / (1024 * 1024)
    print(f"echo of {args.size_mib} MiB each way, {args.chunk_kib} KiB chunks, median of {args.rounds} rounds")
    baseline = mib / statistics.median(times["Rust API"])
    for name, secs in times.items():
        rate = mib / statistics.median(secs)
        print(f"  {name:<18} {rate:8.1f} MiB/s each way  ({rate / baseline:6.1%} of Rust)")


if __name__ == "__main__":
    main()
