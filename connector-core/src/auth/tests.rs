//! The rules tying an agent id to its authenticated identity.

use super::*;

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
