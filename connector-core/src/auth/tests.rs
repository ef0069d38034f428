//! The rules tying an agent id to its authenticated identity.

use super::*;
use crate::proto::Hello;
use crate::transport::PeerInfo;
use rustls_pki_types::pem::PemObject;

fn identity(name: &str, allowance: Allowance) -> AgentIdentity {
    AgentIdentity {
        name: name.into(),
        allowance,
    }
}

#[test]
fn an_agent_id_must_come_from_the_identity() {
    let node_a = identity(
        "node-a",
        Allowance::Only("host=node-a.example,cidr=10.0.0.0/8".parse().unwrap()),
    );
    for ok in ["node-a", "node-a/pod-0", "node-a.example", "NODE-A.example."] {
        assert!(check_agent_id(&node_a, ok).is_ok(), "{ok}");
    }
    for bad in [
        "node-b",
        "node-a/",
        "node-ab",
        "node-b/node-a",
        "10.0.0.5",
        "node-b.example",
    ] {
        let err = check_agent_id(&node_a, bad).unwrap_err();
        assert_eq!(err.code, RejectCode::IdentifiersNotAllowed, "{bad}");
        assert!(
            err.reason.contains("node-a") && err.reason.contains(bad),
            "{}",
            err.reason
        );
    }
    let gateway = identity("gateway", Allowance::Any);
    assert!(check_agent_id(&gateway, "anything-at-all").is_ok());
}

/// An authenticator that accepts everyone as `name` (an embedder's own, a C
/// or Python callback).
struct Fixed(&'static str);

impl Authenticator for Fixed {
    fn authenticate<'a>(&'a self, _: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
        let allowance = Allowance::Only("host=node-x".parse().unwrap());
        Box::pin(async move { Ok(identity(self.0, allowance)) })
    }
}

fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

/// Identity `team` may use `team/<instance>`; if another identity could be
/// named `team/victim`, `team` could take its agent id and replace it. No
/// authenticator yields a name with `/` (or a control character): tokens
/// files fail to load, certificates and custom authenticators are refused.
#[test]
fn identity_names_cannot_hold_a_slash_or_control_characters() {
    // Tokens file: refused at load, naming the line, never the token.
    for (text, what) in [
        ("tok-team team\ntok-victim team/victim cidr=10.0.0.0/8\n", "'/'"),
        ("tok-team team\ntok-victim team/victim\n", "'/'"),
        ("tok-team team *\ntok-bell bell\u{7}name *\n", "control character"),
    ] {
        let err = parse_tokens(text, "tokens").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains(what), "{err}");
        assert!(!err.contains("tok-victim") && !err.contains("tok-bell"), "{err}");
    }

    // Certificate: its common name cannot become such an identity.
    let ca = crate::pki::ThrowawayCa::new("test ca").unwrap();
    for cn in ["team/victim", "evil\u{1b}[2Jname"] {
        let issued = ca.issue(cn, &["node-x"]).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let err = CertificateAuthenticator::identity_of(&der).unwrap_err();
        assert_eq!(err.code, RejectCode::Unauthenticated, "{cn:?}");
        assert!(err.reason.contains("identity name"), "{cn:?}: {}", err.reason);
    }

    // Custom authenticators, through FirstOf (as ServerSetup runs them).
    let hello = Hello::new("team/victim", Default::default(), crate::proto::Credential::None);
    let peer = PeerInfo::default();
    let request = AuthRequest {
        hello: &hello,
        peer: &peer,
    };
    for name in ["team/victim", "", "line\nbreak"] {
        let chain = FirstOf(vec![Arc::new(Fixed(name))]);
        let err = run(chain.authenticate(request)).unwrap_err();
        assert_eq!(err.code, RejectCode::Unauthenticated, "{name:?}");
        assert!(err.reason.contains("identity name"), "{name:?}: {}", err.reason);
        // And whatever reaches the server directly: the agent id check refuses it.
        for allowance in [Allowance::Any, Allowance::Only("host=node-x".parse().unwrap())] {
            let err = check_agent_id(&identity(name, allowance), "team/victim").unwrap_err();
            assert_eq!(err.code, RejectCode::Unauthenticated, "{name:?}");
        }
    }
    // Ordinary names, including spaces (certificate common names have them).
    for name in ["team", "node-a.example", "Kube Node 7", "ünïcode"] {
        assert!(check_agent_id(&identity(name, Allowance::Any), "x").is_ok(), "{name:?}");
        assert!(
            run(FirstOf(vec![Arc::new(Fixed(name))]).authenticate(request)).is_ok(),
            "{name:?}"
        );
    }
}
