"""A Python callable as the server's authenticator."""

from __future__ import annotations

import logging
from typing import Dict, List

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
    holder: Dict[str, LocalTunnel] = {}

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


def test_authenticator_sees_client_certificate() -> None:
    """With ``client_ca`` and an authenticator, TLS verifies the certificate
    chain and the authenticator decides, seeing the certificate's details (a
    valid certificate alone no longer admits the agent)."""
    import ssl

    from connector.testing import EchoTarget, ThrowawayCa

    server_ca = ThrowawayCa("server CA")
    client_ca = ThrowawayCa("client CA")
    seen: List[connector.AuthRequest] = []

    def authenticate(request: connector.AuthRequest) -> "connector.Accept | connector.Reject":
        seen.append(request)
        if request.certificate_name == "node-revoked":
            return connector.Reject("certificate node-revoked is revoked")
        if request.certificate_name is None:
            return connector.Reject("no client certificate")
        return connector.Accept(request.certificate_name, allow=request.certificate_identifiers or "")

    cert, key = server_ca.issue("connector server", ["localhost", "127.0.0.1"])
    with connector.Server(cert=cert, key=key, client_ca=client_ca.cert_pem, authenticator=authenticate) as server:

        def agent(name: str) -> connector.Agent:
            agent_cert, agent_key = client_ca.issue(name, [name, "10.0.0.5"])
            return connector.Agent(
                server.address,
                ca=server_ca.cert_pem,
                agent_id=name,
                cert=agent_cert,
                key=agent_key,
                identifiers=f"host={name}",
                allow=["127.0.0.0/8"],
            )

        with agent("node-revoked") as revoked, agent("node-ok") as ok:
            with pytest.raises(connector.AuthError) as err:
                revoked.wait_connected(timeout=60)
            assert "node-revoked is revoked" in err.value.reason
            ok.wait_connected(timeout=60)
            assert [(a.agent_id, a.identity) for a in server.agents()] == [("node-ok", "node-ok")]

            by_agent = {r.agent_id: r for r in seen}
            assert set(by_agent) == {"node-ok", "node-revoked"}
            for name, request in by_agent.items():
                assert request.token is None
                assert request.certificate_name == name
                assert request.certificate_identifiers == f"host={name},ipv4=10.0.0.5"
                assert len(request.certificates) == 1
                pem = ssl.DER_cert_to_PEM_cert(request.certificates[0])
                assert pem.startswith("-----BEGIN CERTIFICATE-----")

            echo = EchoTarget()
            try:
                with server.dial(echo.address, host="node-ok") as stream:
                    stream.sendall(b"mtls")
                    assert stream.readexactly(4) == b"mtls"
            finally:
                echo.close()


def test_client_certificates_can_still_authenticate_by_themselves() -> None:
    """``client_certificates="authenticate"`` keeps the certificate-first order:
    a valid certificate admits the agent without asking the authenticator."""
    from connector.testing import ThrowawayCa

    server_ca = ThrowawayCa("server CA")
    client_ca = ThrowawayCa("client CA")
    calls: List[str] = []

    def authenticate(request: connector.AuthRequest) -> connector.Reject:
        calls.append(request.agent_id)
        return connector.Reject("asked")

    cert, key = server_ca.issue("connector server", ["localhost", "127.0.0.1"])
    with connector.Server(
        cert=cert,
        key=key,
        client_ca=client_ca.cert_pem,
        client_certificates="authenticate",
        authenticator=authenticate,
    ) as server:
        agent_cert, agent_key = client_ca.issue("node-a", ["node-a"])
        with connector.Agent(server.address, ca=server_ca.cert_pem, agent_id="node-a", cert=agent_cert, key=agent_key):
            server.wait_for_agents(agent_ids=["node-a"], timeout=60)
        assert calls == []
    with pytest.raises(connector.ConfigError):
        connector.Server(cert=cert, key=key, client_ca=client_ca.cert_pem, client_certificates="maybe")
