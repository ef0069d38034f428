//! AES-128-GCM sealing (what QUIC does to every packet it sends) with the two
//! crypto providers rustls offers, at QUIC packet sizes: 1,200 (the minimum),
//! 1,452 (quinn's default bound), 6,550 (ours, on paths that carry it).
//! The reason `connector_core::tls::crypto_provider` is aws-lc-rs.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const SIZES: [usize; 3] = [1_200, 1_452, 6_550];
const KEY: [u8; 16] = [0x42; 16];
/// A short-header QUIC packet's associated data is its header, about 20 bytes.
const HEADER: [u8; 20] = [0x40; 20];

fn nonce(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

fn aead(c: &mut Criterion) {
    let mut group = c.benchmark_group("aes_128_gcm_seal");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut packet = vec![0x17u8; size];
        let key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &KEY).unwrap());
        let mut counter = 0u64;
        group.bench_with_input(BenchmarkId::new("ring", size), &size, |b, _| {
            b.iter(|| {
                counter += 1;
                let nonce = ring::aead::Nonce::assume_unique_for_key(nonce(counter));
                black_box(
                    key.seal_in_place_separate_tag(nonce, ring::aead::Aad::from(&HEADER), &mut packet)
                        .unwrap(),
                )
            })
        });
        let key = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, &KEY).unwrap(),
        );
        group.bench_with_input(BenchmarkId::new("aws-lc-rs", size), &size, |b, _| {
            b.iter(|| {
                counter += 1;
                let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce(counter));
                black_box(
                    key.seal_in_place_separate_tag(nonce, aws_lc_rs::aead::Aad::from(&HEADER), &mut packet)
                        .unwrap(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, aead);
criterion_main!(benches);
