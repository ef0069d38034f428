//! The ServiceAccount-token authenticator and the Lease controller against a
//! real kube-apiserver (Kubernetes 1.30 or newer, for node-bound tokens).
//!
//! Runs when `CONNECTOR_TEST_KUBE_APISERVER` names a kubeconfig whose user may
//! create and delete namespaces, nodes, pods, ServiceAccount tokens, leases
//! and TokenReviews (cluster-admin; the Go end-to-end suite in
//! `connector-cli/tests/kubernetes` starts such an apiserver); skipped with
//! a printed reason otherwise. Each test works in a namespace and on a Node of
//! its own (named after the process id) and deletes them at the end.
//!
//! ```sh
//! CONNECTOR_TEST_KUBE_APISERVER=/path/to/admin.kubeconfig \
//!     cargo test -p connector-core --features kubernetes --test kube_apiserver
//! ```
#![cfg(feature = "kubernetes")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use connector_core::auth::{
    AgentIdentity, Allowance, AuthRejection, AuthRequest, Authenticator, KubernetesAuthConfig, KubernetesAuthenticator,
    ServiceAccount,
};
use connector_core::kubernetes::{KubeClient, Label};
use connector_core::proto::{Credential, Hello, RejectCode, Secret};
use connector_core::server::leases::{LeaseController, LeaseSettings};
use connector_core::transport::{BoxFuture, PeerInfo};
use connector_core::{Identifiers, Server, ServerConfig};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount as KubeServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

const ENV: &str = "CONNECTOR_TEST_KUBE_APISERVER";

/// The kubeconfig to test against, or `None` after saying why the test is skipped.
fn kubeconfig() -> Option<PathBuf> {
    match std::env::var_os(ENV) {
        Some(path) => Some(path.into()),
        None => {
            eprintln!("skipped: set {ENV} to a cluster-admin kubeconfig to run against a real kube-apiserver");
            None
        }
    }
}

async fn admin(path: &PathBuf) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn object<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> T {
    serde_json::from_value(json).unwrap()
}

/// A namespace and a Node for one test, deleted by [`Fixture::cleanup`] at
/// its end.
struct Fixture {
    client: kube::Client,
    namespace: String,
    node: String,
}

impl Fixture {
    async fn new(client: kube::Client, name: &str) -> Self {
        let namespace = format!("connector-it-{name}-{}", std::process::id());
        let node = format!("connector-it-{name}-node-{}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &object(serde_json::json!({"metadata": {"name": namespace}})),
            )
            .await
            .unwrap();
        let nodes: Api<Node> = Api::all(client.clone());
        nodes
            .create(
                &PostParams::default(),
                &object(serde_json::json!({"metadata": {"name": node}})),
            )
            .await
            .unwrap();
        let status = serde_json::json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "10.99.0.7"},
            {"type": "Hostname", "address": node},
        ]}});
        nodes
            .patch_status(&node, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        Self {
            client,
            namespace,
            node,
        }
    }

    /// A ServiceAccount `name` and a pod of it on the fixture's node.
    async fn pod_of(&self, account: &str) -> Pod {
        let accounts: Api<KubeServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        accounts
            .create(
                &PostParams::default(),
                &object(serde_json::json!({"metadata": {"name": account}})),
            )
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let pod = serde_json::json!({
            "metadata": {"name": format!("{account}-pod")},
            "spec": {
                "nodeName": self.node,
                "serviceAccountName": account,
                "automountServiceAccountToken": false,
                "containers": [{"name": "agent", "image": "registry.invalid/connector"}],
            },
        });
        pods.create(&PostParams::default(), &object(pod)).await.unwrap()
    }

    /// A token of `account` for `audience`, bound to `pod` if given.
    async fn token(&self, account: &str, audience: &str, pod: Option<&Pod>) -> String {
        let accounts: Api<KubeServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.into()],
                expiration_seconds: Some(600),
                bound_object_ref: pod.map(|pod| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: pod.metadata.name.clone(),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..TokenRequest::default()
        };
        let answer: TokenRequest = accounts
            .create_subresource("token", account, &PostParams::default(), &request)
            .await
            .unwrap();
        answer.status.unwrap().token
    }

    async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.namespace, &DeleteParams::default())
            .await;
        let _ = Api::<Node>::all(self.client)
            .delete(&self.node, &DeleteParams::default())
            .await;
    }
}

async fn authenticate(auth: &KubernetesAuthenticator, token: &str) -> Result<AgentIdentity, AuthRejection> {
    let hello = Hello::new("agent", Identifiers::default(), Credential::Bearer(Secret::new(token)));
    let peer = PeerInfo::default();
    auth.authenticate(AuthRequest {
        hello: &hello,
        peer: &peer,
    })
    .await
}

/// A pod-bound token of the agents' ServiceAccount is admitted as its node
/// and may serve the Node's name and addresses only; an unbound token, a
/// token for another audience and another ServiceAccount's are refused.
#[tokio::test]
async fn service_account_tokens_are_reviewed_and_bound_to_their_node() {
    let Some(path) = kubeconfig() else { return };
    let fixture = Fixture::new(admin(&path).await, "auth").await;
    let pod = fixture.pod_of("agent").await;
    let intruder = fixture.pod_of("intruder").await;
    let bound = fixture.token("agent", "connector", Some(&pod)).await;
    let unbound = fixture.token("agent", "connector", None).await;
    let other_audience = fixture
        .token("agent", "https://kubernetes.default.svc", Some(&pod))
        .await;
    let intruders = fixture.token("intruder", "connector", Some(&intruder)).await;

    let reviewer = Arc::new(KubeClient::from_kubeconfig(&path).unwrap());
    let account = ServiceAccount::new(&fixture.namespace, "agent").unwrap();
    let auth = KubernetesAuthenticator::new(reviewer, KubernetesAuthConfig::new(vec![account.clone()]));

    let identity = authenticate(&auth, &bound).await.unwrap();
    assert_eq!(identity.name, format!("{}@{}", account.username(), fixture.node));
    let allowed: Identifiers = format!("host={},ipv4=10.99.0.7", fixture.node).parse().unwrap();
    assert_eq!(identity.allowance, Allowance::Only(allowed));
    authenticate(&auth, &bound).await.unwrap();
    assert_eq!(
        auth.metrics().reviews.get("authenticated"),
        1,
        "the second one came from the cache"
    );

    let err = authenticate(&auth, &unbound).await.unwrap_err();
    assert_eq!(err.code, RejectCode::IdentifiersNotAllowed, "{}", err.reason);
    assert!(err.reason.contains("not bound to a node"), "{}", err.reason);
    let err = authenticate(&auth, &other_audience).await.unwrap_err();
    assert_eq!(err.code, RejectCode::Unauthenticated, "{}", err.reason);
    assert!(err.reason.contains("did not authenticate"), "{}", err.reason);
    let err = authenticate(&auth, &intruders).await.unwrap_err();
    assert!(
        err.reason.contains("not one of the agents' ServiceAccounts"),
        "{}",
        err.reason
    );
    for token in [&bound, &unbound, &other_audience, &intruders] {
        assert!(!err.reason.contains(token.as_str()));
    }
    fixture.cleanup().await;
}

struct Nobody;

impl Authenticator for Nobody {
    fn authenticate<'a>(&'a self, _: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
        Box::pin(async { Err(AuthRejection::unauthenticated("no agents in this test")) })
    }
}

/// Two servers holding Leases count 2; once one shuts down (deleting its
/// Lease) the other counts 1.
#[tokio::test]
async fn two_servers_count_each_other_by_their_leases() {
    let Some(path) = kubeconfig() else { return };
    let fixture = Fixture::new(admin(&path).await, "leases").await;
    let client = Arc::new(KubeClient::from_kubeconfig(&path).unwrap());
    let label: Label = format!("connector-it={}", std::process::id()).parse().unwrap();
    let settings = LeaseSettings {
        duration: Duration::from_secs(5),
        renew_interval: Duration::from_secs(1),
    };
    let servers: Vec<Server> = ["replica-a", "replica-b"]
        .into_iter()
        .map(|id| {
            let server = Server::new(ServerConfig::new(id, Arc::new(Nobody)));
            let store = Arc::new(client.leases(&fixture.namespace, &label));
            LeaseController::new(store, settings.clone()).start(&server).unwrap();
            server
        })
        .collect();
    let bound = Duration::from_secs(30);
    for server in &servers {
        tokio::time::timeout(bound, server.wait_for_server_count(|n| *n == 2))
            .await
            .unwrap_or_else(|_| panic!("{} never counted 2 replicas", server.config().server_id));
    }
    servers[0].drain(Duration::ZERO).await;
    tokio::time::timeout(bound, servers[1].wait_for_server_count(|n| *n == 1))
        .await
        .expect("replica-b never counted 1 replica after replica-a left");
    servers[1].drain(Duration::ZERO).await;
    fixture.cleanup().await;
}

/// A reconnect storm against the real apiserver: 1,000 agents, each with a
/// pod-bound token of its own, authenticate at once: 1,000 reviews; at once
/// again: none; 1,000 agents presenting one token: one review. Prints the
/// figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnect_storm_of_1000_agents_makes_one_review_per_distinct_token() {
    let Some(path) = kubeconfig() else { return };
    let fixture = Fixture::new(admin(&path).await, "storm").await;
    let pod = fixture.pod_of("agent").await;
    let mut tokens = Vec::new();
    for _ in 0..1000 {
        tokens.push(fixture.token("agent", "connector", Some(&pod)).await);
    }
    let reviewer = Arc::new(KubeClient::from_kubeconfig(&path).unwrap());
    let account = ServiceAccount::new(&fixture.namespace, "agent").unwrap();
    let auth = Arc::new(KubernetesAuthenticator::new(
        reviewer,
        KubernetesAuthConfig::new(vec![account]),
    ));
    let storm = |tokens: Vec<String>| {
        let auth = auth.clone();
        async move {
            let started = std::time::Instant::now();
            let tasks: Vec<_> = tokens
                .into_iter()
                .map(|token| {
                    let auth = auth.clone();
                    tokio::spawn(async move { authenticate(&auth, &token).await })
                })
                .collect();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
            started.elapsed()
        }
    };
    let reviews = || auth.metrics().reviews.get("authenticated");
    let first = storm(tokens.clone()).await;
    assert_eq!(reviews(), 1000);
    let second = storm(tokens.clone()).await;
    assert_eq!(reviews(), 1000, "the second storm is answered from the cache");
    let shared = storm(vec![fixture.token("agent", "connector", Some(&pod)).await; 1000]).await;
    assert_eq!(reviews(), 1001, "1,000 agents with one token: one review");
    eprintln!(
        "reconnect storms of 1,000 agents: distinct tokens 1000 reviews in {first:?}; again 0 reviews in {second:?}; \
         one shared token 1 review in {shared:?}; cache {:?}",
        ["hit", "shared", "miss"].map(|r| (r, auth.metrics().cache.get(r)))
    );
    fixture.cleanup().await;
}
