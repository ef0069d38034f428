//! The ServiceAccount-token authenticator against an in-process apiserver
//! ([`Api`], counting its reviews): the cache (coalescing, expiry, bound,
//! failures), node binding and the ServiceAccount rules.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use tokio::sync::watch;

use super::*;
use crate::auth::{check_agent_id, served_identifiers};
use crate::kubernetes::KubeApiError;
use crate::proto::{Hello, Secret};
use crate::transport::PeerInfo;

const AGENTS: &str = "system:serviceaccount:connector:connector-agent";

/// A JWT (unsigned: the review, here [`Api`], is what checks it) with
/// `exp` and a `jti` that makes it distinct.
fn jwt(jti: &str, exp: Option<SystemTime>) -> String {
    let b64 = |json: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string());
    let mut claims = serde_json::json!({ "sub": AGENTS, "jti": jti });
    if let Some(exp) = exp {
        claims["exp"] = exp.duration_since(UNIX_EPOCH).unwrap().as_secs().into();
    }
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(serde_json::json!({"alg": "RS256"})),
        b64(claims)
    )
}

fn in_an_hour() -> Option<SystemTime> {
    Some(SystemTime::now() + Duration::from_secs(3600))
}

fn user(username: &str, node: Option<&str>) -> ReviewedUser {
    let mut extra = BTreeMap::new();
    if let Some(node) = node {
        extra.insert(NODE_NAME_EXTRA.to_owned(), vec![node.to_owned()]);
    }
    ReviewedUser {
        username: username.into(),
        extra,
        audiences: vec![DEFAULT_AUDIENCE.into()],
    }
}

/// How [`Api`] answers.
#[derive(Clone)]
enum Answer {
    Review(Review),
    Fail,
    Hang,
}

/// An apiserver in process: answers reviews by token (default: the agents'
/// ServiceAccount on node-a), counts them, and holds them until `open`.
struct Api {
    answers: Mutex<HashMap<String, Answer>>,
    default: Mutex<Answer>,
    nodes: HashMap<String, Vec<NodeAddress>>,
    reviews: AtomicUsize,
    node_reads: AtomicUsize,
    /// Reviews in flight now, and the most at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    open: watch::Sender<bool>,
}

impl Api {
    fn new() -> Arc<Self> {
        let address = |kind: &str, address: &str| NodeAddress {
            kind: kind.into(),
            address: address.into(),
        };
        Arc::new(Self {
            answers: Mutex::default(),
            default: Mutex::new(Answer::Review(Review::Authenticated(user(AGENTS, Some("node-a"))))),
            nodes: HashMap::from([(
                "node-a".to_owned(),
                vec![
                    address("InternalIP", "10.0.0.5"),
                    address("InternalIP", "fd00::5"),
                    address("Hostname", "node-a"),
                    address("InternalDNS", "Node-A.Cluster.Example."),
                ],
            )]),
            reviews: AtomicUsize::new(0),
            node_reads: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            open: watch::channel(true).0,
        })
    }

    fn answer(&self, token: &str, answer: Answer) {
        self.answers.lock().unwrap().insert(token.to_owned(), answer);
    }

    fn reviews(&self) -> usize {
        self.reviews.load(Ordering::SeqCst)
    }
}

impl TokenReviewer for Api {
    fn review<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> BoxFuture<'a, Result<Review, KubeApiError>> {
        Box::pin(async move {
            assert_eq!(audiences, [DEFAULT_AUDIENCE]);
            self.reviews.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let _ = self.open.subscribe().wait_for(|open| *open).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let answer = self.answers.lock().unwrap().get(token).cloned();
            match answer.unwrap_or_else(|| self.default.lock().unwrap().clone()) {
                Answer::Review(review) => Ok(review),
                Answer::Fail => Err(KubeApiError::Status {
                    request: "create TokenReview".into(),
                    code: 403,
                    message: "tokenreviews.authentication.k8s.io is forbidden".into(),
                }),
                Answer::Hang => std::future::pending().await,
            }
        })
    }

    fn node_addresses<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<NodeAddress>>, KubeApiError>> {
        Box::pin(async move {
            self.node_reads.fetch_add(1, Ordering::SeqCst);
            Ok(self.nodes.get(name).cloned())
        })
    }
}

fn config() -> KubernetesAuthConfig {
    KubernetesAuthConfig::new(vec!["connector/connector-agent".parse().unwrap()])
}

fn authenticator(api: &Arc<Api>, config: KubernetesAuthConfig) -> Arc<KubernetesAuthenticator> {
    Arc::new(KubernetesAuthenticator::new(api.clone(), config))
}

async fn authenticate(auth: &KubernetesAuthenticator, token: &str) -> Result<AgentIdentity, AuthRejection> {
    let hello = Hello::new("node-a", Identifiers::default(), Credential::Bearer(Secret::new(token)));
    let peer = PeerInfo::default();
    auth.authenticate(AuthRequest {
        hello: &hello,
        peer: &peer,
    })
    .await
}

/// Lets the spawned authentications run until `n` of them have looked up
/// their token (no time passes: the runtime's clock is paused).
async fn until_looked_up(auth: &KubernetesAuthenticator, n: u64) {
    for _ in 0..10_000 {
        if auth.metrics().cache.total() >= n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!(
        "{} of {n} authentications looked up their token",
        auth.metrics().cache.total()
    );
}

/// Every agent of `tokens` authenticates at once, while the apiserver holds
/// its answers until all have asked.
async fn storm(api: &Api, auth: &Arc<KubernetesAuthenticator>, tokens: Vec<String>) {
    api.open.send_replace(false);
    let before = auth.metrics().cache.total();
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let auth = auth.clone();
            tokio::spawn(async move { authenticate(&auth, &token).await })
        })
        .collect();
    until_looked_up(auth, before + tasks.len() as u64).await;
    api.open.send_replace(true);
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().name, format!("{AGENTS}@node-a"));
    }
}

/// A reconnect storm: 1,000 agents with one token each make one review per
/// token (at most 32 at once, and one read of their node), 1,000 with the
/// same token one review, and a second storm none.
#[tokio::test(start_paused = true)]
async fn a_reconnect_storm_makes_one_review_per_distinct_token() {
    let api = Api::new();
    let auth = authenticator(&api, config());
    let distinct: Vec<String> = (0..1000).map(|i| jwt(&format!("agent-{i}"), in_an_hour())).collect();
    storm(&api, &auth, distinct.clone()).await;
    assert_eq!(api.reviews(), 1000, "one review per distinct token");
    assert_eq!(auth.metrics().reviews.get("authenticated"), 1000);
    assert_eq!(auth.metrics().cache.get("miss"), 1000);
    assert_eq!(
        api.max_in_flight.load(Ordering::SeqCst),
        32,
        "at most 32 requests at once"
    );
    assert_eq!(api.node_reads.load(Ordering::SeqCst), 1, "one read of their node");

    let shared = jwt("shared", in_an_hour());
    storm(&api, &auth, vec![shared; 1000]).await;
    assert_eq!(api.reviews(), 1001, "one review for a thousand agents with one token");
    assert_eq!(auth.metrics().cache.get("shared"), 999);

    storm(&api, &auth, distinct).await;
    assert_eq!(api.reviews(), 1001, "the second storm is answered from the cache");
    assert_eq!(auth.metrics().cache.get("hit"), 1000);
    assert_eq!(auth.cached_tokens(), 1001);
}

/// Decisions are reused for the cache time, never past the token's expiry,
/// and the cache holds at most its capacity (least recently used go).
#[tokio::test(start_paused = true)]
async fn cached_decisions_end_with_the_cache_time_the_token_expiry_and_the_bound() {
    let api = Api::new();
    let mut cfg = config();
    cfg.cache_ttl = Duration::from_secs(120);
    cfg.cache_capacity = 2;
    let auth = authenticator(&api, cfg);

    let long = jwt("long", in_an_hour());
    // Expires in 60 s by its exp claim (by the real clock; the cache's clock
    // is the runtime's, paused), long before the cache time of 120 s.
    let short = jwt("short", Some(SystemTime::now() + Duration::from_secs(60)));
    authenticate(&auth, &long).await.unwrap();
    authenticate(&auth, &short).await.unwrap();
    assert_eq!(api.reviews(), 2);
    tokio::time::advance(Duration::from_secs(50)).await;
    authenticate(&auth, &long).await.unwrap();
    authenticate(&auth, &short).await.unwrap();
    assert_eq!(api.reviews(), 2, "both still cached");
    tokio::time::advance(Duration::from_secs(15)).await;
    authenticate(&auth, &short).await.unwrap();
    assert_eq!(
        api.reviews(),
        3,
        "the short token's decision ended with its expiry, not the cache time"
    );
    tokio::time::advance(Duration::from_secs(56)).await;
    authenticate(&auth, &long).await.unwrap();
    assert_eq!(api.reviews(), 4, "the long token's decision ended with the cache time");

    // Capacity 2: a third token evicts the least recently used (short).
    authenticate(&auth, &jwt("third", in_an_hour())).await.unwrap();
    assert_eq!((api.reviews(), auth.cached_tokens()), (5, 2));
    authenticate(&auth, &long).await.unwrap();
    assert_eq!(api.reviews(), 5, "long was used recently: kept");
    authenticate(&auth, &short).await.unwrap();
    assert_eq!(api.reviews(), 6, "short was evicted");

    // No caching at all: every authentication reviews.
    let mut cfg = config();
    cfg.cache_ttl = Duration::ZERO;
    let auth = authenticator(&api, cfg);
    authenticate(&auth, &long).await.unwrap();
    authenticate(&auth, &long).await.unwrap();
    assert_eq!(api.reviews(), 8);
}

/// A failed or hanging review refuses the agents waiting for it with the
/// reason, is not cached, and does not hold up other tokens; a token the
/// apiserver refuses is remembered for a few seconds only.
#[tokio::test(start_paused = true)]
async fn failed_reviews_refuse_with_a_reason_and_are_not_cached() {
    let api = Api::new();
    let auth = authenticator(&api, config());
    let (failing, hanging, denied, good) = (
        jwt("failing", in_an_hour()),
        jwt("hanging", in_an_hour()),
        jwt("denied", in_an_hour()),
        jwt("good", in_an_hour()),
    );
    api.answer(&failing, Answer::Fail);
    api.answer(&hanging, Answer::Hang);
    api.answer(
        &denied,
        Answer::Review(Review::Denied("token has been invalidated".into())),
    );

    for attempt in 1..=2 {
        let err = authenticate(&auth, &failing).await.unwrap_err();
        assert_eq!(err.code, RejectCode::Internal);
        assert!(
            err.reason.contains("TokenReview failed") && err.reason.contains("403"),
            "{}",
            err.reason
        );
        assert!(!err.reason.contains(&failing));
        assert_eq!(api.reviews(), attempt, "a failed review is not cached");
    }

    // A hanging review times out (review_timeout, 5 s) while another token is served.
    let slow = tokio::spawn({
        let (auth, hanging) = (auth.clone(), hanging.clone());
        async move { authenticate(&auth, &hanging).await }
    });
    let waiting = tokio::spawn({
        let (auth, hanging) = (auth.clone(), hanging.clone());
        async move { authenticate(&auth, &hanging).await }
    });
    until_looked_up(&auth, 4).await;
    authenticate(&auth, &good).await.unwrap();
    for task in [slow, waiting] {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.code, RejectCode::Internal);
        assert!(
            err.reason.contains("did not answer the TokenReview within 5s"),
            "{}",
            err.reason
        );
    }
    assert_eq!(
        api.reviews(),
        4,
        "the two agents with the hanging token shared one review"
    );
    api.answer(
        &hanging,
        Answer::Review(Review::Authenticated(user(AGENTS, Some("node-a")))),
    );
    authenticate(&auth, &hanging).await.unwrap();
    assert_eq!(api.reviews(), 5, "the timed-out review was not cached");

    let err = authenticate(&auth, &denied).await.unwrap_err();
    assert_eq!(err.code, RejectCode::Unauthenticated);
    assert!(err.reason.contains("token has been invalidated"), "{}", err.reason);
    authenticate(&auth, &denied).await.unwrap_err();
    assert_eq!(api.reviews(), 6, "a refused token is remembered for a while");
    tokio::time::advance(DENIED_CACHE_TTL).await;
    authenticate(&auth, &denied).await.unwrap_err();
    assert_eq!(api.reviews(), 7, "but not for the whole cache time");
    assert_eq!(auth.metrics().reviews.get("error"), 3);
    assert_eq!(auth.metrics().reviews.get("denied"), 2);
}

/// What is not a ServiceAccount token, or has expired, is refused without a review.
#[tokio::test(start_paused = true)]
async fn tokens_that_are_no_jwt_or_expired_are_refused_without_a_review() {
    let api = Api::new();
    let auth = authenticator(&api, config());
    for (token, reason) in [
        ("3f9c0a77b1d2e1", "not a JWT"),
        ("a.b", "not a JWT"),
        ("a.!!!.c", "not base64url"),
        ("eyJhIjoxfQ.WzFd.c2ln", "not a JSON object"),
    ] {
        let err = authenticate(&auth, token).await.unwrap_err();
        assert!(
            err.reason.contains(reason) && !err.reason.contains(token),
            "{token}: {}",
            err.reason
        );
    }
    let expired = jwt("expired", Some(SystemTime::now() - Duration::from_secs(1)));
    let err = authenticate(&auth, &expired).await.unwrap_err();
    assert!(err.reason.contains("expired at"), "{}", err.reason);
    assert_eq!(api.reviews(), 0);
    // No exp (a legacy Secret token): reviewed, cached for the cache time.
    authenticate(&auth, &jwt("legacy", None)).await.unwrap();
    assert_eq!(api.reviews(), 1);
}

/// A token bound to node-a may serve node-a's name and addresses only,
/// under an identity name of its own node; the agent id must be the node.
#[tokio::test(start_paused = true)]
async fn a_node_bound_token_serves_its_node_only() {
    let api = Api::new();
    let auth = authenticator(&api, config());
    let identity = authenticate(&auth, &jwt("a", in_an_hour())).await.unwrap();
    assert_eq!(identity.name, "system:serviceaccount:connector:connector-agent@node-a");
    assert_eq!(
        identity.allowance,
        Allowance::Only(
            "host=node-a,host=node-a.cluster.example,ipv4=10.0.0.5,ipv6=fd00::5"
                .parse()
                .unwrap()
        )
    );
    check_agent_id(&identity, "node-a").unwrap();
    check_agent_id(&identity, "node-a.cluster.example").unwrap();
    assert!(check_agent_id(&identity, "node-b").is_err());
    let claims = |text: &str| served_identifiers(&identity, &text.parse().unwrap());
    claims("host=node-a,ipv4=10.0.0.5").unwrap();
    let err = claims("host=node-b").unwrap_err();
    assert_eq!(err.code, RejectCode::IdentifiersNotAllowed);
    assert!(claims("ipv4=10.0.0.6").is_err() && claims("cidr=10.0.0.0/24").is_err());
    assert!(claims("default-route=true").is_err());
    // Claiming nothing serves exactly the node.
    assert_eq!(
        claims("").unwrap().to_string(),
        "host=node-a,host=node-a.cluster.example,ipv4=10.0.0.5,ipv6=fd00::5"
    );

    // A token bound to a node that does not exist.
    let ghost = jwt("ghost", in_an_hour());
    api.answer(
        &ghost,
        Answer::Review(Review::Authenticated(user(AGENTS, Some("node-z")))),
    );
    let err = authenticate(&auth, &ghost).await.unwrap_err();
    assert!(
        err.reason.contains("bound to node node-z, which does not exist"),
        "{}",
        err.reason
    );
}

#[test]
fn node_addresses_become_identifiers() {
    let address = |kind: &str, address: &str| NodeAddress {
        kind: kind.into(),
        address: address.into(),
    };
    let ids = node_identifiers(
        "Node-B",
        &[
            address("InternalIP", "192.168.1.7"),
            address("ExternalIP", "192.168.1.7"),
            address("Hostname", "node-b"),
            address("ExternalDNS", "*.wildcard.example"),
            address("InternalDNS", "bad name"),
        ],
    );
    assert_eq!(ids.to_string(), "host=node-b,ipv4=192.168.1.7");
}

/// Only the configured ServiceAccounts, for the configured audiences;
/// tokens without a node as the configuration says.
#[test]
fn only_the_configured_service_accounts_and_audiences_are_admitted() {
    let cfg = config();
    let bound = binding_of(&cfg, &user(AGENTS, Some("node-a"))).unwrap();
    assert_eq!(
        bound,
        Binding::Node {
            account: "connector/connector-agent".parse().unwrap(),
            node: "node-a".into()
        }
    );
    for other in [
        "system:serviceaccount:connector:other",
        "system:serviceaccount:kube-system:connector-agent",
        "system:serviceaccount:connector",
        "connector-agent",
        "system:node:node-a",
    ] {
        let err = binding_of(&cfg, &user(other, Some("node-a"))).unwrap_err();
        assert_eq!(err.code, RejectCode::Unauthenticated);
        assert!(
            err.reason
                .contains("not one of the agents' ServiceAccounts (kube-service-accounts: connector/connector-agent)"),
            "{}",
            err.reason
        );
    }
    let mut wrong_audience = user(AGENTS, Some("node-a"));
    wrong_audience.audiences = vec!["https://kubernetes.default.svc".into()];
    assert!(
        binding_of(&cfg, &wrong_audience)
            .unwrap_err()
            .reason
            .contains("not for audience connector")
    );
    let mut two_nodes = user(AGENTS, None);
    two_nodes
        .extra
        .insert(NODE_NAME_EXTRA.into(), vec!["node-a".into(), "node-b".into()]);
    assert!(
        binding_of(&cfg, &two_nodes)
            .unwrap_err()
            .reason
            .contains("names no usable node")
    );

    // Unbound: refused by default, with the setting to change named.
    let err = binding_of(&cfg, &user(AGENTS, None)).unwrap_err();
    assert_eq!(err.code, RejectCode::IdentifiersNotAllowed);
    assert!(
        err.reason.contains("not bound to a node") && err.reason.contains("kube-unbound-identifiers"),
        "{}",
        err.reason
    );
    let mut cfg = config();
    cfg.unbound = "cidr=10.0.0.0/16,default-route=true".parse().unwrap();
    let unbound = binding_of(&cfg, &user(AGENTS, None)).unwrap();
    assert_eq!(
        unbound,
        Binding::Unbound {
            account: "connector/connector-agent".parse().unwrap(),
            allowance: Allowance::Only("cidr=10.0.0.0/16,default-route=true".parse().unwrap()),
        }
    );
}

#[test]
fn service_account_names_parse() {
    let account: ServiceAccount = "connector/connector-agent".parse().unwrap();
    assert_eq!(account.username(), AGENTS);
    assert_eq!(ServiceAccount::from_username(AGENTS), Some(account.clone()));
    assert_eq!(account.to_string(), "connector/connector-agent");
    for bad in [
        "connector",
        "Connector/agent",
        "connector/agent/x",
        "/agent",
        "connector/",
        "a_b/c",
    ] {
        let err = bad.parse::<ServiceAccount>().unwrap_err().to_string();
        assert!(err.contains("NAMESPACE/NAME"), "{bad}: {err}");
    }
    for text in ["none", "*", "host=node-a,cidr=10.0.0.0/8"] {
        assert_eq!(text.parse::<UnboundTokens>().unwrap().to_string(), text);
    }
    assert!("bogus".parse::<UnboundTokens>().is_err());
}
