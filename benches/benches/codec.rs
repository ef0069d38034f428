//! Cost of the wire codec: encoding and decoding one frame of each kind that
//! matters on the hot path (`Dial`, `DialResult` per tunnelled connection;
//! `Hello` per agent connection).

use connector_core::proto::{self, Credential, Dial, DialCode, DialResult, Frame, Hello, Secret};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn frames() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "dial",
            Frame::Dial(Dial {
                request_id: 0x1234_5678_9abc,
                host: "10.0.0.5".into(),
                port: 10250,
                timeout_ms: 30_000,
            }),
        ),
        (
            "dial_result",
            Frame::DialResult(DialResult {
                request_id: 0x1234_5678_9abc,
                code: DialCode::Ok,
                message: String::new(),
            }),
        ),
        (
            "hello",
            Frame::Hello(Hello::new(
                "node-a.example.internal",
                "host=node-a,ipv4=10.0.0.5,cidr=10.0.0.0/24,default-route=true"
                    .parse()
                    .expect("identifiers"),
                Credential::Bearer(Secret::new(vec![b'x'; 64])),
            )),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for (name, frame) in frames() {
        let bytes = frame.encode().expect("encodes");
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("encode", name), &frame, |b, frame| {
            b.iter(|| black_box(frame).encode().expect("encodes"))
        });
        group.bench_with_input(BenchmarkId::new("decode", name), &bytes, |b, bytes| {
            b.iter(|| proto::decode(black_box(bytes)).expect("decodes").expect("whole frame"))
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
