//! [`connector_server`]: a QUIC server agents connect to, and dials through them.

use std::ffi::c_char;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use connector_core::auth::TokenAuthenticator;
use connector_core::tls::CaBundle;
use connector_core::{Selector, Server, TunnelStream};

use crate::auth::{CallbackAuthenticator, CallbackGate};
use crate::cancel::{self, connector_cancel};
use crate::config::{Config, SERVER_CONFIGS, connector_server_config};
use crate::connector_result;
use crate::error::{
    Error, arg_enum, arg_opt_str, arg_str, check_out, fill_out, fill_string_out, guard, to_c_string, write_out,
};
use crate::handle::Registry;
use crate::runtime::OwnedRuntime;
use crate::stream::{STREAMS, connector_stream};

/// A running server: accepts agents and dials through them.
pub struct connector_server {
    pub(crate) rt: Arc<OwnedRuntime>,
    pub(crate) server: Server,
    /// The CAs of agents' client certificates, which no TLS frontend may
    /// trust without an allow-list.
    pub(crate) agent_client_cas: CaBundle,
    local_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    /// Fired by [`connector_server_free`]: pending calls end.
    closed: connector_cancel,
    /// The C authenticator's calls in progress, if there is one.
    auth_gate: Option<Arc<CallbackGate>>,
}

/// Which agent a dial goes through.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum connector_selector_kind {
    /// The agent serving the target's host (the `selector` string is ignored):
    /// the usual choice, as an apiserver reaching a node.
    CONNECTOR_SELECT_TARGET_HOST = 0,
    /// The agent serving the host named by `selector`.
    CONNECTOR_SELECT_HOST = 1,
    /// The agent whose id is `selector`.
    CONNECTOR_SELECT_AGENT = 2,
    /// Any connected agent.
    CONNECTOR_SELECT_ANY = 3,
}

impl TryFrom<u32> for connector_selector_kind {
    type Error = ();

    fn try_from(value: u32) -> Result<Self, ()> {
        use connector_selector_kind::*;
        Ok(match value {
            0 => CONNECTOR_SELECT_TARGET_HOST,
            1 => CONNECTOR_SELECT_HOST,
            2 => CONNECTOR_SELECT_AGENT,
            3 => CONNECTOR_SELECT_ANY,
            _ => return Err(()),
        })
    }
}

pub(crate) static SERVERS: Registry<connector_server> = Registry::new("server");

fn start(config: &connector_server_config) -> Result<connector_server, Error> {
    let s = config.snapshot();
    if s.settings.tokens.is_some() && !s.tokens.is_empty() {
        return Err(Error::invalid("use either a tokens file or add_token, not both"));
    }
    let rt = OwnedRuntime::new(s.worker_threads)?;
    let mut setup = s.settings.into_setup_with(s.identity).map_err(Error::setup)?;
    if !s.tokens.is_empty() {
        setup.tokens = Some(TokenAuthenticator::from_entries(s.tokens));
    }
    if !s.client_cas.is_empty() {
        setup
            .client_cas
            .get_or_insert_with(CaBundle::default)
            .extend(s.client_cas);
    }
    let agent_client_cas = setup.client_cas.clone().unwrap_or_default();
    let mut auth_gate = None;
    if let Some((Some(callback), user_data)) = s.callback {
        let gate = Arc::new(CallbackGate::default());
        auth_gate = Some(gate.clone());
        setup.authenticators.push(Arc::new(CallbackAuthenticator {
            callback,
            user_data,
            gate,
        }));
    }
    let started = {
        let _entered = rt.handle().enter();
        setup.start().map_err(Error::setup)?
    };
    Ok(connector_server {
        rt,
        server: started.server,
        agent_client_cas,
        local_addr: started.local_addr,
        tcp_addr: started.tcp_addr,
        closed: connector_cancel::new(),
        auth_gate,
    })
}

/// Starts a server from `config` (which stays usable and must still be
/// freed): binds the QUIC listener and accepts agents in the background.
///
/// # Safety
/// `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_start(
    config: *const connector_server_config,
    out: *mut *mut connector_server,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        SERVERS.insert_out(out, || start(&*SERVER_CONFIGS.get(config)?))
    })
}

/// The UDP address agents connect to (`ip:port`), in `*out` (free with `connector_string_free`).
///
/// # Safety
/// `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_local_addr(
    server: *const connector_server,
    out: *mut *mut c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        fill_string_out(out, || Ok(SERVERS.get(server)?.local_addr.to_string()))
    })
}

/// The TCP address agents reach over the fallback transport (`ip:port`) in
/// `*out` (free with `connector_string_free`), or null when it is off
/// (`connector_server_config_set_tcp_listen(config, "off")`).
///
/// # Safety
/// `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_tcp_addr(
    server: *const connector_server,
    out: *mut *mut c_char,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        fill_out(out, "out", || {
            Ok(match SERVERS.get(server)?.tcp_addr {
                Some(addr) => to_c_string(&addr.to_string()),
                None => std::ptr::null_mut(),
            })
        })
    })
}

/// How many agents are connected, in `*out`.
///
/// # Safety
/// `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_agent_count(
    server: *const connector_server,
    out: *mut usize,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        fill_out(out, "out", || Ok(SERVERS.get(server)?.server.agents().len()))
    })
}

/// Waits until the agent `agent_id` (or, with null, any agent) is
/// connected, at most `timeout_us` microseconds (0: no limit).
///
/// # Safety
/// `agent_id` null or NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_wait_agent(
    server: *const connector_server,
    agent_id: *const c_char,
    timeout_us: u64,
    cancel: *const connector_cancel,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let (server, cancel) = cancel::with_handle(&SERVERS, server, cancel)?;
        let agent_id = arg_opt_str(agent_id, "agent_id")?.map(str::to_owned);
        server
            .rt
            .block(timeout_us, cancel.as_deref(), Some(&server.closed), async {
                server
                    .server
                    .wait_for_agents(|agents| match &agent_id {
                        Some(id) => agents.iter().any(|a| &a.agent_id == id),
                        None => !agents.is_empty(),
                    })
                    .await;
                Ok(())
            })
    })
}

fn selector(kind: connector_selector_kind, selector: *const c_char, target: &str) -> Result<Selector, Error> {
    Ok(match kind {
        connector_selector_kind::CONNECTOR_SELECT_TARGET_HOST => Selector::for_target(target),
        connector_selector_kind::CONNECTOR_SELECT_HOST => Selector::Host(arg_str(selector, "selector")?.to_owned()),
        connector_selector_kind::CONNECTOR_SELECT_AGENT => Selector::Agent(arg_str(selector, "selector")?.to_owned()),
        connector_selector_kind::CONNECTOR_SELECT_ANY => Selector::Any,
    })
}

/// What both dial entry points do once their enum and out-parameters are
/// checked: looks up the server and the cancel handle, reads the target and
/// the selector, and dials, blocking the calling thread.
fn dial_tunnel(
    server: *const connector_server,
    kind: connector_selector_kind,
    selector_arg: *const c_char,
    target: *const c_char,
    timeout_us: u64,
    cancel: *const connector_cancel,
) -> Result<(Arc<connector_server>, TunnelStream), Error> {
    let (server, cancel) = cancel::with_handle(&SERVERS, server, cancel)?;
    let target = arg_str(target, "target")?;
    let selector = selector(kind, selector_arg, target)?;
    let tunnel = server.dial(&selector, target, timeout_us, cancel.as_deref())?;
    Ok((server, tunnel))
}

impl connector_server {
    /// Dials `target` through the selected agent, blocking the calling thread.
    pub(crate) fn dial(
        &self,
        selector: &Selector,
        target: &str,
        timeout_us: u64,
        cancel: Option<&connector_cancel>,
    ) -> Result<TunnelStream, Error> {
        self.rt.block(0, cancel, Some(&self.closed), async {
            let dialled = if timeout_us == 0 {
                self.server.dial(selector, target).await
            } else {
                self.server
                    .dial_timeout(selector, target, Duration::from_micros(timeout_us))
                    .await
            };
            dialled.map_err(Error::from)
        })
    }
}

/// Opens a TCP connection to `target` (`host:port`, as the agent sees it)
/// through the agent `kind` (a `connector_selector_kind`; any other value is
/// `CONNECTOR_ERR_INVALID_ARGUMENT`) and `selector` pick. `timeout_us` (0:
/// the server's default dial timeout) covers choosing the agent, opening the
/// stream and the agent's TCP connect. On success `*out` is a new stream
/// handle.
///
/// # Safety
/// Strings NUL-terminated (`selector` may be null when unused); `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_dial(
    server: *const connector_server,
    kind: u32,
    selector_arg: *const c_char,
    target: *const c_char,
    timeout_us: u64,
    cancel: *const connector_cancel,
    out: *mut *mut connector_stream,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let kind = arg_enum(kind, "kind")?;
        STREAMS.insert_out(out, || {
            let (server, tunnel) = dial_tunnel(server, kind, selector_arg, target, timeout_us, cancel)?;
            Ok(connector_stream::blocking(server.rt.clone(), tunnel))
        })
    })
}

/// Like [`connector_server_dial`], but hands the connection over as one end
/// of a Unix socketpair in `*fd`, owned by the caller: read and write it with
/// the caller's own event loop; `shutdown(fd, SHUT_WR)` is a half-close. A
/// library task copies between the other end and the tunnel. `*out` is a
/// stream handle that can only be freed and asked [`crate::stream::connector_stream_status`]
/// (whether the connection ended cleanly): close the descriptor, then free the
/// handle (data written before the close still reaches the target, within
/// 10 s; then the connection ends).
///
/// # Safety
/// As [`connector_server_dial`]; `fd` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_dial_fd(
    server: *const connector_server,
    kind: u32,
    selector_arg: *const c_char,
    target: *const c_char,
    timeout_us: u64,
    cancel: *const connector_cancel,
    fd: *mut i32,
    out: *mut *mut connector_stream,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let kind = arg_enum(kind, "kind")?;
        STREAMS.insert_out(out, || {
            check_out(fd, "fd")?;
            let (server, tunnel) = dial_tunnel(server, kind, selector_arg, target, timeout_us, cancel)?;
            let agent_id = tunnel.agent_id().to_owned();
            let abort = Arc::new(connector_cancel::new());
            let end = Arc::new(crate::splice::SpliceEnd::default());
            let raw = crate::splice::start(server.rt.handle(), tunnel, abort.clone(), end.clone())?;
            write_out(fd, raw, "fd")?;
            Ok(connector_stream::spliced(server.rt.clone(), agent_id, abort, end))
        })
    })
}

/// Drains the server, then shuts it down: what `connector server` does on
/// SIGTERM, for a rolling update. At once, new dials (also through the
/// frontends) fail with `CONNECTOR_ERR_CLOSED` ("the server is shutting
/// down"), new agents are refused, and every agent is sent `GoAway` (it
/// connects to another replica). Connections already dialled keep working
/// and may finish within `grace_ms` milliseconds; then the server closes
/// what is still open, frontends stop, and the call waits (at most 3 s) for
/// the closes to reach the agents. Blocks the calling thread until then: it
/// returns as soon as every agent has acknowledged the `GoAway` and every
/// tunnelled connection has ended, and after at most `grace_ms` plus 3 s.
/// A second call waits for the first; a call after the drain returns at
/// once. The handle stays valid and must still be freed with
/// [`connector_server_free`], which, from another thread during the drain,
/// stops it at once (the drain then returns `CONNECTOR_ERR_CLOSED`).
/// Called on a library thread (inside the auth callback) it returns
/// `CONNECTOR_ERR_WRONG_THREAD` and does nothing.
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_drain(
    server: *const connector_server,
    grace_ms: u64,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        let server = SERVERS.get(server)?;
        let grace = Duration::from_millis(grace_ms);
        server.rt.block(0, None, Some(&server.closed), async {
            server.server.drain(grace).await;
            Ok(())
        })
    })
}

/// Shuts the server down (agents are disconnected, their streams end,
/// frontends stop) and frees the handle. Pending calls on it return
/// `CONNECTOR_ERR_CLOSED`. Streams already dialled must still be freed; the
/// runtime's threads are joined when the last handle using them is freed.
///
/// The auth callback: once this returns `CONNECTOR_OK`, the callback is not
/// running and will never be called again, so its `user_data` may be
/// released. To get there it waits, with no time limit, for calls of the
/// callback already running (a callback that never returns makes it wait
/// forever). Called on a library thread, inside the auth callback above all
/// (it would wait for itself), it returns `CONNECTOR_ERR_WRONG_THREAD` and
/// does nothing: the handle stays valid, to be freed from one of the
/// caller's own threads.
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_free(
    server: *mut connector_server,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        if crate::auth::in_callback() {
            return Err(Error::new(
                connector_result::CONNECTOR_ERR_WRONG_THREAD,
                "connector_server_free called inside an auth callback, which it would wait for: \
                 nothing was freed; free the server from one of your own threads",
            ));
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::new(
                connector_result::CONNECTOR_ERR_WRONG_THREAD,
                "connector_server_free called on a connector library thread: nothing was freed; \
                 free the server from one of your own threads",
            ));
        }
        let server = SERVERS.remove(server)?;
        // Fire `closed` first: shutting down ends the tunnelled connections,
        // which could otherwise let a drain in progress finish as if it had
        // completed, instead of returning CONNECTOR_ERR_CLOSED.
        server.closed.fire();
        server.server.shutdown();
        if let Some(gate) = &server.auth_gate {
            gate.close();
        }
        Ok(())
    })
}
