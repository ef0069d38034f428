//! End-to-end benchmarks of one server + one agent, over real QUIC on
//! loopback, over the TCP fallback (TLS + QMux) on loopback and over the in-memory transport (connector's own overhead
//! without QUIC and TLS). Every tunnelled connection ends at a real TCP
//! target on 127.0.0.1 that the agent dials.
//!
//! * `bulk/{upload,download}`: one tunnelled connection, 32 MiB each way;
//! * `dial_first_byte`: `dial` until the first echoed byte is back;
//! * `round_trip_64B`: a 64-byte ping-pong on an open tunnelled connection;
//! * `concurrent/{100,1000}`: aggregate upload throughput of that many
//!   tunnelled connections at once (dials not timed);
//! * `hol/{solo,beside_stalled}`: a 32 MiB download alone, and next to a
//!   tunnelled connection whose reader stopped reading; the ratio of the two
//!   throughputs is the head-of-line isolation figure.

use std::time::{Duration, Instant};

use connector_benches::client;
use connector_benches::harness::{Kind, Tunnel};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::AsyncReadExt;
use tokio::runtime::Runtime;

const BULK: u64 = 32 * 1024 * 1024;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn tunnel(c: &mut Criterion) {
    let rt = runtime();
    for kind in [Kind::Quic, Kind::Tcp, Kind::Memory] {
        let t = rt.block_on(Tunnel::start(kind)).expect("tunnel starts");
        let t = &t;
        let name = kind.name();

        let mut group = c.benchmark_group(format!("{name}/bulk"));
        group.sample_size(10).measurement_time(Duration::from_secs(5));
        group.throughput(Throughput::Bytes(BULK));
        group.bench_function("upload", |b| {
            b.to_async(&rt).iter(|| async {
                let mut s = t.dial().await.expect("dial");
                client::upload(&mut s, BULK).await.expect("upload")
            })
        });
        group.bench_function("download", |b| {
            b.to_async(&rt).iter(|| async {
                let mut s = t.dial().await.expect("dial");
                client::download(&mut s, BULK).await.expect("download")
            })
        });
        group.finish();

        let mut group = c.benchmark_group(format!("{name}/latency"));
        group.bench_function("dial_first_byte", |b| {
            b.to_async(&rt).iter(|| async {
                let mut s = t.dial().await.expect("dial");
                client::first_echo(&mut s).await.expect("echo");
            })
        });
        group.bench_function("round_trip_64B", |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let mut s = t.dial().await.expect("dial");
                client::start_echo(&mut s).await.expect("echo mode");
                let msg = [0x42u8; 64];
                let mut scratch = [0u8; 64];
                client::round_trip(&mut s, &msg, &mut scratch).await.expect("warm-up");
                let start = Instant::now();
                for _ in 0..iters {
                    client::round_trip(&mut s, &msg, &mut scratch)
                        .await
                        .expect("round trip");
                }
                start.elapsed()
            })
        });
        group.finish();

        let mut group = c.benchmark_group(format!("{name}/concurrent"));
        group.sample_size(10).measurement_time(Duration::from_secs(10));
        for (n, each) in [(100usize, 1024 * 1024u64), (1000, 128 * 1024)] {
            group.throughput(Throughput::Bytes(n as u64 * each));
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
                b.to_async(&rt).iter_custom(|iters| async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let mut streams = Vec::with_capacity(n);
                        for _ in 0..n {
                            streams.push(t.dial().await.expect("dial"));
                        }
                        let start = Instant::now();
                        let tasks: Vec<_> = streams
                            .into_iter()
                            .map(|mut s| tokio::spawn(async move { client::upload(&mut s, each).await }))
                            .collect();
                        for task in tasks {
                            task.await.expect("task").expect("upload");
                        }
                        total += start.elapsed();
                    }
                    total
                })
            });
        }
        group.finish();

        let mut group = c.benchmark_group(format!("{name}/hol"));
        group.sample_size(10).measurement_time(Duration::from_secs(5));
        group.throughput(Throughput::Bytes(BULK));
        group.bench_function("solo", |b| {
            b.to_async(&rt).iter(|| async {
                let mut s = t.dial().await.expect("dial");
                client::download(&mut s, BULK).await.expect("download")
            })
        });
        group.bench_function("beside_stalled", |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                // A tunnelled connection whose reader stops after the first byte:
                // the target keeps sending until every window and buffer is full.
                let mut stalled = t.dial().await.expect("dial");
                client::start_download(&mut stalled, u64::MAX).await.expect("request");
                let mut first = [0u8; 1];
                stalled.read_exact(&mut first).await.expect("first byte");
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut s = t.dial().await.expect("dial");
                    let start = Instant::now();
                    client::download(&mut s, BULK).await.expect("download");
                    total += start.elapsed();
                }
                drop(stalled);
                total
            })
        });
        group.finish();
    }
}

criterion_group!(benches, tunnel);
criterion_main!(benches);
