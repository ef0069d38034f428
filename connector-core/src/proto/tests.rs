use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::identifiers::Identifiers;

fn hello() -> Hello {
    Hello::new(
        "node-a",
        "host=node-a,ipv4=10.0.0.5,ipv6=fd00::5,cidr=10.1.0.0/16,cidr=fd00:1::/64,default-route=true"
            .parse()
            .unwrap(),
        Credential::Bearer(Secret::new("s3cret")),
    )
}

#[test]
fn hello_bytes_are_as_documented() {
    let bytes = Frame::Hello(Hello::new(
        "a",
        "host=n".parse().unwrap(),
        Credential::Bearer(Secret::new("t")),
    ))
    .encode()
    .unwrap();
    #[rustfmt::skip]
    let expected = [
        0x01, 0, 0, 0, 20,        // type Hello, payload length 20
        0, 1, 0, 1,               // version 1.1
        0, 1, b'a',               // agent id "a"
        0, 1,                     // one identifier
        1, 0, 1, b'n',            // host "n"
        0,                        // flags: no default route
        1, 0, 1, b't',            // bearer token "t"
        0, 0,                     // (1.1) no connected servers
    ];
    assert_eq!(bytes, expected);
}

#[test]
fn a_version_1_0_hello_without_appended_fields_still_decodes() {
    #[rustfmt::skip]
    let bytes = [
        0x01, 0, 0, 0, 18,
        0, 1, 0, 0,
        0, 1, b'a',
        0, 1,
        1, 0, 1, b'n',
        0,
        1, 0, 1, b't',
    ];
    let header = FrameHeader::parse(bytes[..HEADER_LEN].try_into().unwrap(), MAX_FRAME_PAYLOAD).unwrap();
    let Frame::Hello(hello) = header.decode_payload(&bytes[HEADER_LEN..]).unwrap() else {
        panic!("not a Hello");
    };
    assert_eq!((hello.version_major, hello.version_minor), (1, 0));
    assert!(hello.connected_servers.is_empty());
}

#[test]
fn go_away_bytes_are_as_documented() {
    let bytes = Frame::GoAway(GoAway {
        code: ConnectionCode::Shutdown,
        grace_ms: 1000,
        reason: "bye".into(),
    })
    .encode()
    .unwrap();
    #[rustfmt::skip]
    let expected = [
        0x04, 0, 0, 0, 13,        // type GoAway, payload length 13
        0, 0, 0, 4,               // code 4 (shutdown)
        0, 0, 0x03, 0xe8,         // grace 1000 ms
        0, 3, b'b', b'y', b'e',   // reason "bye"
    ];
    assert_eq!(bytes, expected);
}

#[test]
fn a_hello_listing_too_many_connected_servers_is_refused() {
    let mut hello = hello();
    hello.connected_servers = (0..=MAX_CONNECTED_SERVERS).map(|i| format!("s{i}")).collect();
    assert!(matches!(
        Frame::Hello(hello).encode(),
        Err(EncodeError::FieldTooLong {
            field: "connected servers",
            ..
        })
    ));
}

#[test]
fn a_hello_with_too_many_identifiers_is_refused_both_ways() {
    let mut hello = hello();
    hello.identifiers = Identifiers {
        hosts: (0..=MAX_IDENTIFIERS).map(|i| format!("h{i}")).collect(),
        ..Default::default()
    };
    assert!(matches!(
        Frame::Hello(hello).encode(),
        Err(EncodeError::FieldTooLong {
            field: "identifiers",
            ..
        })
    ));
    // 1,025 one-byte host names fit easily in one frame; the decoder refuses the count.
    let hello_with = |count: u16| {
        let mut payload = vec![0, 1, 0, 1, 0, 1, b'a'];
        payload.extend_from_slice(&count.to_be_bytes());
        for _ in 0..count {
            payload.extend_from_slice(&[1, 0, 1, b'n']);
        }
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // flags, no credential, no servers
        let mut bytes = vec![0x01];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&payload);
        bytes
    };
    let at_the_cap = decode(&hello_with(MAX_IDENTIFIERS as u16)).unwrap().unwrap().0;
    let Frame::Hello(hello) = at_the_cap else { panic!() };
    assert_eq!(hello.identifiers.hosts.len(), MAX_IDENTIFIERS);
    assert_eq!(
        decode(&hello_with(MAX_IDENTIFIERS as u16 + 1)),
        Err(DecodeError::InvalidValue {
            field: "identifier count",
            reason: "more than 1,024 identifiers"
        })
    );
}

#[test]
fn dial_bytes_are_as_documented() {
    let bytes = Frame::Dial(Dial {
        request_id: 1,
        host: "h".into(),
        port: 80,
        timeout_ms: 1000,
    })
    .encode()
    .unwrap();
    #[rustfmt::skip]
    let expected = [
        0x10, 0, 0, 0, 17,
        0, 0, 0, 0, 0, 0, 0, 1,   // request id
        0, 1, b'h',               // host
        0, 80,                    // port
        0, 0, 0x03, 0xe8,         // timeout 1000 ms
    ];
    assert_eq!(bytes, expected);
}

#[test]
fn round_trips_every_message() {
    let frames = [
        Frame::Hello(hello()),
        Frame::Welcome(Welcome {
            server_id: "srv-1".into(),
            server_count: 3,
            keepalive_ms: 5000,
            idle_timeout_ms: 30000,
            max_streams: 1000,
            max_frame: MAX_FRAME_PAYLOAD as u32,
        }),
        Frame::Reject(Reject {
            code: RejectCode::Unauthenticated,
            reason: "bad token".into(),
        }),
        Frame::Dial(Dial {
            request_id: u64::MAX,
            host: "kubelet.local".into(),
            port: 10250,
            timeout_ms: 1,
        }),
        Frame::DialResult(DialResult {
            request_id: 9,
            code: DialCode::Refused,
            message: "nope".into(),
        }),
    ];
    for frame in frames {
        let bytes = frame.encode().unwrap();
        assert_eq!(decode(&bytes).unwrap(), Some((frame.clone(), bytes.len())));
        // Every strict prefix asks for more bytes or fails; it never yields a frame.
        for cut in 0..bytes.len() {
            assert!(!matches!(decode(&bytes[..cut]), Ok(Some(_))));
        }
    }
}

#[test]
fn oversized_header_is_refused_before_allocation() {
    let mut bytes = vec![0x10];
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::FrameTooLarge {
            len: u32::MAX as u64,
            max: MAX_FRAME_PAYLOAD
        })
    );
    let header = FrameHeader::parse([0x10, 0, 0, 1, 0], 100);
    assert!(matches!(header, Err(DecodeError::FrameTooLarge { len: 256, max: 100 })));
}

#[test]
fn unknown_major_version_is_named() {
    let mut bytes = Frame::Hello(hello()).encode().unwrap();
    bytes[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&2u16.to_be_bytes());
    assert_eq!(
        decode(&bytes),
        Err(DecodeError::UnsupportedVersion {
            major: 2,
            minor: PROTOCOL_MINOR
        })
    );
}

#[test]
fn trailing_payload_bytes_from_newer_minors_are_skipped() {
    let frame = Frame::DialResult(DialResult {
        request_id: 1,
        code: DialCode::Ok,
        message: String::new(),
    });
    let mut bytes = frame.encode().unwrap();
    bytes.extend_from_slice(b"future");
    let len = (bytes.len() - HEADER_LEN) as u32;
    bytes[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    assert_eq!(decode(&bytes).unwrap().unwrap().0, frame);
}

#[test]
fn unknown_codes_survive_a_round_trip() {
    let frame = Frame::DialResult(DialResult {
        request_id: 1,
        code: DialCode::Other(200),
        message: "x".into(),
    });
    assert_eq!(decode(&frame.encode().unwrap()).unwrap().unwrap().0, frame);
}

#[test]
fn secrets_are_redacted_in_debug() {
    let text = format!("{:?}", hello());
    assert!(!text.contains("s3cret"), "{text}");
}

/// Issue 16, item 10: token bytes are zeroed when a `Secret` (each clone
/// its own copy) is dropped.
#[test]
fn secrets_are_zeroized_on_drop() {
    fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroized_on_drop::<Secret>();
}

/// Issue 16, item 7: ids on the wire must be printable (they reach logs and
/// metric labels as they are).
#[test]
fn ids_with_non_printable_characters_are_refused() {
    for id in ["node\u{202e}a", "node\u{200b}", "a\u{1b}[2K", "line\u{2028}"] {
        let bytes = Frame::Hello(Hello::new(id, Identifiers::default(), Credential::None))
            .encode()
            .unwrap();
        assert!(
            matches!(decode(&bytes), Err(DecodeError::InvalidValue { field: "agent id", .. })),
            "{id:?}"
        );
    }
    let bytes = Frame::Hello(Hello::new(
        "node-a/pod-0 \"quoted\"",
        Identifiers::default(),
        Credential::None,
    ))
    .encode()
    .unwrap();
    assert!(decode(&bytes).is_ok());
}

#[test]
fn oversized_fields_fail_to_encode() {
    let dial = Frame::Dial(Dial {
        request_id: 1,
        host: "a".repeat(300),
        port: 1,
        timeout_ms: 1,
    });
    assert!(matches!(
        dial.encode(),
        Err(EncodeError::FieldTooLong { field: "host", .. })
    ));
}

fn arb_identifiers() -> impl Strategy<Value = Identifiers> {
    (
        prop::collection::vec(
            "[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?){0,3}",
            0..5,
        ),
        prop::collection::vec(any::<IpAddr>(), 0..5),
        prop::collection::vec((any::<IpAddr>(), 0u8..=128), 0..5),
        any::<bool>(),
    )
        .prop_map(|(hosts, addresses, nets, default_route)| Identifiers {
            hosts,
            addresses,
            cidrs: nets
                .into_iter()
                .map(|(ip, p)| {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    ipnet::IpNet::new(ip, p % (max + 1)).unwrap().trunc()
                })
                .collect(),
            default_route,
        })
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let id = "[A-Za-z0-9_.-]{1,128}";
    let text = ".{0,200}";
    prop_oneof![
        (
            id,
            arb_identifiers(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..4096)),
            prop::collection::vec(id, 0..4)
        )
            .prop_map(|(agent_id, identifiers, token, connected_servers)| {
                let mut hello = Hello::new(
                    agent_id,
                    identifiers,
                    token.map(|t| Credential::Bearer(Secret::new(t))).unwrap_or_default(),
                );
                hello.connected_servers = connected_servers;
                Frame::Hello(hello)
            }),
        (any::<u32>(), any::<u32>(), text).prop_map(|(c, g, r)| Frame::GoAway(GoAway {
            code: ConnectionCode::from_wire(c),
            grace_ms: g,
            reason: clip_text(&r)
        })),
        (id, any::<u16>(), any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(s, c, k, i, m, f)| {
            Frame::Welcome(Welcome {
                server_id: s,
                server_count: c,
                keepalive_ms: k,
                idle_timeout_ms: i,
                max_streams: m,
                max_frame: f,
            })
        }),
        (any::<u16>(), text).prop_map(|(c, r)| Frame::Reject(Reject {
            code: RejectCode::from_wire(c),
            reason: clip_text(&r)
        })),
        (
            any::<u64>(),
            "[a-z0-9][a-z0-9-]{0,20}(\\.[a-z0-9-]{1,20}){0,3}",
            any::<u16>(),
            any::<u32>()
        )
            .prop_map(|(id, host, port, t)| {
                Frame::Dial(Dial {
                    request_id: id,
                    host,
                    port,
                    timeout_ms: t,
                })
            }),
        (any::<u64>(), any::<u8>(), text).prop_map(|(id, c, m)| Frame::DialResult(DialResult {
            request_id: id,
            code: DialCode::from_wire(c),
            message: clip_text(&m)
        })),
    ]
}

proptest! {
    #[test]
    fn encode_decode_round_trip(frame in arb_frame()) {
        let bytes = frame.encode().unwrap();
        prop_assert_eq!(decode(&bytes).unwrap(), Some((frame, bytes.len())));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(Some((_, used))) = decode(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn arbitrary_payload_after_valid_header_never_panics(kind in prop::sample::select(vec![1u8, 2, 3, 4, 0x10, 0x11]),
                                                          payload in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&payload);
        let _ = decode(&bytes);
    }
}

/// Found by the frame_decoder fuzz target: a peer's over-long text decoded as
/// is, so the frame could not be re-encoded. Receivers cut it to the cap.
#[test]
fn over_long_texts_are_cut_to_the_cap_on_decode() {
    let long = "é".repeat(2_200); // 4,400 bytes, cut on a character boundary
    let mut payload = 7u64.to_be_bytes().to_vec();
    payload.push(DialCode::Refused.to_wire());
    payload.extend_from_slice(&(long.len() as u16).to_be_bytes());
    payload.extend_from_slice(long.as_bytes());
    let mut bytes = vec![0x11];
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&payload);
    let (frame, used) = decode(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    let Frame::DialResult(result) = &frame else {
        panic!("{frame:?}")
    };
    assert_eq!(result.message, clip_text(&long));
    assert!(result.message.len() <= MAX_TEXT_LEN);
    let again = frame.encode().unwrap();
    assert_eq!(decode(&again).unwrap().unwrap().0, frame);
}
