use std::time::Duration;

use super::*;
use crate::pki::ThrowawayCa;
use crate::setup::TcpListen;

#[test]
fn defaults_are_the_setups_defaults() {
    let server = ServerSettings::default();
    assert_eq!(server.max_agents, 10_000);
    assert_eq!(server.keepalive, Duration::from_secs(5));
    assert_eq!(server.text("proxy-strategies").unwrap(), "destHost,defaultRoute");
    assert_eq!(server.text("tcp-listen").unwrap(), "same");
    server.validate().unwrap();
    let agent = AgentSettings::default();
    assert_eq!(agent.text("tunnel-stall-timeout").unwrap(), "3m");
    assert_eq!(agent.text("tunnel-idle-timeout").unwrap(), "off");
    assert_eq!(agent.text("quic-probe-interval").unwrap(), "1m");
    agent.validate().unwrap();
}

#[test]
fn values_parse_from_their_text_and_names_take_dashes_or_underscores() {
    let mut s = AgentSettings::default();
    s.set("max-connections", "30").unwrap();
    s.set("max_connections", " 40 ").unwrap();
    assert_eq!(s.max_connections, 40);
    s.set("tunnel-idle-timeout", "4h").unwrap();
    assert_eq!(s.tunnel_idle_timeout, Some(Duration::from_secs(4 * 3600)));
    s.set("tunnel-idle-timeout", "off").unwrap();
    assert_eq!(s.tunnel_idle_timeout, None);
    s.set("tunnel-stall-timeout", "0").unwrap();
    assert_eq!(s.tunnel_stall_timeout, None);
    s.set("keepalive", "0.25").unwrap();
    assert_eq!(s.keepalive, Duration::from_millis(250));
    s.set("server", "a:1, b:2").unwrap();
    s.push("server", "c:3").unwrap();
    assert_eq!(s.server, ["a:1", "b:2", "c:3"]);
    s.set_items("allow", &["10.0.0.0/8", "*.svc.cluster.local:443"])
        .unwrap();
    assert_eq!(s.allow.len(), 2);
    s.set("proxy", "off").unwrap();
    assert_eq!(s.text("proxy").unwrap(), "off");
    let err = s.set("max-connections", "lots").unwrap_err().to_string();
    assert!(err.contains("max-connections") && err.contains("lots"), "{err}");
    assert!(matches!(s.set("max-conections", "1"), Err(SettingsError::Unknown(_))));
    assert!(s.set_items("keepalive", &["1s", "2s"]).is_err());
}

#[test]
fn ranges_are_checked_when_a_value_is_set() {
    let mut agent = AgentSettings::default();
    for bad in ["0", "1000001"] {
        let err = agent.set("max-connections", bad).unwrap_err().to_string();
        assert!(err.contains("must be from 1 to 1000000"), "{err}");
    }
    assert_eq!(
        agent.max_connections, 10_000,
        "a refused value leaves the setting as it was"
    );
    assert!(agent.set("agent-id", "").is_err());
    assert!(agent.set("agent-id", &"x".repeat(129)).is_err());
    assert!(agent.set("server", "no-port").is_err());
    assert!(agent.set("tcp-server", "no-port").is_err());
    assert!(agent.set("max-udp-payload", "9000").is_err());
    let mut server = ServerSettings::default();
    assert!(server.set("server-count", "0").is_err());
    assert!(server.set("server-id", "").is_err());
    assert!(server.set("proxy-strategies", "").is_err());
    assert!(server.set("proxy-strategies", "nearest").is_err());
    assert!(server.set("max-udp-payload", "1199").is_err());
    let err = server.set("tcp-listen", "everywhere").unwrap_err().to_string();
    assert!(err.contains("expected IP:PORT or off"), "{err}");
    assert!(server.set("client-certificates", "maybe").is_err());
    server.set("client-certificates", "verify-only").unwrap();
    server.set("tcp-listen", "off").unwrap();
    assert_eq!(server.tcp_listen, TcpListen::Off);
}

#[test]
fn proxy_errors_keep_the_password_out() {
    let mut s = AgentSettings::default();
    let err = s.set("proxy", "socks5://u:hunter2@proxy:1080").unwrap_err().to_string();
    assert!(err.contains("not supported") && !err.contains("hunter2"), "{err}");
}

#[test]
fn rules_between_settings_are_checked_by_validate() {
    let mut agent = AgentSettings::default();
    agent.set("server", "a:1,b:2").unwrap();
    agent.set("tcp-server", "a:443").unwrap();
    let err = agent.validate().unwrap_err().to_string();
    assert!(err.contains("single server address"), "{err}");
    let mut agent = AgentSettings::default();
    agent.set("cert", "/c.pem").unwrap();
    assert!(
        agent
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cert and key go together")
    );
    let mut server = ServerSettings::default();
    server.set("key", "/k.pem").unwrap();
    assert_eq!(server.validate().unwrap_err().key(), Some("cert"));
}

#[test]
fn toml_tables_deserialise_through_the_same_path_and_refuse_unknown_keys() {
    let server: ServerSettings = toml_like(&[
        ("max_agents", Items(vec!["5".into()])),
        ("hello-timeout", Items(vec!["5s".into()])),
    ]);
    assert_eq!(server.max_agents, 5);
    assert_eq!(server.hello_timeout, Duration::from_secs(5));
    let mut map = SettingsMap::new();
    map.insert("max-agent".into(), Items(vec!["5".into()]));
    let err = ServerSettings::default().merge(map).unwrap_err();
    assert!(matches!(err, SettingsError::Unknown(key) if key == "max-agent"));
}

fn toml_like(entries: &[(&str, Items)]) -> ServerSettings {
    let mut settings = ServerSettings::default();
    settings
        .merge(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
        .unwrap();
    settings
}

#[test]
fn into_setup_reads_the_files_and_names_the_setting_of_a_bad_one() {
    let dir = std::env::temp_dir().join(format!("connector-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ThrowawayCa::new("settings ca").unwrap();
    let issued = ca.issue("server", &["localhost"]).unwrap();
    std::fs::write(dir.join("server.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("server-key.pem"), &issued.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.join("tokens"), "t0ken node-a\n").unwrap();

    let mut server = ServerSettings::default();
    server.set("cert", dir.join("server.pem").to_str().unwrap()).unwrap();
    server.set("key", dir.join("server-key.pem").to_str().unwrap()).unwrap();
    server.set("tokens", dir.join("tokens").to_str().unwrap()).unwrap();
    server.set("max-pending-dials", "7").unwrap();
    server.set("server-id", "replica-1").unwrap();
    let setup = server.clone().into_setup().unwrap();
    assert_eq!(setup.limits.max_pending_dials, 7);
    assert_eq!(setup.server_id, "replica-1");
    setup.check().unwrap();

    server
        .set("client-ca", dir.join("missing.pem").to_str().unwrap())
        .unwrap();
    let err = server.into_setup().err().unwrap();
    assert_eq!(err.key(), Some("client-ca"));
    assert!(err.to_string().contains("missing.pem"), "{err}");
    assert!(std::error::Error::source(&err).is_some());

    let mut agent = AgentSettings::default();
    assert!(matches!(agent.clone().into_setup(), Err(SettingsError::Missing { key, .. }) if key == "server"));
    agent.set("server", "localhost:8443").unwrap();
    agent.set("ca", dir.join("ca.pem").to_str().unwrap()).unwrap();
    assert!(matches!(agent.clone().into_setup(), Err(SettingsError::Missing { key, .. }) if key == "agent-id"));
    agent.set("agent-id", "node-a").unwrap();
    agent.set("token-file", dir.join("token").to_str().unwrap()).unwrap();
    agent.set("quic-connect-timeout", "2s").unwrap();
    // The token file is read at start-up: a missing one names the setting.
    let err = agent.clone().into_setup().err().unwrap();
    assert_eq!(err.key(), Some("token-file"));
    assert!(err.to_string().contains("cannot read token file"), "{err}");
    std::fs::write(dir.join("token"), "tok\n").unwrap();
    let setup = agent.into_setup().unwrap();
    assert_eq!(setup.fallback.quic_connect_timeout, Duration::from_secs(2));
    setup.check().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_field_has_a_doc_and_a_default_that_reads_back() {
    fn check<T: Schema>() {
        for field in T::FIELDS {
            assert!(!field.help().is_empty(), "{} has no doc", field.key);
            let mut settings = T::default();
            let text = settings.text(&field.name()).unwrap();
            if !text.is_empty() {
                settings.set(&field.name(), &text).unwrap();
                assert_eq!(settings.text(&field.name()).unwrap(), text, "{}", field.key);
            }
        }
    }
    check::<ServerSettings>();
    check::<AgentSettings>();
}

#[test]
fn units_parse() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("5x").is_err());
    assert!(parse_duration("-1").is_err());
    assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
    assert_eq!(parse_size("1g").unwrap(), 1 << 30);
    assert!(parse_size("-1").is_err());
}

#[test]
fn kubernetes_settings_are_checked() {
    let mut server = ServerSettings::default();
    assert_eq!(server.text("kube-audiences").unwrap(), "connector");
    assert_eq!(server.text("kube-unbound-identifiers").unwrap(), "none");
    assert_eq!(server.text("lease-label").unwrap(), "k8s-app=connector-server");
    server
        .set(
            "kube-service-accounts",
            "connector/connector-agent, kube-system/konnectivity-agent",
        )
        .unwrap();
    assert_eq!(server.kube_service_accounts.len(), 2);
    let err = server
        .set("kube-service-accounts", "connector-agent")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kube-service-accounts") && err.contains("NAMESPACE/NAME"),
        "{err}"
    );
    server.set("kube-unbound-identifiers", "cidr=10.0.0.0/16").unwrap();
    assert!(server.set("kube-unbound-identifiers", "everything").is_err());
    assert!(server.set("kube-review-cache-ttl", "2h").is_err());
    server.set("kube-review-cache-ttl", "0").unwrap();
    for bad in ["Kube_System", "a/b", ""] {
        assert!(server.set("lease-namespace", bad).is_err(), "{bad:?}");
    }
    assert!(server.set("lease-label", "no-value").is_err());
    for bad in ["1.5s", "0", "2h"] {
        assert!(server.set("lease-duration", bad).is_err(), "{bad}");
    }
    assert!(server.set("lease-renew-interval", "10ms").is_err());
    server.validate().unwrap();

    server.set("kube-audiences", "").unwrap();
    assert_eq!(server.validate().unwrap_err().key(), Some("kube-audiences"));
    server.set("kube-audiences", "connector").unwrap();
    server.set("lease-duration", "5s").unwrap();
    server.set("lease-renew-interval", "5s").unwrap();
    let err = server.validate().unwrap_err();
    assert_eq!(err.key(), Some("lease-renew-interval"), "{err}");

    let mut server = ServerSettings::default();
    server.set("kubeconfig", "/etc/connector/kubeconfig").unwrap();
    let err = server.validate().unwrap_err().to_string();
    assert!(err.contains("nothing uses the apiserver"), "{err}");
}

/// The Kubernetes settings need the apiserver client: a kubeconfig that
/// cannot be read is named (with the feature), or the build says it lacks
/// the feature; a server id that cannot name a Lease is refused.
#[test]
fn kubernetes_settings_need_a_usable_kubeconfig_and_lease_name() {
    let dir = std::env::temp_dir().join(format!("connector-kube-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ThrowawayCa::new("settings ca").unwrap();
    let issued = ca.issue("server", &["localhost"]).unwrap();
    let mut server = ServerSettings::default();
    server
        .set("kube-service-accounts", "connector/connector-agent")
        .unwrap();
    server.set("kubeconfig", dir.join("missing").to_str().unwrap()).unwrap();
    let err = server.clone().into_setup_with(Some(issued.identity())).err().unwrap();
    if cfg!(feature = "kubernetes") {
        assert_eq!(err.key(), Some("kubeconfig"), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    } else {
        assert_eq!(err.key(), Some("kube-service-accounts"), "{err}");
        assert!(err.to_string().contains("feature `kubernetes`"), "{err}");
    }
    let mut leases = ServerSettings::default();
    leases.set("lease-namespace", "kube-system").unwrap();
    leases.set("server-id", "Replica_1").unwrap();
    let err = leases.into_setup_with(Some(issued.identity())).err().unwrap();
    assert_eq!(err.key(), Some("server-id"), "{err}");
    assert!(err.to_string().contains("cannot name a Lease"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
