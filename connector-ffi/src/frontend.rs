//! Starting the server's frontends from C: HTTP CONNECT and Konnectivity
//! gRPC listeners (Unix socket, loopback TCP, or TCP with mutual TLS), and
//! plain TCP port forwards.

use std::ffi::c_char;
use std::net::SocketAddr;

use connector_core::Selector;
use connector_core::frontend::{self, FrontendBind, FrontendLimits, FrontendProtocol};
use connector_core::tls::{CaBundle, FrontendTls};

use crate::connector_result;
use crate::error::{Error, arg_enum, arg_opt_str, arg_str, fill_string_out, guard};
use crate::server::{SERVERS, connector_server};

/// Bounds of one frontend; a zero field keeps the default.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct connector_frontend_limits {
    /// Client connections served at once; more are closed on arrival (default 10,000).
    pub max_connections: u64,
    /// Time a client has for the TLS handshake and its request head, ms (default 10 s).
    pub head_timeout_ms: u64,
    /// Largest request head accepted, in bytes (default 8 KiB; HTTP CONNECT answers 431 beyond).
    pub max_head: u64,
}

impl connector_frontend_limits {
    fn apply(&self) -> FrontendLimits {
        let mut limits = FrontendLimits::default();
        if self.max_connections > 0 {
            limits.max_connections = usize::try_from(self.max_connections).unwrap_or(usize::MAX);
        }
        if self.head_timeout_ms > 0 {
            limits.head_timeout = std::time::Duration::from_millis(self.head_timeout_ms);
        }
        if self.max_head > 0 {
            limits.max_head = usize::try_from(self.max_head).unwrap_or(usize::MAX);
        }
        limits
    }
}

/// The protocol a frontend speaks.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum connector_frontend_protocol {
    /// HTTP CONNECT (`CONNECT host:port`, as kube-apiserver's egress selector sends it).
    CONNECTOR_FRONTEND_HTTP_CONNECT = 0,
    /// Konnectivity's gRPC `ProxyService`.
    CONNECTOR_FRONTEND_GRPC = 1,
}

impl TryFrom<u32> for connector_frontend_protocol {
    type Error = ();

    fn try_from(value: u32) -> Result<Self, ()> {
        match value {
            0 => Ok(Self::CONNECTOR_FRONTEND_HTTP_CONNECT),
            1 => Ok(Self::CONNECTOR_FRONTEND_GRPC),
            _ => Err(()),
        }
    }
}

/// The names of a comma-separated list, trimmed, without empty ones.
fn names(list: Option<&str>) -> Vec<String> {
    list.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_bind(
    bind: &str,
    tls: Option<(&str, &str, &str)>,
    allowed_clients: Vec<String>,
    agent_client_cas: &CaBundle,
) -> Result<FrontendBind, Error> {
    if !bind.starts_with("tls://") && !allowed_clients.is_empty() {
        return Err(Error::invalid("allowed_clients is only used with tls:// binds"));
    }
    if let Some(path) = bind.strip_prefix("unix://") {
        if tls.is_some() {
            return Err(Error::invalid("TLS files are only used with tls:// binds"));
        }
        return Ok(FrontendBind::unix(path));
    }
    let addr = |text: &str| -> Result<SocketAddr, Error> {
        text.parse()
            .map_err(|_| Error::invalid(format!("bind address {text:?} is not IP:PORT")))
    };
    if let Some(rest) = bind.strip_prefix("tcp://") {
        return Ok(FrontendBind::PlainLoopback { addr: addr(rest)? });
    }
    if let Some(rest) = bind.strip_prefix("tls://") {
        let (chain, key, client_ca) =
            tls.ok_or_else(|| Error::invalid("a tls:// bind needs certificate, key and client CA files"))?;
        let mut tls = FrontendTls::from_files(chain, key, client_ca).map_err(|e| Error::invalid(e.to_string()))?;
        tls.allowed_clients = allowed_clients;
        tls.check_trust_domains(agent_client_cas).map_err(Error::setup)?;
        return Ok(FrontendBind::Tls { addr: addr(rest)?, tls });
    }
    Err(Error::invalid(format!(
        "bind {bind:?} must start with unix://, tcp:// (loopback only) or tls://"
    )))
}

/// Starts a frontend speaking `protocol` (a `connector_frontend_protocol`;
/// any other value is `CONNECTOR_ERR_INVALID_ARGUMENT`) on `bind`:
/// `unix:///path/to.sock` (owner-only),
/// `tcp://127.0.0.1:PORT` (plain, loopback only) or `tls://IP:PORT` (mutual
/// TLS: `cert_path`, `key_path` and `client_ca_path` are then required; pass
/// null otherwise). Client certificates need EKU clientAuth.
/// `allowed_clients` (tls:// only; null for none) is a comma-separated list
/// of the clients admitted: a client certificate whose common name equals a
/// name, or one of whose DNS names equals one ignoring case. Without it any
/// certificate `client_ca_path` issued is admitted, and a `client_ca_path`
/// holding one of the server's agent client CAs is refused
/// (`CONNECTOR_ERR_SETUP`): every agent could use the frontend.
/// `limits` may be null (defaults). `*out` receives where it listens (free
/// with `connector_string_free`). It serves until the server is freed.
///
/// # Safety
/// Strings null or NUL-terminated; `limits` null or readable; `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_start_frontend(
    server: *const connector_server,
    protocol: u32,
    bind: *const c_char,
    cert_path: *const c_char,
    key_path: *const c_char,
    client_ca_path: *const c_char,
    allowed_clients: *const c_char,
    limits: *const connector_frontend_limits,
    out: *mut *mut c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let protocol = match arg_enum(protocol, "protocol")? {
            connector_frontend_protocol::CONNECTOR_FRONTEND_HTTP_CONNECT => FrontendProtocol::HttpConnect,
            connector_frontend_protocol::CONNECTOR_FRONTEND_GRPC => FrontendProtocol::Grpc,
        };
        fill_string_out(out, || {
            let server = SERVERS.get(server)?;
            let bind = arg_str(bind, "bind")?;
            let tls = match (
                arg_opt_str(cert_path, "cert_path")?,
                arg_opt_str(key_path, "key_path")?,
                arg_opt_str(client_ca_path, "client_ca_path")?,
            ) {
                (Some(c), Some(k), Some(ca)) => Some((c, k, ca)),
                (None, None, None) => None,
                _ => {
                    return Err(Error::invalid(
                        "give all of cert_path, key_path and client_ca_path, or none",
                    ));
                }
            };
            let allowed_clients = names(arg_opt_str(allowed_clients, "allowed_clients")?);
            let bind = parse_bind(bind, tls, allowed_clients, &server.agent_client_cas)?;
            let limits = if limits.is_null() {
                FrontendLimits::default()
            } else {
                // SAFETY: non-null and readable per the contract.
                unsafe { *limits }.apply()
            };
            let _entered = server.rt.handle().enter();
            frontend::start(&server.server, protocol, &bind, &limits).map_err(Error::setup)
        })
    })
}

/// Binds `listen` (`IP:PORT`, a loopback address: the listener
/// authenticates nobody, so any other address is refused) and tunnels each
/// accepted TCP connection to `target` through the agent with id `agent_id`
/// (null: the agent serving the target's host). `*out` receives the bound
/// address.
///
/// # Safety
/// Strings null or NUL-terminated; `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_start_forward(
    server: *const connector_server,
    listen: *const c_char,
    agent_id: *const c_char,
    target: *const c_char,
    out: *mut *mut c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        fill_string_out(out, || {
            let server = SERVERS.get(server)?;
            let listen_text = arg_str(listen, "listen")?;
            let listen: SocketAddr = listen_text
                .parse()
                .map_err(|_| Error::invalid(format!("listen address {listen_text:?} is not IP:PORT")))?;
            let target = arg_str(target, "target")?.to_owned();
            let selector = match arg_opt_str(agent_id, "agent_id")? {
                Some(id) => Selector::Agent(id.to_owned()),
                None => Selector::for_target(&target),
            };
            let bound = server.rt.block(0, None, None, async {
                frontend::start_forward(&server.server, listen, selector, target)
                    .await
                    .map_err(Error::setup)
            })?;
            Ok(bound.to_string())
        })
    })
}
