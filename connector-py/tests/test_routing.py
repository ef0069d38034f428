"""Many agents in one process; dials reach the agent the host names."""

from __future__ import annotations

import pytest

import connector
from connector.testing import LocalTunnel

AGENTS = 50


def test_fifty_agents_routed_by_host(connector_tunnel_factory) -> None:  # type: ignore[no-untyped-def]
    tunnel: LocalTunnel = connector_tunnel_factory(AGENTS)
    echo = tunnel.echo_target()
    agents = tunnel.server.agents()
    assert [a.agent_id for a in agents] == sorted(f"node-{i}" for i in range(AGENTS))
    assert {a.identifiers for a in agents} == {f"host=node-{i}" for i in range(AGENTS)}
    assert all(a.identity == a.agent_id for a in agents)
    # Every agent, in an order unlike the registry's.
    for i in reversed(range(AGENTS)):
        with tunnel.server.dial(echo.address, host=f"node-{i}", timeout=30) as stream:
            assert stream.agent_id == f"node-{i}"
            message = f"through node-{i}".encode()
            stream.sendall(message)
            stream.shutdown_write()
            assert stream.readall() == message
    # By agent id, too; and a host nobody serves finds no agent.
    with tunnel.server.dial(echo.address, agent="node-7") as stream:
        assert stream.agent_id == "node-7"
    with pytest.raises(connector.DialError) as err:
        tunnel.server.dial(echo.address, host="node-x")
    assert err.value.code == connector.DialCode.UNREACHABLE
    assert err.value.kind == "no_agent"
    for agent in tunnel.agents:
        assert agent.status == "connected"
