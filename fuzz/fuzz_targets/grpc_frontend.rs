//! The gRPC frontend's client-side byte handling: the HTTP/2 `:authority`
//! rewriter (HPACK decode/re-encode of header blocks, framing checks) fed in
//! arbitrary chunks, and Konnectivity `Packet` decoding (protobuf).
#![no_main]

use connector_core::frontend::grpc::pb::Packet;
use connector_core::fuzzing::Rewriter;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    if selector & 1 == 0 {
        // Packet decoding; a decoded packet re-encodes and decodes equal.
        if let Ok(packet) = Packet::decode(data) {
            let again = Packet::decode(packet.encode_to_vec().as_slice()).expect("re-encoded packet decodes");
            assert_eq!(again, packet);
        }
        return;
    }
    // The rewriter, after a valid preface (so frames are parsed), fed in
    // chunks whose sizes come from the selector byte, must produce exactly
    // what it produces when fed everything at once: how TCP splits the
    // client's bytes cannot change what reaches the HTTP/2 server.
    let run = |chunk: usize| {
        let mut rewriter = Rewriter::new();
        rewriter.feed(PREFACE).expect("preface accepted");
        let mut out = rewriter.output().split().to_vec();
        for piece in data.chunks(chunk) {
            if rewriter.feed(piece).is_err() {
                return (out, true);
            }
            out.extend_from_slice(&rewriter.output().split());
        }
        (out, false)
    };
    let chunked = run(usize::from(selector >> 1).max(1));
    let whole = run(data.len().max(1));
    match (chunked.1, whole.1) {
        (false, false) => assert_eq!(chunked.0, whole.0, "output depends on how the input was split"),
        (true, true) => {} // refused either way (what was emitted before the error may differ)
        (c, w) => panic!("refusal depends on how the input was split: chunked {c}, whole {w}"),
    }
});
