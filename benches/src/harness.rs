//! A server and one agent, connected over QUIC on loopback or over the
//! in-memory transport, with a [`crate::target`] service only the agent dials.

use std::net::SocketAddr;
use std::sync::Arc;

use connector_core::agent::{Agent, AgentConfig, DestinationPolicy};
use connector_core::auth::{Allowance, StaticCredential, TokenAuthenticator, TokenEntry};
use connector_core::pki::ThrowawayCa;
use connector_core::proto::{Credential, Secret};
use connector_core::server::{Selector, Server, ServerConfig, TunnelStream};
use connector_core::tls::{AgentTls, ServerTls};
use connector_core::transport::qmux::proxy::ProxyChoice;
use connector_core::transport::qmux::{QmuxConnector, QmuxListener, QmuxSettings};
use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};
use connector_core::transport::{Connector, Listener, memory};

/// Which transport carries the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// quinn + rustls on 127.0.0.1.
    Quic,
    /// In-process pipes: connector's own overhead without QUIC or TLS.
    Memory,
    /// The TCP fallback: TLS + QMux on 127.0.0.1.
    Tcp,
}

impl Kind {
    /// Short name for benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Quic => "quic",
            Kind::Memory => "memory",
            Kind::Tcp => "tcp",
        }
    }
}

const AGENT_ID: &str = "bench-node";

/// A running server + agent + target. Must be created and used inside a
/// tokio runtime.
pub struct Tunnel {
    /// The server; [`Tunnel::dial`] dials through it.
    pub server: Server,
    /// The agent (kept alive for the tunnel's lifetime).
    pub agent: Agent,
    /// The target service, as the agent sees it.
    pub target: SocketAddr,
    target_text: String,
    selector: Selector,
}

impl Tunnel {
    /// Starts everything and waits until the agent is registered.
    pub async fn start(kind: Kind) -> anyhow::Result<Tunnel> {
        let target = crate::target::bind_and_serve("127.0.0.1:0".parse()?).await?;
        let token = Secret::new("bench-token");
        let allowed = format!("host={AGENT_ID},ipv4=127.0.0.1").parse()?;
        let auth = TokenAuthenticator::from_entries(vec![TokenEntry::new(&token, AGENT_ID, Allowance::Only(allowed))]);
        let server = Server::new(ServerConfig::new("bench-server", Arc::new(auth)));
        let ca = ThrowawayCa::new("connector bench CA")?;
        let tls = ServerTls {
            identity: ca
                .issue("connector bench server", &["localhost", "127.0.0.1"])?
                .identity(),
            client_cas: None,
        };
        let agent_tls = AgentTls {
            server_cas: vec![ca.cert_der()].into(),
            server_name: "localhost".into(),
            client_identity: None,
        };
        let (listener, connector): (Arc<dyn Listener>, Arc<dyn Connector>) = match kind {
            Kind::Tcp => {
                let settings = QmuxSettings::default();
                let listener = QmuxListener::bind("127.0.0.1:0".parse()?, &tls, &settings)?;
                let addr = listener.local_socket_addr()?;
                let connector =
                    QmuxConnector::new(addr.to_string(), &agent_tls, &settings)?.with_proxy(ProxyChoice::Direct);
                (Arc::new(listener), Arc::new(connector))
            }
            Kind::Quic => {
                let settings = QuicSettings::default();
                let listener = QuicListener::bind("127.0.0.1:0".parse()?, &tls, &settings)?;
                let addr = listener.local_socket_addr()?;
                let connector = QuicConnector::new(addr.to_string(), &agent_tls, &settings)?;
                (Arc::new(listener), Arc::new(connector))
            }
            Kind::Memory => {
                let (listener, connector) = memory::pair();
                (Arc::new(listener), Arc::new(connector))
            }
        };
        server.serve(listener);
        let mut config = AgentConfig::new(AGENT_ID, Arc::new(StaticCredential(Credential::Bearer(token))));
        config.identifiers = format!("host={AGENT_ID},ipv4=127.0.0.1").parse()?;
        config.policy = DestinationPolicy::new(vec!["127.0.0.0/8".parse()?]);
        let agent = Agent::start(connector, config);
        agent.connected().await;
        Ok(Tunnel {
            server,
            agent,
            target,
            target_text: target.to_string(),
            selector: Selector::Host(AGENT_ID.into()),
        })
    }

    /// Opens a tunnelled connection to the target service.
    pub async fn dial(&self) -> anyhow::Result<TunnelStream> {
        Ok(self.server.dial(&self.selector, &self.target_text).await?)
    }
}
