"""Each Server / Agent option takes effect (not only parses)."""

from __future__ import annotations

import pathlib
import re
import threading
from typing import Callable, Iterator, List, Tuple

import pytest
from conftest import HoldTarget, StuckTarget, closed_port

import connector
from connector.testing import EchoTarget, LocalTunnel, ThrowawayCa

Factory = Callable[..., LocalTunnel]


def echo_once(server: connector.Server, target: str, payload: bytes, **where: str) -> None:
    with server.dial(target, timeout=60, **where) as stream:
        stream.sendall(payload)
        assert stream.readexactly(len(payload)) == payload


@pytest.fixture
def pki() -> Tuple[ThrowawayCa, str, str]:
    """A CA, and a server certificate + key it issued for 127.0.0.1."""
    ca = ThrowawayCa("options test CA")
    cert, key = ca.issue("connector server", ["localhost", "127.0.0.1"])
    return ca, cert, key


@pytest.fixture
def echo() -> Iterator[EchoTarget]:
    target = EchoTarget()
    yield target
    target.close()


def test_max_streams_per_agent(connector_tunnel_factory: Factory, hold_target: HoldTarget) -> None:
    tunnel = connector_tunnel_factory(1, max_streams_per_agent=1)
    with tunnel.server.dial(hold_target.address, host="node-0"):
        with pytest.raises(connector.DialError) as err:
            tunnel.server.dial(hold_target.address, host="node-0")
        assert err.value.kind == "agent_busy"
        assert err.value.code == connector.DialCode.OVERLOADED


def test_agent_max_connections(connector_tunnel_factory: Factory, hold_target: HoldTarget) -> None:
    tunnel = connector_tunnel_factory(agent_ids=["small"], agent_options={"max_connections": 1})
    with tunnel.server.dial(hold_target.address, host="small"):
        with pytest.raises(connector.DialError) as err:
            tunnel.server.dial(hold_target.address, host="small")
        # The agent itself answered: it is at its limit.
        assert err.value.kind == "failed"
        assert err.value.agent == "small"
        assert err.value.code == connector.DialCode.OVERLOADED


def test_server_id_reaches_the_agent(connector_tunnel_factory: Factory) -> None:
    tunnel = connector_tunnel_factory(1, server_id="replica-x")
    assert tunnel.server.server_id == "replica-x"
    assert tunnel.agents[0].wait_connected(timeout=60) == "replica-x"


def test_server_dial_timeout_is_the_default_deadline(connector_tunnel_factory: Factory, stuck_target: StuckTarget) -> None:
    tunnel = connector_tunnel_factory(1, dial_timeout=0.25)
    with pytest.raises(connector.DialTimeoutError) as err:
        tunnel.server.dial(stuck_target.address, host="node-0")  # timeout=None: the server's
    assert err.value.code == connector.DialCode.TIMED_OUT
    # The deadline that passed is the configured one, not the 30 s default:
    # the server's ("timed out after 250ms") or the agent's, which is sent
    # what is left of it ("no connection within 249ms"), whichever reports first.
    found = re.search(r"(?:after|within) (\d+)ms", str(err.value))
    assert found is not None and 0 < int(found.group(1)) <= 250, str(err.value)


def test_tokens_file_round_trip(pki: Tuple[ThrowawayCa, str, str], tmp_path: pathlib.Path, echo: EchoTarget) -> None:
    ca, cert, key = pki
    tokens = tmp_path / "tokens"
    tokens.write_text("# TOKEN  IDENTITY  MAY CLAIM\nfirst-token  node-a  host=node-a\n")

    def agent(agent_id: str, token: str) -> connector.Agent:
        return connector.Agent(
            server.address, ca=ca.cert_pem, agent_id=agent_id, token=token, allow=["127.0.0.0/8"]
        )

    with connector.Server(cert=cert, key=key, tokens_file=tokens) as server:
        with agent("node-a", "first-token") as a:
            a.wait_connected(timeout=60)
            assert [(i.agent_id, i.identity, i.identifiers) for i in server.agents()] == [
                ("node-a", "node-a", "host=node-a")
            ]
            echo_once(server, echo.address, b"from the file", host="node-a")
        # Rotate: the file is re-read when it changes; the old token no longer works.
        tokens.write_text("rotated-token-for-b  node-b  *\n")
        with agent("node-b", "rotated-token-for-b") as b:
            b.wait_connected(timeout=60)
        with agent("node-a", "first-token") as stale:
            with pytest.raises(connector.AuthError):
                stale.wait_connected(timeout=60)


def test_max_pending_dials(connector_tunnel_factory: Factory, stuck_target: StuckTarget) -> None:
    tunnel = connector_tunnel_factory(1, max_pending_dials=1)

    def pending_dial() -> Tuple[threading.Thread, List[BaseException]]:
        """A dial in a thread that stays pending (the target never answers)."""
        errors: List[BaseException] = []

        def dial() -> None:
            try:
                tunnel.server.dial(stuck_target.address, host="node-0", timeout=600)
            except BaseException as e:  # noqa: BLE001 (checked below)
                errors.append(e)

        thread = threading.Thread(target=dial, daemon=True)
        thread.start()
        return thread, errors

    waiting, errors = pending_dial()
    # Until that dial is pending, a dial to a closed port gets as far as the
    # target (refused); once it is, the server refuses it at once. The probe
    # may also win the one slot first: the pending dial then fails at once and
    # is started again.
    while True:
        with pytest.raises(connector.DialError) as err:
            tunnel.server.dial(closed_port(), host="node-0")
        if err.value.kind != "failed":
            break
        assert err.value.code == connector.DialCode.REFUSED
        if not waiting.is_alive():
            assert len(errors) == 1 and getattr(errors[0], "kind", None) == "too_many_pending_dials", errors
            waiting, errors = pending_dial()
    assert err.value.kind == "too_many_pending_dials"
    assert err.value.code == connector.DialCode.OVERLOADED
    assert waiting.is_alive() and errors == []
    tunnel.server.close()  # ends the pending dial
    waiting.join()
    assert len(errors) == 1 and isinstance(errors[0], connector.DialError)


def test_tcp_fallback_carries_the_tunnel(pki: Tuple[ThrowawayCa, str, str], echo: EchoTarget) -> None:
    ca, cert, key = pki
    with connector.Server(cert=cert, key=key, tokens={"t": "node-a"}, tcp_listen="off") as quic_only:
        assert quic_only.tcp_address is None
    with connector.Server(cert=cert, key=key, tokens={"t": "node-a"}, tcp_listen="127.0.0.1:0") as server:
        assert server.tcp_address is not None and server.tcp_address != server.address
        # QUIC-only transport is never used: transport="tcp" dials the TCP listener.
        with connector.Agent(
            server.address,
            ca=ca.cert_pem,
            agent_id="node-a",
            token="t",
            allow=["127.0.0.0/8"],
            transport="tcp",
            tcp_server=server.tcp_address,
        ) as agent:
            agent.wait_connected(timeout=60)
            echo_once(server, echo.address, b"over TCP + QMux" * 1000, host="node-a")


def test_agent_with_several_servers(pki: Tuple[ThrowawayCa, str, str], echo: EchoTarget) -> None:
    ca, cert, key = pki
    with connector.Server(cert=cert, key=key, tokens={"t": "node-a"}, server_id="one") as one, connector.Server(
        cert=cert, key=key, tokens={"t": "node-a"}, server_id="two"
    ) as two:
        with connector.Agent(
            [one.address, two.address], ca=ca.cert_pem, agent_id="node-a", token="t", allow=["127.0.0.0/8"]
        ):
            for server in (one, two):
                server.wait_for_agents(agent_ids=["node-a"], timeout=60)
                echo_once(server, echo.address, server.server_id.encode(), host="node-a")


def test_tunnel_idle_timeout_closes_an_idle_tunnel(connector_tunnel_factory: Factory, hold_target: HoldTarget) -> None:
    tunnel = connector_tunnel_factory(agent_ids=["idle"], agent_options={"tunnel_idle_timeout": 0.2})
    with tunnel.server.dial(hold_target.address, host="idle") as stream:
        peer = hold_target.accept()
        stream.timeout = 60  # only a hang guard: the agent closes the tunnel long before
        try:
            assert stream.read() == b""
        except connector.StreamError:
            pass
        # The agent closed (or reset) its connection to the target too.
        peer.settimeout(60)
        try:
            assert peer.recv(1) == b""
        except ConnectionResetError:
            pass


def test_tunnel_stall_timeout_closes_an_upload_into_a_target_that_never_reads(
    connector_tunnel_factory: Factory, hold_target: HoldTarget
) -> None:
    tunnel = connector_tunnel_factory(agent_ids=["stall"], agent_options={"tunnel_stall_timeout": 0.5})
    with tunnel.server.dial(hold_target.address, host="stall") as stream:
        peer = hold_target.accept()  # never reads
        stream.timeout = 60  # only a hang guard: the agent resets the tunnel long before
        chunk = b"x" * 65536
        with pytest.raises(connector.StreamError, match="stalled"):
            while True:
                stream.sendall(chunk)
        # The agent reset its connection to the target too.
        peer.settimeout(60)
        with pytest.raises(ConnectionResetError):
            while peer.recv(1 << 20):
                pass


def test_transport_options_are_checked(pki: Tuple[ThrowawayCa, str, str]) -> None:
    ca, cert, key = pki
    for bad in ({"tcp_listen": "nowhere"}, {"congestion": "reno"}, {"client_certificates": "maybe"}):
        with pytest.raises(connector.ConfigError):
            connector.Server(cert=cert, key=key, tokens={"t": "a"}, **bad)  # type: ignore[arg-type]
    for bad in ({"transport": "carrier-pigeon"}, {"congestion": "reno"}, {"proxy": "socks5://x:1"}):
        with pytest.raises(connector.ConfigError):
            connector.Agent("127.0.0.1:1", ca=ca.cert_pem, agent_id="a", token="t", **bad)  # type: ignore[arg-type]
    with pytest.raises(connector.ConfigError):
        connector.Agent([], ca=ca.cert_pem, agent_id="a", token="t")
    with pytest.raises(connector.ConfigError):
        connector.Agent(["127.0.0.1:1", "127.0.0.1:2"], ca=ca.cert_pem, agent_id="a", token="t", tcp_server="127.0.0.1:3")
    # Accepted values start (congestion and max_udp_payload act inside QUIC: not observable here).
    with connector.Server(
        cert=cert, key=key, tokens={"t": "a"}, congestion="bbr", max_udp_payload=1400, max_pending_dials=5
    ) as server:
        with connector.Agent(
            server.address, ca=ca.cert_pem, agent_id="a", token="t", congestion="cubic", max_udp_payload=1300,
            transport="quic", proxy="off", quic_connect_timeout=5, quic_probe_interval=30,
        ) as agent:  # fmt: skip
            agent.wait_connected(timeout=60)
