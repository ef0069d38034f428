//! Each congestion controller, chosen through the setup layer the binary
//! uses: a tunnelled transfer over a lossy, delayed path arrives intact.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use connector_core::agent::{AgentStatus, DestinationPolicy};
use connector_core::auth::StaticCredential;
use connector_core::pki::ThrowawayCa;
use connector_core::server::Selector;
use connector_core::setup::{AgentSetup, ServerSetup};
use connector_core::transport::congestion::CongestionControl;
use connector_testkit::netsim::{Impairment, UdpImpairProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bbr_carries_a_transfer_intact_over_a_lossy_path() {
    transfer_over_a_lossy_path(CongestionControl::Bbr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_controller_carries_a_transfer_intact_over_a_lossy_path() {
    // 10 ms of round trip: the default runs BBR's window, with Cubic following along.
    transfer_over_a_lossy_path(CongestionControl::default()).await
}

async fn transfer_over_a_lossy_path(congestion: CongestionControl) {
    guard(async {
        init_tracing();
        let ca = ThrowawayCa::new("congestion CA").unwrap();
        let mut server = ServerSetup::new(
            "127.0.0.1:0".parse().unwrap(),
            ca.issue("connector server", &["localhost"]).unwrap().identity(),
        );
        server.authenticators.push(authenticator());
        server.congestion = congestion;
        let started = server.start().unwrap();
        let path = UdpImpairProxy::start(vec![started.local_addr], 11).await.unwrap();
        path.set(Impairment {
            drop: 0.02,
            delay: Duration::from_millis(5),
            ..Impairment::default()
        });
        let mut agent = AgentSetup::new(path.local_addr().to_string(), vec![ca.cert_der()], "node-a");
        agent.server_name = Some("localhost".into());
        agent.credentials = Some(Arc::new(StaticCredential(token("node-a"))));
        agent.identifiers = "host=node-a,ipv4=127.0.0.1".parse().unwrap();
        agent.policy = DestinationPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        agent.congestion = congestion;
        let agent = agent.start().unwrap();
        let status = agent
            .wait_for(|s| matches!(s, AgentStatus::Connected { .. } | AgentStatus::Rejected { .. }))
            .await;
        assert!(matches!(status, AgentStatus::Connected { .. }), "{status:?}");

        const LEN: usize = 8 * 1024 * 1024;
        let echo = echo_target().await.to_string();
        let stream = started
            .server
            .dial(&Selector::Agent("node-a".into()), &echo)
            .await
            .unwrap();
        let data = pattern(LEN, 5);
        let back = echo_all(stream, &data).await;
        assert_eq!(back.len(), LEN);
        assert_eq!(sha256(&back), sha256(&data));
        assert!(
            path.stats().to_upstream.dropped > 0,
            "the path dropped nothing: {:?}",
            path.stats()
        );
    })
    .await
}
