"""Every setting of the Rust schema (``connector_core::settings``) is a keyword
of the constructors, and values are checked by the schema."""

from __future__ import annotations

import inspect
from typing import Mapping, Set

import pytest

import connector
from connector import _connector
from connector._settings import AGENT_RENAMED, SERVER_RENAMED
from connector.testing import ThrowawayCa


def keywords(cls: type, renamed: Mapping[str, str]) -> Set[str]:
    """The settings a constructor's keywords reach."""
    return {renamed.get(name, name) for name in inspect.signature(cls).parameters}


def test_every_server_setting_is_a_keyword() -> None:
    missing = set(_connector.server_settings()) - keywords(connector.Server, SERVER_RENAMED)
    assert not missing, f"connector.Server lacks keywords for {sorted(missing)}"


def test_every_agent_setting_is_a_keyword() -> None:
    missing = set(_connector.agent_settings()) - keywords(connector.Agent, AGENT_RENAMED)
    assert not missing, f"connector.Agent lacks keywords for {sorted(missing)}"


def test_values_are_checked_by_the_schema_and_name_their_keyword() -> None:
    ca = ThrowawayCa()
    cert, key = ca.issue("server", ["127.0.0.1"])
    for bad in (0, 1_000_001):
        with pytest.raises(connector.ConfigError, match="max_connections: must be from 1 to 1000000"):
            connector.Agent("127.0.0.1:1", ca=ca.cert_pem, agent_id="a", token="t", max_connections=bad)
    with pytest.raises(connector.ConfigError, match="max_pre_hello"):
        connector.Server(cert=cert, key=key, tokens={"t": "a"}, max_pre_hello="many")  # type: ignore[arg-type]
    with pytest.raises(connector.ConfigError, match="auth_timeout"):
        connector.Server(cert=cert, key=key, tokens={"t": "a"}, auth_timeout=-1)
    with connector.Server(
        cert=cert, key=key, tokens={"t": "a"}, max_pre_hello=10, max_handshakes=10,
        max_unadmitted_per_source=2, auth_timeout=0.5,
    ):  # fmt: skip
        pass


def test_kubernetes_settings_are_checked_and_name_their_keyword() -> None:
    ca = ThrowawayCa()
    cert, key = ca.issue("server", ["127.0.0.1"])
    with pytest.raises(connector.ConfigError, match="kube_service_accounts.*NAMESPACE/NAME"):
        connector.Server(cert=cert, key=key, kube_service_accounts=["connector-agent"])
    with pytest.raises(connector.ConfigError, match="kubeconfig.*nonexistent"):
        connector.Server(
            cert=cert, key=key, kube_service_accounts="connector/connector-agent", kubeconfig="/nonexistent/kubeconfig"
        )
    with pytest.raises(connector.ConfigError, match="lease_renew_interval"):
        connector.Server(cert=cert, key=key, tokens={"t": "a"}, lease_duration=5, lease_renew_interval=5)
