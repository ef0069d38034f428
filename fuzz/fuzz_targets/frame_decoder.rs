//! The sans-IO frame decoder on arbitrary bytes: never panics, never reads
//! past the input, and every frame it accepts re-encodes to bytes that decode
//! to the same frame.
#![no_main]

use connector_core::proto::{HEADER_LEN, MAX_FRAME_PAYLOAD, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = decode(rest) {
        assert!(used >= HEADER_LEN && used <= rest.len() && used - HEADER_LEN <= MAX_FRAME_PAYLOAD);
        // Decoded frames always re-encode (every field is within its limits)...
        let bytes = frame.encode().expect("a decoded frame re-encodes");
        // ...and the encoding is canonical up to skipped trailing fields.
        let (again, n) = decode(&bytes).expect("re-encoded frame decodes").expect("complete");
        assert_eq!(n, bytes.len());
        assert_eq!(again, frame);
        rest = &rest[used..];
    }
});
