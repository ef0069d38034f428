//! The gRPC frontend, wire-compatible with Konnectivity's `ProxyService`
//! (`proto/konnectivity/client.proto`, taken from the published
//! `sigs.k8s.io/apiserver-network-proxy/konnectivity-client` module), so
//! kube-apiserver in `proxyProtocol: GRPC` mode and any konnectivity-client
//! user work unchanged.
//!
//! On one `Proxy` stream the client sends `DIAL_REQ{protocol, address,
//! random}`; the server dials through an agent and answers
//! `DIAL_RSP{connectID, random}` (or `DIAL_RSP{error, random}`). Then `DATA`
//! packets flow both ways; `CLOSE_REQ` from the client closes the connection
//! and is answered with `CLOSE_RSP`; when the target closes first the server
//! sends `CLOSE_RSP` unprompted (konnectivity-client then reads EOF). A
//! `DIAL_CLS{random}` from the client abandons a pending dial. Each stream
//! may carry several connections; konnectivity-client's single-use tunnels
//! use one stream per connection, so every connection gets its own HTTP/2
//! flow control.
//!
//! A packet the server cannot take ends its stream with an error status,
//! after the packets already queued for the client, and a WARN line:
//! `RESOURCE_EXHAUSTED` for a message above the 4 MiB limit,
//! `INVALID_ARGUMENT` for one that does not decode (bad protobuf, a
//! compressed flag, a stream that ends inside a message) and for a packet a
//! client never sends (no payload, `DIAL_RSP`, `CLOSE_RSP`, `DRAIN`). The
//! tunnelled connections of that stream are closed.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::h2_authority::AuthorityRepair;
use super::listener::{FrontendConn, FrontendLimits, FrontendListener};
use crate::proto::escaped;
use crate::server::{Selector, Server, TunnelStream};

/// Code generated from `proto/konnectivity/client.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("_");
}

use pb::packet::Payload;
use pb::proxy_service_server::{ProxyService, ProxyServiceServer};
use pb::{CloseResponse, Data, DialResponse, Packet, PacketType};

/// Largest `DATA` payload sent to clients.
const DATA_CHUNK: usize = 32 * 1024;
/// Packets buffered towards one client stream before the senders wait.
const OUTBOUND_QUEUE: usize = 64;
/// Packets buffered towards one tunnelled connection before the stream reader waits.
const INBOUND_QUEUE: usize = 16;
/// `Proxy` streams one client connection may have open at once
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`). konnectivity-client's single-use
/// tunnels open one per connection; the bound keeps one client connection's
/// buffers (each stream may queue [`INBOUND_QUEUE`] messages of up to 4 MiB
/// per tunnelled connection) from growing with however many it opens.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// How often an idle client connection is probed with an HTTP/2 PING.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long the answer to a PING may take before the connection is closed:
/// a client that vanished without a FIN does not hold its slot forever.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

impl tonic::transport::server::Connected for AuthorityRepair<FrontendConn> {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// Serves Konnectivity's gRPC `ProxyService` on `listener` until the server
/// shuts down. A client must send its HTTP/2 connection preface and its
/// first request's header block within `limits.head_timeout` (after the TLS
/// handshake, which has its own `head_timeout`), or it is disconnected; an
/// established client that stops answering HTTP/2 PINGs is disconnected
/// too, and each client connection has at most
/// [`MAX_STREAMS_PER_CONNECTION`] streams open.
pub async fn serve(
    server: Server,
    listener: FrontendListener,
    limits: FrontendLimits,
) -> Result<(), tonic::transport::Error> {
    let request_timeout = limits.head_timeout;
    tracing::info!(listen = %listener.local_addr(), "gRPC (Konnectivity ProxyService) frontend listening");
    let incoming = futures_util::stream::unfold(listener, move |mut listener| async move {
        listener.accept().await.map(|conn| {
            let conn = AuthorityRepair::new(conn).with_request_timeout(request_timeout);
            (Ok::<_, std::io::Error>(conn), listener)
        })
    });
    let stopped = {
        let server = server.clone();
        async move { server.stopped().await }
    };
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(ProxyServiceServer::new(Frontend { server }))
        .serve_with_incoming_shutdown(incoming, stopped)
        .await
}

struct Frontend {
    server: Server,
}

type PacketStream = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send>>;

#[tonic::async_trait]
impl ProxyService for Frontend {
    type ProxyStream = PacketStream;

    async fn proxy(&self, request: Request<Streaming<Packet>>) -> Result<Response<Self::ProxyStream>, Status> {
        let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (failed, failure) = oneshot::channel();
        let session = Session {
            server: self.server.clone(),
            out,
            conns: HashMap::new(),
            pending: HashMap::new(),
            next_id: 1,
        };
        tokio::spawn(
            session
                .run(request.into_inner(), failed)
                .instrument(tracing::info_span!("grpc")),
        );
        // The packets, then (once every sender is gone) the session's error
        // status if it ended on a bad packet: tonic ends the stream with it.
        let packets = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (Ok(p), rx)) });
        let status = futures_util::stream::once(failure).filter_map(|f| std::future::ready(f.ok().map(Err)));
        Ok(Response::new(Box::pin(packets.chain(status))))
    }
}

/// An event from a helper task back to its session.
enum Event {
    Dialled {
        random: i64,
        address: String,
        result: Result<TunnelStream, String>,
    },
    Ended {
        connect_id: i64,
        error: String,
    },
}

/// One tunnelled connection of a session. Dropping it aborts the
/// connection, unless [`Conn::close`] was called first.
struct Conn {
    /// Data from the client; `None` once closing.
    to_target: Option<mpsc::Sender<Vec<u8>>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Conn {
    /// Closes in order: data the client already sent still reaches the
    /// target, followed by a FIN; nothing more is read from the target.
    fn close(mut self) {
        self.to_target = None;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
        if self.to_target.is_some() {
            self.writer.abort();
        }
    }
}

/// One client `Proxy` stream and the connections it carries.
struct Session {
    server: Server,
    out: mpsc::Sender<Packet>,
    conns: HashMap<i64, Conn>,
    pending: HashMap<i64, JoinHandle<()>>,
    next_id: i64,
}

fn packet(kind: PacketType, payload: Payload) -> Packet {
    Packet {
        r#type: kind as i32,
        payload: Some(payload),
    }
}

fn close_rsp(connect_id: i64, error: String) -> Packet {
    packet(
        PacketType::CloseRsp,
        Payload::CloseResponse(CloseResponse { error, connect_id }),
    )
}

/// The status that ends a stream whose client sent what tonic could not
/// decode into a packet; `None` when the stream itself failed (the client
/// reset it or its connection broke): nothing can be sent then.
fn undecodable(status: &Status) -> Option<Status> {
    // Decoding errors carry no source; HTTP/2 and I/O errors do.
    if std::error::Error::source(status).is_some() {
        return None;
    }
    let message = format!("undecodable packet: {}", escaped(status.message()));
    Some(match status.code() {
        // Above the message size limit (gRPC answers that with RESOURCE_EXHAUSTED).
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => Status::resource_exhausted(message),
        _ => Status::invalid_argument(message),
    })
}

impl Session {
    /// Serves the client's packets until its stream ends; a bad packet ends
    /// it with an error status sent through `failed`.
    async fn run(mut self, mut inbound: Streaming<Packet>, failed: oneshot::Sender<Status>) {
        let (events_tx, mut events) = mpsc::channel(OUTBOUND_QUEUE);
        let failure = loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(packet)) => {
                        if let Err(status) = self.on_packet(packet, &events_tx).await {
                            break Some(status);
                        }
                    }
                    Ok(None) => break None,
                    Err(status) => match undecodable(&status) {
                        Some(status) => break Some(status),
                        // konnectivity-client ends a single-use tunnel by closing its
                        // whole gRPC connection once CLOSE_RSP arrived, without ending
                        // the stream: an HTTP/2 error here, but nothing was cut short.
                        None if self.conns.is_empty() && self.pending.is_empty() => break None,
                        None => {
                            tracing::debug!(
                                status = %escaped(&status.to_string()),
                                connections = self.conns.len(),
                                pending_dials = self.pending.len(),
                                "client stream failed with tunnels open"
                            );
                            break None;
                        }
                    },
                },
                Some(event) = events.recv() => self.on_event(event, &events_tx).await,
            }
        };
        for (_, task) in self.pending.drain() {
            task.abort();
        }
        if let Some(status) = failure {
            tracing::warn!(
                code = ?status.code(),
                reason = %escaped(status.message()),
                connections = self.conns.len(),
                "ending a client stream on a bad packet"
            );
            let _ = failed.send(status);
        }
        tracing::debug!(connections = self.conns.len(), "client stream ended");
    }

    async fn send(&self, packet: Packet) {
        let _ = self.out.send(packet).await;
    }

    /// Handles one packet from the client; `Err` ends the stream with that status.
    async fn on_packet(&mut self, packet: Packet, events: &mpsc::Sender<Event>) -> Result<(), Status> {
        match packet.payload {
            Some(Payload::DialRequest(dial)) => {
                if dial.protocol != "tcp" {
                    let error = format!("protocol {:?} is not supported; only tcp", dial.protocol);
                    let rsp = DialResponse {
                        error,
                        connect_id: 0,
                        random: dial.random,
                    };
                    self.send(packet_of_dial_rsp(rsp)).await;
                    return Ok(());
                }
                let (server, events, random) = (self.server.clone(), events.clone(), dial.random);
                let task = tokio::spawn(async move {
                    let selector = Selector::for_target(&dial.address);
                    let result = server.dial(&selector, &dial.address).await.map_err(|e| e.to_string());
                    let _ = events
                        .send(Event::Dialled {
                            random,
                            address: dial.address,
                            result,
                        })
                        .await;
                });
                if let Some(old) = self.pending.insert(random, task) {
                    old.abort();
                }
            }
            Some(Payload::Data(data)) => match self.conns.get(&data.connect_id).and_then(|c| c.to_target.as_ref()) {
                Some(to_target) => {
                    // Waits when the target is slower than the client: backpressure
                    // reaches the client through this stream's HTTP/2 flow control.
                    if to_target.send(data.data).await.is_err() {
                        self.conns.remove(&data.connect_id);
                    }
                }
                None => self.send(close_rsp(data.connect_id, "unknown connectID".into())).await,
            },
            Some(Payload::CloseRequest(close)) => {
                let error = match self.conns.remove(&close.connect_id) {
                    Some(conn) => {
                        conn.close();
                        String::new()
                    }
                    None => "unknown connectID".into(),
                };
                self.send(close_rsp(close.connect_id, error)).await;
            }
            Some(Payload::CloseDial(cancel)) => {
                if let Some(task) = self.pending.remove(&cancel.random) {
                    task.abort();
                    // Until it is gone: its pending-dial slot is free, and its
                    // stream to the agent reset, before the next packet is handled.
                    let _ = task.await;
                    tracing::debug!(random = cancel.random, "pending dial abandoned by the client");
                }
            }
            Some(Payload::DialResponse(_) | Payload::CloseResponse(_) | Payload::Drain(_)) | None => {
                let payload = match &packet.payload {
                    Some(Payload::DialResponse(_)) => "DIAL_RSP",
                    Some(Payload::CloseResponse(_)) => "CLOSE_RSP",
                    Some(Payload::Drain(_)) => "DRAIN",
                    _ => "no payload",
                };
                return Err(Status::invalid_argument(format!(
                    "unexpected packet from a client: type {}, {payload}",
                    packet.r#type
                )));
            }
        }
        Ok(())
    }

    async fn on_event(&mut self, event: Event, events: &mpsc::Sender<Event>) {
        match event {
            Event::Dialled {
                random,
                address,
                result,
            } => {
                if self.pending.remove(&random).is_none() {
                    return; // abandoned meanwhile
                }
                match result {
                    Ok(stream) => {
                        let connect_id = self.next_id;
                        self.next_id += 1;
                        tracing::debug!(connect_id, address = %escaped(&address), agent = stream.agent_id(), "connected");
                        let conn = self.start(connect_id, stream, events.clone());
                        self.conns.insert(connect_id, conn);
                        self.send(packet_of_dial_rsp(DialResponse {
                            error: String::new(),
                            connect_id,
                            random,
                        }))
                        .await;
                    }
                    Err(error) => {
                        tracing::info!(address = %escaped(&address), error = %escaped(&error), "dial failed");
                        self.send(packet_of_dial_rsp(DialResponse {
                            error,
                            connect_id: 0,
                            random,
                        }))
                        .await;
                    }
                }
            }
            Event::Ended { connect_id, error } => {
                if let Some(conn) = self.conns.remove(&connect_id) {
                    conn.close();
                    self.send(close_rsp(connect_id, error)).await;
                }
            }
        }
    }

    /// Starts the two copy tasks of a new connection.
    fn start(&self, connect_id: i64, stream: TunnelStream, events: mpsc::Sender<Event>) -> Conn {
        let (read, write) = tokio::io::split(stream);
        let (to_target, from_client) = mpsc::channel(INBOUND_QUEUE);
        let reader = tokio::spawn(pump_to_client(connect_id, read, self.out.clone(), events));
        let writer = tokio::spawn(pump_to_target(write, from_client));
        Conn {
            to_target: Some(to_target),
            reader,
            writer,
        }
    }
}

fn packet_of_dial_rsp(rsp: DialResponse) -> Packet {
    packet(PacketType::DialRsp, Payload::DialResponse(rsp))
}

async fn pump_to_client(
    connect_id: i64,
    mut read: ReadHalf<TunnelStream>,
    out: mpsc::Sender<Packet>,
    events: mpsc::Sender<Event>,
) {
    let mut buf = vec![0u8; DATA_CHUNK];
    let error = loop {
        match read.read(&mut buf).await {
            Ok(0) => break String::new(),
            Ok(n) => {
                let data = Data {
                    connect_id,
                    error: String::new(),
                    data: buf[..n].to_vec(),
                };
                if out.send(packet(PacketType::Data, Payload::Data(data))).await.is_err() {
                    return;
                }
            }
            Err(err) => break err.to_string(),
        }
    };
    let _ = events.send(Event::Ended { connect_id, error }).await;
}

/// Copies client data to the target; once the client side is closed, ends
/// the target's direction with a FIN.
async fn pump_to_target(mut write: WriteHalf<TunnelStream>, mut from_client: mpsc::Receiver<Vec<u8>>) {
    while let Some(data) = from_client.recv().await {
        if write.write_all(&data).await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}
