"""Failures become typed exceptions; bad input is a clear error, never a crash."""

from __future__ import annotations

import builtins
import errno
import socket

import pytest
from conftest import HoldTarget, StuckTarget, closed_port

import connector
from connector.testing import LocalTunnel, ThrowawayCa


def test_closed_port_is_refused(connector_tunnel: LocalTunnel) -> None:
    with pytest.raises(connector.DialError) as err:
        connector_tunnel.server.dial(closed_port(), host="node-0")
    assert err.value.code == connector.DialCode.REFUSED
    assert err.value.kind == "failed"
    assert err.value.agent == "node-0"
    assert isinstance(err.value, connector.ConnectorError)
    assert not isinstance(err.value, builtins.TimeoutError)


def test_dial_timeout_raises_timeout_error(connector_tunnel: LocalTunnel, stuck_target: StuckTarget) -> None:
    with pytest.raises(builtins.TimeoutError) as err:
        connector_tunnel.server.dial(stuck_target.address, host="node-0", timeout=0.5)
    assert isinstance(err.value, connector.TimeoutError)
    assert isinstance(err.value, connector.DialTimeoutError)
    assert isinstance(err.value, connector.DialError)
    assert err.value.code == connector.DialCode.TIMED_OUT


def test_read_timeout_raises_timeout_error(connector_tunnel: LocalTunnel, hold_target: HoldTarget) -> None:
    with connector_tunnel.server.dial(hold_target.address, host="node-0") as stream:
        peer = hold_target.accept()
        stream.timeout = 0.2
        assert stream.timeout == 0.2
        with pytest.raises(connector.TimeoutError):
            stream.read()
        # The stream still works after a timeout.
        peer.sendall(b"late")
        stream.timeout = None
        assert stream.readexactly(4) == b"late"


def test_policy_and_target_errors(connector_tunnel: LocalTunnel) -> None:
    server = connector_tunnel.server
    # An agent allowed 127.0.0.1 only; 127.0.0.2 is outside its policy.
    connector_tunnel.add_agent("narrow", token="token-node-0", allow=["127.0.0.1/32"])
    with pytest.raises(connector.DialError) as err:
        server.dial("127.0.0.2:80", host="narrow")
    assert err.value.code == connector.DialCode.DENIED_BY_POLICY
    with pytest.raises(connector.DialError) as err:
        server.dial("no-port", host="node-0")
    assert err.value.code == connector.DialCode.INVALID_TARGET
    with pytest.raises(connector.ConfigError):
        server.dial("127.0.0.1:80", agent="node-0", host="node-0")
    with pytest.raises(connector.ConfigError):
        server.dial("127.0.0.1:80", host="node-0", timeout=-1)
    with pytest.raises(connector.ConfigError):
        server.dial("127.0.0.1:80", host="node-0", timeout=float("nan"))
    with pytest.raises(connector.ConfigError):
        server.wait_for_agents(timeout="soon")  # type: ignore[arg-type]


def test_bad_settings_are_config_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = ThrowawayCa()
    cert, key = ca.issue("server", ["127.0.0.1"])
    with pytest.raises(connector.ConfigError, match="authenticate"):
        connector.Server(cert=cert, key=key)
    with pytest.raises(connector.ConfigError):
        connector.Server(cert="-----BEGIN CERTIFICATE-----\nnope\n", key=key, tokens={"t": "a"})
    with pytest.raises(connector.ConfigError, match="cannot read"):
        connector.Server(cert=tmp_path / "missing.pem", key=key, tokens={"t": "a"})
    with pytest.raises(connector.ConfigError):
        connector.Server(cert=cert, key=key, listen="nowhere", tokens={"t": "a"})
    with pytest.raises(connector.ConfigError) as err:
        connector.Server(cert=cert, key=key, tokens={"secret-token": ("a", "bogus=1")})
    assert "secret-token" not in str(err.value)
    with pytest.raises(connector.ConfigError):
        connector.Server(cert=cert, key=key, tokens={"t": "a"}, proxy_strategies="nearest")
    with pytest.raises(connector.ConfigError):
        connector.Server(cert=cert, key=key, tokens={"t": "a"}, authenticator="not callable")  # type: ignore[arg-type]
    with pytest.raises(connector.ConfigError):
        connector.Server(cert=cert, key=key, tokens={"t": "a"}, max_agents=-1)
    with pytest.raises(connector.ConfigError):
        connector.Agent("127.0.0.1:1", ca=ca.cert_pem, agent_id="a")  # no credential
    with pytest.raises(connector.ConfigError):
        connector.Agent("127.0.0.1:1", ca=ca.cert_pem, agent_id="a", token="t", identifiers="bogus")
    with pytest.raises(connector.ConfigError):
        connector.Agent("127.0.0.1:1", ca=ca.cert_pem, agent_id="a", token="t", allow=["not a rule!"])
    with pytest.raises(connector.ConfigError):
        connector.Agent("127.0.0.1:1", ca=ca.cert_pem, agent_id="a", token="t", cert=cert)
    with pytest.raises(connector.ConfigError):
        connector.Agent("127.0.0.1:1", ca=b"garbage", agent_id="a", token="t")


def test_closed_objects_raise_closed_error(connector_tunnel: LocalTunnel, hold_target: HoldTarget) -> None:
    stream = connector_tunnel.server.dial(hold_target.address, host="node-0")
    stream.close()
    stream.close()
    assert stream.closed
    with pytest.raises(connector.ClosedError):
        stream.read()
    with pytest.raises(connector.ClosedError):
        stream.sendall(b"x")
    agent = connector_tunnel.agents[0]
    agent.stop()
    assert agent.status == "stopped"
    with pytest.raises(connector.ClosedError):
        agent.wait_connected()
    connector_tunnel.server.close()
    with pytest.raises(connector.DialError) as err:
        connector_tunnel.server.dial(hold_target.address, host="node-0")
    assert err.value.kind == "shutting_down"


def test_extreme_arguments_are_handled(connector_tunnel: LocalTunnel) -> None:
    server = connector_tunnel.server
    echo = connector_tunnel.echo_target()
    # A far deadline is fine; the closed port still answers at once.
    with pytest.raises(connector.DialError) as err:
        server.dial(closed_port(), host="node-0", timeout=1e15)
    assert err.value.code == connector.DialCode.REFUSED
    with pytest.raises(connector.ConfigError):
        server.dial(closed_port(), host="node-0", timeout=1e300)
    with server.dial(echo.address, host="node-0") as stream:
        stream.sendall(b"short")
        assert stream.read(10**12) == b"short"  # a huge read size allocates no huge buffer
        stream.sendall(b"tail")
        stream.shutdown_write()
        with pytest.raises(connector.StreamError, match="ended after 4 of"):
            stream.readexactly(2**62)
    ca = connector_tunnel.ca
    for bad in (0, 2**40):
        with pytest.raises(connector.ConfigError):
            connector.Agent(server.address, ca=ca.cert_pem, agent_id="x", token="t", max_connections=bad)
    with pytest.raises(connector.ConfigError):
        connector.Agent(server.address, ca=ca.cert_pem, agent_id="x", token="t", max_connections=-1)


def test_wait_connected_timeout_says_why() -> None:
    ca = ThrowawayCa()
    agent = connector.Agent(closed_port(), ca=ca.cert_pem, agent_id="lonely", token="t", transport="tcp")
    try:
        # The timeout says why the agent is not connected: the last attempt's
        # failure (here a refused TCP connect), or that none has ended yet.
        with pytest.raises(connector.TimeoutError) as err:
            agent.wait_connected(timeout=2)
        said = str(err.value)
        assert "waiting for the agent to connect timed out" in said
        assert "the last attempt: could not connect" in said or "no attempt has ended yet" in said, said
    finally:
        agent.stop()


def test_address_in_use_is_an_os_error() -> None:
    ca = ThrowawayCa()
    cert, key = ca.issue("server", ["127.0.0.1"])
    # The UDP port (QUIC) taken by someone else.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        taken = "127.0.0.1:%d" % udp.getsockname()[1]
        with pytest.raises(OSError) as err:
            connector.Server(cert=cert, key=key, tokens={"t": "a"}, listen=taken, tcp_listen="off")
    assert isinstance(err.value, connector.ListenError) and isinstance(err.value, connector.ConnectorError)
    assert err.value.errno == errno.EADDRINUSE
    assert f"cannot bind UDP {taken}" in str(err.value)
    # The TCP fallback's port taken.
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        taken = "127.0.0.1:%d" % tcp.getsockname()[1]
        with pytest.raises(connector.ListenError) as err:
            connector.Server(cert=cert, key=key, tokens={"t": "a"}, tcp_listen=taken)
    assert err.value.errno == errno.EADDRINUSE
    assert f"cannot bind TCP {taken}" in str(err.value)


def test_pem_text_that_is_no_pem_and_no_file() -> None:
    ca = ThrowawayCa()
    cert, key = ca.issue("server", ["127.0.0.1"])
    with pytest.raises(connector.ConfigError) as err:
        connector.Server(cert="not a pem", key=key, tokens={"t": "a"})
    assert str(err.value) == (
        "cert is neither PEM text (starting with -----BEGIN) nor the path of an existing file: 'not a pem'"
    )
    with pytest.raises(connector.ConfigError, match="^ca is neither PEM text .* file: '/nowhere/ca.pem'$"):
        connector.Agent("127.0.0.1:1", ca="/nowhere/ca.pem", agent_id="a", token="t")
    # A key's text is not repeated: it may be key material without its header.
    with pytest.raises(connector.ConfigError) as err:
        connector.Server(cert=cert, key="MC4CAQAwBQYDK2VwBCIEIKey", tokens={"t": "a"})
    assert str(err.value) == "key is neither PEM text (starting with -----BEGIN) nor the path of an existing file"
