//! The agent's reading of an HTTP proxy's answer to `CONNECT`
//! (`transport::qmux::proxy`), on arbitrary bytes from the proxy: the head
//! reader stops at the blank line and never reads a byte past it (the TLS
//! handshake with the server follows in the same stream) nor more than
//! `MAX_RESPONSE_HEAD` bytes; the status check never panics, and a refusal
//! displays the proxy's text escaped, on one line, at most 100 characters
//! of it.
#![no_main]

use std::sync::OnceLock;

use connector_core::transport::qmux::proxy::{ConnectAnswerError, MAX_RESPONSE_HEAD, parse_connect_answer, read_head};
use libfuzzer_sys::fuzz_target;
use tokio::runtime::Runtime;

fn check_answer(head: &[u8]) {
    match parse_connect_answer(head) {
        Ok(()) | Err(ConnectAnswerError::Malformed) => {}
        Err(refused @ ConnectAnswerError::Refused { status, .. }) => {
            assert!(!(200..300).contains(&status), "{status} is a success");
            let ConnectAnswerError::Refused { reason, .. } = &refused else {
                unreachable!()
            };
            assert!(reason.chars().count() <= 100, "reason not cut: {reason:?}");
            let shown = refused.to_string();
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"));
    let mut rest = data;
    let blank_line = data.windows(4).position(|w| w == b"\r\n\r\n");
    match runtime.block_on(read_head(&mut rest)) {
        Ok(head) => {
            assert!(head.ends_with(b"\r\n\r\n") && head.len() <= MAX_RESPONSE_HEAD);
            // Exactly the head was consumed, up to its first blank line.
            assert_eq!(&data[..head.len()], &head[..]);
            assert_eq!(rest, &data[head.len()..]);
            assert_eq!(blank_line, Some(head.len() - 4));
            check_answer(&head);
        }
        // No blank line, or only past the limit.
        Err(_) => assert!(blank_line.is_none_or(|at| at + 4 > MAX_RESPONSE_HEAD)),
    }
    // The status check alone, on any bytes.
    check_answer(data);
});
