"""Many threads dialling at once; the GIL is released while they wait."""

from __future__ import annotations

import threading

from conftest import HoldTarget, pattern, run_in_thread, sha256

import connector
from connector.testing import LocalTunnel, wait_busy

THREADS = 16
SIZE = 1024 * 1024


def transfer(server: connector.Server, target: str, seed: int) -> str:
    data = pattern(SIZE, seed)
    with server.dial(target, host=f"node-{seed % 4}", timeout=30) as stream:
        def send() -> None:
            stream.sendall(data)
            stream.shutdown_write()

        writer = threading.Thread(target=send)
        writer.start()
        got = stream.readall()
        writer.join()
    assert len(got) == SIZE
    return sha256(got)


def test_blocked_read_does_not_block_other_threads(connector_tunnel_factory, hold_target: HoldTarget) -> None:  # type: ignore[no-untyped-def]
    tunnel: LocalTunnel = connector_tunnel_factory(4)
    echo = tunnel.echo_target()
    server = tunnel.server

    # One thread blocks in read() on a target that says nothing.
    silent = server.dial(hold_target.address, host="node-0")
    peer = hold_target.accept()
    blocked, blocked_result, blocked_error = run_in_thread(silent.read)
    wait_busy(blocking_calls=1, timeout=30)

    # Meanwhile many threads dial and transfer at once.
    workers = [run_in_thread(transfer, server, echo.address, seed) for seed in range(THREADS)]
    for thread, _, _ in workers:
        thread.join()
    for seed, (_, result, error) in enumerate(workers):
        assert error == [], error
        assert result == [sha256(pattern(SIZE, seed))]

    # The blocked read was still blocked throughout; now it gets its answer.
    assert blocked.is_alive() and blocked_result == []
    peer.sendall(b"finally")
    blocked.join()
    assert blocked_error == []
    assert blocked_result == [b"finally"]
    silent.close()


def test_close_interrupts_a_read_in_another_thread(connector_tunnel: LocalTunnel, hold_target: HoldTarget) -> None:
    stream = connector_tunnel.server.dial(hold_target.address, host="node-0")
    hold_target.accept()
    thread, result, error = run_in_thread(stream.read)
    wait_busy(blocking_calls=1, timeout=30)
    stream.close()
    thread.join()
    assert result == []
    assert len(error) == 1 and isinstance(error[0], connector.ClosedError)
