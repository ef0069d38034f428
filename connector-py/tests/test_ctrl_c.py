"""Ctrl-C interrupts a blocking call (in a child process, so the signal hits only it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, socket, sys, threading
    from connector.testing import LocalTunnel, wait_busy

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    target = "127.0.0.1:%d" % listener.getsockname()[1]
    with LocalTunnel(1) as tunnel:
        if sys.argv[1] == "read":
            stream = tunnel.server.dial(target, host="node-0")
            peer, _ = listener.accept()  # kept open and silent
            call = stream.read
        else:
            # Fill the accept queue: the agent's connect then gets no answer.
            fillers = []
            while True:
                s = socket.socket()
                s.settimeout(0.5)
                try:
                    s.connect(listener.getsockname())
                except OSError:
                    break
                fillers.append(s)
            call = lambda: tunnel.server.dial(target, host="node-0", timeout=600)

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
    out = subprocess.run([sys.executable, "-c", SCRIPT, call], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "interrupted"
