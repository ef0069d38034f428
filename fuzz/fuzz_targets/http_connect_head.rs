//! The HTTP CONNECT frontend's request-head parser, and the target parsing
//! that follows it (`Selector::for_target`), on arbitrary bytes.
#![no_main]

use connector_core::fuzzing::{HeadError, parse_head};
use connector_core::server::Selector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_head(data) {
        Ok(Some(head)) => {
            assert!(head.leftover.len() <= data.len());
            assert!(data.ends_with(&head.leftover));
            let _ = Selector::for_target(&head.target).to_string();
        }
        Ok(None) => {
            // Incomplete: feeding the same bytes in two pieces must agree.
            let (a, _) = data.split_at(data.len() / 2);
            assert!(!matches!(parse_head(a), Ok(Some(_))) || a.len() == data.len());
        }
        Err(HeadError::Malformed(reason)) => assert!(!reason.is_empty()),
        Err(other) => panic!("parser returned {other:?}"),
    }
});
