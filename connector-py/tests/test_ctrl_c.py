"""Ctrl-C interrupts a blocking call (in a child process, so the signal hits only it)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading
    from connector.testing import LocalTunnel, wait_busy

    sys.path.insert(0, sys.argv[2])
    from conftest import HoldTarget, StuckTarget

    with LocalTunnel(1) as tunnel:
        if sys.argv[1] == "read":
            hold = HoldTarget()
            stream = tunnel.server.dial(hold.address, host="node-0")
            hold.accept()  # kept open and silent
            call = stream.read
        else:
            stuck = StuckTarget()  # the agent's connect gets no answer
            call = lambda: tunnel.server.dial(stuck.address, host="node-0", timeout=600)

        def interrupt():
            wait_busy(blocking_calls=1, timeout=60)   # the main thread is blocked in the call
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        try:
            call()
            print("returned")
        except KeyboardInterrupt:
            print("interrupted")
    """
)


@pytest.mark.parametrize("call", ["read", "dial"])
def test_ctrl_c_interrupts_a_blocked_call(call: str) -> None:
    tests = str(pathlib.Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", SCRIPT, call, tests], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "interrupted"
