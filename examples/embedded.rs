//! A server and an agent in one process, over real QUIC on loopback, and one
//! HTTP request tunnelled through the agent to a local web server.
//!
//! Run with `cargo run -p connector-examples --example embedded`.

use std::sync::Arc;

use connector_core::agent::{Agent, AgentConfig, DestinationPolicy};
use connector_core::auth::{Allowance, StaticCredential, TokenAuthenticator, TokenEntry};
use connector_core::pki::ThrowawayCa;
use connector_core::proto::{Credential, Secret};
use connector_core::server::{Selector, Server, ServerConfig};
use connector_core::tls::{AgentTls, ServerTls};
use connector_core::transport::quic::{QuicConnector, QuicListener, QuicSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Certificates and a token (in production: your PKI and a secret store).
    let ca = ThrowawayCa::new("example CA")?;
    let token = Secret::new("example-token");

    // The server, next to the control plane: accepts the token as node "node-a".
    let auth = TokenAuthenticator::from_entries(vec![TokenEntry::new(
        &token,
        "node-a",
        Allowance::Only("host=node-a".parse()?),
    )]);
    let server = Server::new(ServerConfig::new("server-1", Arc::new(auth)));
    let tls = ServerTls {
        identity: ca.issue("server", &["localhost"])?.identity(),
        client_cas: None,
    };
    let listener = QuicListener::bind("127.0.0.1:0".parse()?, &tls, &QuicSettings::default())?;
    let server_addr = listener.local_socket_addr()?;
    server.serve(Arc::new(listener));

    // A web server only the agent's network can reach.
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let web_addr = web.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = web.accept().await {
            let mut request = [0u8; 1024];
            let _ = tcp.read(&mut request).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n")
                .await;
        }
    });

    // The agent, in the private network: dials out and serves the server's dials.
    let agent_tls = AgentTls {
        server_cas: vec![ca.cert_der()].into(),
        server_name: "localhost".into(),
        client_identity: None,
    };
    let connector = QuicConnector::new(server_addr.to_string(), &agent_tls, &QuicSettings::default())?;
    let mut config = AgentConfig::new("node-a", Arc::new(StaticCredential(Credential::Bearer(token))));
    config.policy = DestinationPolicy::new(vec!["127.0.0.1/32".parse()?]); // loopback is denied by default
    let agent = Agent::start(Arc::new(connector), config);
    agent.connected().await;

    // The control plane reaches the web server through node-a.
    let mut stream = server
        .dial(&Selector::Host("node-a".into()), &web_addr.to_string())
        .await?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: node-a\r\n\r\n").await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    println!("{response}");

    agent.stop().await;
    server.shutdown();
    Ok(())
}
