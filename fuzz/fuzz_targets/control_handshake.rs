//! The control-stream handshake as the server and the agent run it, on an
//! arbitrary sequence of frames (Hello, Welcome, Reject, Dial, DialResult in
//! any order, truncated or garbage): each frame is read the way
//! `frame_io::read_frame` reads it (header validated first, then the payload),
//! then put through the same checks as the server's session (`Hello` expected
//! first, identifiers checked against the authenticated identity) and the
//! agent (`Welcome` or `Reject` expected, limits taken from `Welcome`).
#![no_main]

use connector_core::auth::{AgentIdentity, Allowance, served_identifiers};
use connector_core::proto::{Credential, Frame, FrameHeader, HEADER_LEN, MAX_FRAME_PAYLOAD, clip_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let node_a = AgentIdentity {
        name: "node-a".into(),
        allowance: Allowance::Only("host=node-a,ipv4=10.0.0.5,cidr=10.1.0.0/16".parse().unwrap()),
    };
    let any = AgentIdentity {
        name: "gateway".into(),
        allowance: Allowance::Any,
    };
    let mut rest = data;
    let mut server_saw_hello = false;
    let mut agent_welcomed = false;
    while let Some(header) = rest.first_chunk::<HEADER_LEN>() {
        let Ok(header) = FrameHeader::parse(*header, MAX_FRAME_PAYLOAD) else {
            return; // the session closes with a protocol error
        };
        let Some(payload) = rest[HEADER_LEN..].get(..header.len) else {
            return; // truncated: the stream ends mid-frame
        };
        rest = &rest[HEADER_LEN + header.len..];
        let Ok(frame) = header.decode_payload(payload) else {
            return;
        };
        match frame {
            Frame::Hello(hello) if !server_saw_hello => {
                server_saw_hello = true;
                for identity in [&node_a, &any] {
                    if let Ok(served) = served_identifiers(identity, &hello.identifiers) {
                        // What is served is covered by what the identity allows.
                        if let Allowance::Only(allowed) = &identity.allowance {
                            assert!(allowed.uncovered(&served).is_empty(), "{served} outside {allowed}");
                        }
                    }
                }
                // A Hello's Debug output never exposes the credential (unless
                // the same text is also in another field, which Debug shows).
                let shown = format!("{hello:?}");
                if let Credential::Bearer(secret) = &hello.credential {
                    let token = String::from_utf8_lossy(secret.expose());
                    let mut without = hello.clone();
                    without.credential = Credential::None;
                    if token.len() >= 8 && !format!("{without:?}").contains(token.as_ref()) {
                        assert!(!shown.contains(token.as_ref()), "token in Debug output");
                    }
                }
            }
            Frame::Welcome(welcome) if !agent_welcomed => {
                agent_welcomed = true;
                let _ = (welcome.max_streams, welcome.max_frame.min(MAX_FRAME_PAYLOAD as u32));
            }
            Frame::Reject(reject) => {
                let _ = clip_text(&reject.reason);
                return; // both sides stop after a Reject
            }
            // Anything else (a second Hello, a Dial on the control stream...) is a protocol error.
            _ => return,
        }
    }
});
