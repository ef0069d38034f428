"""A Python callable as the server's authenticator."""

from __future__ import annotations

import logging
from typing import List

import pytest

import connector
from connector.testing import LocalTunnel


def test_python_authenticator_accepts_one_and_rejects_another(connector_tunnel_factory) -> None:  # type: ignore[no-untyped-def]
    seen: List[connector.AuthRequest] = []

    def authenticate(request: connector.AuthRequest) -> "connector.Accept | connector.Reject":
        seen.append(request)
        if request.agent_id == "good" and request.token == "let-me-in":
            return connector.Accept("good-identity", allow="host=good,host=good.example")
        return connector.Reject("not on the list")

    tunnel: LocalTunnel = connector_tunnel_factory(0, authenticator=authenticate)
    good = tunnel.add_agent("good", token="let-me-in", identifiers="host=good")
    assert good.status == "connected"
    bad = tunnel.add_agent("bad", token="wrong", identifiers="host=bad", wait=False)
    with pytest.raises(connector.AuthError) as err:
        bad.wait_connected(timeout=60)
    assert "not on the list" in err.value.reason
    assert bad.status == "rejected"
    assert [a.agent_id for a in tunnel.server.agents()] == ["good"]
    assert tunnel.server.agents()[0].identity == "good-identity"

    request = next(r for r in seen if r.agent_id == "good")
    assert request.identifiers == "host=good"
    assert request.remote_addr is not None and request.remote_addr.startswith("127.0.0.1:")
    assert request.certificates == []
    assert "let-me-in" not in repr(request)

    echo = tunnel.echo_target()
    with tunnel.server.dial(echo.address, host="good") as stream:
        assert stream.agent_id == "good"


def test_authenticator_that_raises_rejects_and_is_logged(connector_tunnel_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    calls = []

    def authenticate(request: connector.AuthRequest) -> connector.Accept:
        calls.append(request.agent_id)
        if request.agent_id == "boom":
            raise RuntimeError("authenticator exploded")
        if request.agent_id == "weird":
            return "yes please"  # type: ignore[return-value]
        return connector.Accept(request.agent_id)

    caplog.set_level(logging.ERROR, logger="connector.auth")
    tunnel: LocalTunnel = connector_tunnel_factory(0, authenticator=authenticate)
    boom = tunnel.add_agent("boom", token="t1", wait=False)
    with pytest.raises(connector.AuthError) as err:
        boom.wait_connected(timeout=60)
    assert "authenticator failed" in err.value.reason
    weird = tunnel.add_agent("weird", token="t2", wait=False)
    with pytest.raises(connector.AuthError):
        weird.wait_connected(timeout=60)

    records = [r for r in caplog.records if r.name == "connector.auth"]
    assert any(r.exc_info and "authenticator exploded" in str(r.exc_info[1]) for r in records), records
    assert any(r.exc_info and "must return connector.Accept" in str(r.exc_info[1]) for r in records), records
    assert all("t1" not in r.getMessage() for r in records)

    # The server is unharmed: another agent is accepted and dials work.
    fine = tunnel.add_agent("fine", token="t3")
    assert fine.status == "connected"
    echo = tunnel.echo_target()
    with tunnel.server.dial(echo.address, host="fine") as stream:
        stream.sendall(b"still serving")
        assert stream.readexactly(13) == b"still serving"


def test_accept_validates_its_allowance() -> None:
    assert connector.Accept("x").allow == "*"
    with pytest.raises(connector.ConfigError):
        connector.Accept("x", allow="bogus=1")
    with pytest.raises(connector.ConfigError):
        connector.Accept("")


def test_authenticator_may_use_the_blocking_api(connector_tunnel_factory) -> None:  # type: ignore[no-untyped-def]
    """An authenticator runs on a thread of connector's runtime; blocking calls
    from it (here: a dial through another agent, as an auth service behind the
    tunnel would need) still work."""
    holder: dict = {}

    def authenticate(request: connector.AuthRequest) -> "connector.Accept | connector.Reject":
        tunnel = holder["tunnel"]
        echo = connector.testing.EchoTarget()
        try:
            with tunnel.server.dial(echo.address, host="node-0", timeout=30) as stream:
                stream.sendall((request.token or "").encode())
                stream.shutdown_write()
                verdict = stream.readall().decode()
        finally:
            echo.close()
        return connector.Accept(request.agent_id) if verdict == "late-token" else connector.Reject("no")

    import connector.testing

    tunnel: LocalTunnel = connector_tunnel_factory(1, authenticator=authenticate)
    holder["tunnel"] = tunnel
    late = tunnel.add_agent("late", token="late-token")
    assert late.status == "connected"
    assert [a.agent_id for a in tunnel.server.agents()] == ["late", "node-0"]
