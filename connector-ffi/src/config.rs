//! Server and agent settings, built up through setter calls on a config
//! handle and then passed to [`crate::server::connector_server_start`] or
//! [`crate::agent::connector_agent_start`]. Invalid input is rejected by the
//! setter that receives it, with a message saying what is wrong.

use std::ffi::{c_char, c_void};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use connector_core::Identifiers;
use connector_core::agent::{DestinationPolicy, Rule};
use connector_core::auth::{Allowance, TokenEntry};
use connector_core::proto::Secret;
use connector_core::server::{Limits, ProxyStrategy};
use connector_core::setup::TcpListen;
use connector_core::tls::{CaBundle, Identity};
use connector_core::transport::fallback::TransportMode;

use crate::auth::connector_auth_callback;
use crate::connector_result;
use crate::error::{Error, arg_bytes, arg_str, check_out, guard, write_out};
use crate::handle::Registry;

/// Settings of a server, edited through `connector_server_config_*` calls.
pub struct connector_server_config {
    settings: Mutex<ServerSettings>,
}

#[derive(Clone)]
pub(crate) struct ServerSettings {
    pub(crate) listen: SocketAddr,
    pub(crate) identity: Option<Identity>,
    pub(crate) tokens: Vec<TokenEntry>,
    pub(crate) tokens_file: Option<String>,
    pub(crate) client_cas: CaBundle,
    pub(crate) callback: Option<(connector_auth_callback, usize)>,
    pub(crate) server_id: String,
    pub(crate) limits: Limits,
    pub(crate) proxy_strategies: Option<Vec<ProxyStrategy>>,
    pub(crate) worker_threads: usize,
    pub(crate) server_count: u16,
    pub(crate) tcp_listen: TcpListen,
    pub(crate) liveness: Liveness,
}

/// Keepalive interval and idle timeout of the connection between agent and
/// server (`None`: the library's default).
#[derive(Clone, Copy, Default)]
pub(crate) struct Liveness {
    pub(crate) keepalive: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
}

impl Liveness {
    /// Sets either value from milliseconds (0 keeps it as it is).
    fn set(&mut self, keepalive_ms: u64, idle_timeout_ms: u64) -> Result<(), Error> {
        if keepalive_ms == 0 && idle_timeout_ms == 0 {
            return Err(Error::invalid(
                "give a keepalive interval, an idle timeout, or both (0 keeps one as it is)",
            ));
        }
        if keepalive_ms > 0 {
            self.keepalive = Some(Duration::from_millis(keepalive_ms));
        }
        if idle_timeout_ms > 0 {
            self.idle_timeout = Some(Duration::from_millis(idle_timeout_ms));
        }
        Ok(())
    }
}

/// Settings of an agent, edited through `connector_agent_config_*` calls.
pub struct connector_agent_config {
    settings: Mutex<AgentSettings>,
}

#[derive(Clone, Default)]
pub(crate) struct AgentSettings {
    pub(crate) servers: Vec<String>,
    pub(crate) server_name: Option<String>,
    pub(crate) server_cas: CaBundle,
    pub(crate) agent_id: Option<String>,
    pub(crate) token: Option<Secret>,
    pub(crate) token_file: Option<String>,
    pub(crate) client_identity: Option<Identity>,
    pub(crate) identifiers: Identifiers,
    pub(crate) rules: Vec<Rule>,
    pub(crate) max_connections: usize,
    pub(crate) worker_threads: usize,
    pub(crate) tunnel_idle_timeout: Option<Duration>,
    pub(crate) tunnel_stall_timeout: Option<Duration>,
    pub(crate) liveness: Liveness,
    pub(crate) transport: Option<TransportMode>,
    pub(crate) tcp_server: Option<String>,
}

/// Server resource bounds; a zero field keeps the default.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct connector_limits {
    /// Agents connected at once (default 10,000).
    pub max_agents: u64,
    /// Tunnelled connections open through one agent at once (default 10,000).
    pub max_streams_per_agent: u32,
    /// Time an agent has after its handshake to send its `Hello`, ms (default 10 s).
    pub hello_timeout_ms: u64,
    /// Default dial deadline when a dial passes no timeout, ms (default 30 s).
    pub dial_timeout_ms: u64,
    /// Dials waiting for their agent's answer at once, across all agents;
    /// more fail at once with `CONNECTOR_ERR_OVERLOADED` (default 1,000).
    pub max_pending_dials: u64,
}

pub(crate) static SERVER_CONFIGS: Registry<connector_server_config> = Registry::new("server config");
pub(crate) static AGENT_CONFIGS: Registry<connector_agent_config> = Registry::new("agent config");

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl connector_server_config {
    pub(crate) fn snapshot(&self) -> ServerSettings {
        lock(&self.settings).clone()
    }
}

impl connector_agent_config {
    pub(crate) fn snapshot(&self) -> AgentSettings {
        lock(&self.settings).clone()
    }
}

fn edit_server(
    config: *const connector_server_config,
    error: *mut *mut c_char,
    change: impl FnOnce(&mut ServerSettings) -> Result<(), Error>,
) -> connector_result {
    guard(error, || {
        let config = SERVER_CONFIGS.get(config)?;
        let mut settings = lock(&config.settings);
        change(&mut settings)
    })
}

fn edit_agent(
    config: *const connector_agent_config,
    error: *mut *mut c_char,
    change: impl FnOnce(&mut AgentSettings) -> Result<(), Error>,
) -> connector_result {
    guard(error, || {
        let config = AGENT_CONFIGS.get(config)?;
        let mut settings = lock(&config.settings);
        change(&mut settings)
    })
}

fn identity_from_pem(chain: &[u8], key: &[u8]) -> Result<Identity, Error> {
    Identity::from_pem(chain, key).map_err(|e| Error::invalid(e.to_string()))
}

fn identity_from_files(chain: *const c_char, key: *const c_char) -> Result<Identity, Error> {
    Identity::from_files(arg_str(chain, "chain_path")?, arg_str(key, "key_path")?)
        .map_err(|e| Error::invalid(e.to_string()))
}

// ---------------------------------------------------------------- server

/// Creates server settings: listen on `0.0.0.0:8443`, no certificate and no
/// authentication yet (both are required before starting).
///
/// # Safety
/// `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_new(
    out: *mut *mut connector_server_config,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        check_out(out, "out")?;
        let settings = ServerSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            identity: None,
            tokens: Vec::new(),
            tokens_file: None,
            client_cas: CaBundle::default(),
            callback: None,
            server_id: "connector".into(),
            limits: Limits::default(),
            proxy_strategies: None,
            worker_threads: 0,
            server_count: 1,
            tcp_listen: TcpListen::SameAsQuic,
            liveness: Liveness::default(),
        };
        let config = Arc::new(connector_server_config {
            settings: Mutex::new(settings),
        });
        write_out(out, SERVER_CONFIGS.insert(config), "out")
    })
}

/// Frees server settings (servers started from them are unaffected).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_free(
    config: *mut connector_server_config,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || SERVER_CONFIGS.remove(config).map(drop))
}

/// Sets the UDP address agents connect to, e.g. `"0.0.0.0:8443"` (port 0 picks a free port).
///
/// # Safety
/// `listen` a NUL-terminated string; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_listen(
    config: *const connector_server_config,
    listen: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        let text = arg_str(listen, "listen")?;
        s.listen = text
            .parse()
            .map_err(|_| Error::invalid(format!("listen address {text:?} is not IP:PORT")))?;
        Ok(())
    })
}

/// Sets the server's certificate chain (leaf first) and private key from PEM bytes.
///
/// # Safety
/// Buffers readable for their lengths; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_identity_pem(
    config: *const connector_server_config,
    chain_pem: *const u8,
    chain_len: usize,
    key_pem: *const u8,
    key_len: usize,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        let identity = identity_from_pem(
            arg_bytes(chain_pem, chain_len, "chain_pem")?,
            arg_bytes(key_pem, key_len, "key_pem")?,
        )?;
        s.identity = Some(identity);
        Ok(())
    })
}

/// Sets the server's certificate chain and key from PEM files.
///
/// # Safety
/// Paths NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_identity_files(
    config: *const connector_server_config,
    chain_path: *const c_char,
    key_path: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        s.identity = Some(identity_from_files(chain_path, key_path)?);
        Ok(())
    })
}

/// Adds CA certificates (PEM) for agents' client certificates, enabling mTLS
/// authentication: an agent with a certificate chaining to one of them is
/// admitted with the identifiers its certificate names.
///
/// # Safety
/// Buffer readable for its length; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_add_client_ca_pem(
    config: *const connector_server_config,
    pem: *const u8,
    len: usize,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        let cas = CaBundle::from_pem(arg_bytes(pem, len, "pem")?, "client CA PEM")
            .map_err(|e| Error::invalid(e.to_string()))?;
        s.client_cas.extend(cas);
        Ok(())
    })
}

/// Like [`connector_server_config_add_client_ca_pem`], from a PEM file. The file is followed: when
/// its contents change, the next handshake uses the new CAs (a broken update
/// keeps the previous ones).
///
/// # Safety
/// `path` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_add_client_ca_file(
    config: *const connector_server_config,
    path: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        let cas = CaBundle::from_file(arg_str(path, "path")?).map_err(|e| Error::invalid(e.to_string()))?;
        s.client_cas.extend(cas);
        Ok(())
    })
}

/// Parses an allowance: `"*"` (anything) or identifiers such as
/// `"host=node-a,cidr=10.0.0.0/24"`.
pub(crate) fn parse_allowance(text: &str) -> Result<Allowance, Error> {
    if text.trim() == "*" {
        return Ok(Allowance::Any);
    }
    text.parse::<Identifiers>()
        .map(Allowance::Only)
        .map_err(|e| Error::invalid(e.to_string()))
}

/// Accepts agents presenting bearer `token` as identity `name`, allowed to
/// claim `allowed`: `"*"` for anything, or identifiers such as
/// `"host=node-a,ipv4=10.0.0.5,cidr=10.1.0.0/16,default-route=true"`.
/// Only a digest of the token is kept.
///
/// # Safety
/// `token` readable for `token_len`; strings NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_add_token(
    config: *const connector_server_config,
    token: *const u8,
    token_len: usize,
    name: *const c_char,
    allowed: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        let token = arg_bytes(token, token_len, "token")?;
        if token.is_empty() {
            return Err(Error::invalid("token is empty"));
        }
        let name = arg_str(name, "name")?;
        let allowance = parse_allowance(arg_str(allowed, "allowed")?)?;
        s.tokens.push(TokenEntry::new(&Secret::new(token), name, allowance));
        Ok(())
    })
}

/// Accepts the tokens listed in a file (`TOKEN IDENTITY [IDENTIFIERS|*]` per
/// line), re-read when it changes.
///
/// # Safety
/// `path` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_tokens_file(
    config: *const connector_server_config,
    path: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        s.tokens_file = Some(arg_str(path, "path")?.to_owned());
        Ok(())
    })
}

/// Installs a C authenticator, asked (after tokens and client certificates,
/// if configured) about every agent's `Hello`; see [`connector_auth_callback`].
/// `user_data` is passed back to every call and must stay valid until every
/// server started from these settings is freed: once `connector_server_free`
/// returns `CONNECTOR_OK`, no call of the callback is running or will start
/// (it waits for running ones).
///
/// # Safety
/// `callback` a valid function; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_authenticator(
    config: *const connector_server_config,
    callback: connector_auth_callback,
    user_data: *mut c_void,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        if callback.is_none() {
            return Err(Error::invalid("callback is null"));
        }
        s.callback = Some((callback, user_data as usize));
        Ok(())
    })
}

/// Sets resource bounds; zero fields keep their defaults.
///
/// # Safety
/// `limits` readable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_limits(
    config: *const connector_server_config,
    limits: *const connector_limits,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        if limits.is_null() {
            return Err(Error::invalid("limits is null"));
        }
        // SAFETY: non-null and readable per the contract.
        let l = unsafe { *limits };
        let ms = Duration::from_millis;
        if l.max_agents > 0 {
            s.limits.max_agents = usize::try_from(l.max_agents).unwrap_or(usize::MAX);
        }
        if l.max_streams_per_agent > 0 {
            s.limits.max_streams_per_agent = l.max_streams_per_agent;
        }
        if l.hello_timeout_ms > 0 {
            s.limits.hello_timeout = ms(l.hello_timeout_ms);
        }
        if l.dial_timeout_ms > 0 {
            s.limits.dial_timeout = ms(l.dial_timeout_ms);
        }
        if l.max_pending_dials > 0 {
            s.limits.max_pending_dials = usize::try_from(l.max_pending_dials).unwrap_or(usize::MAX);
        }
        Ok(())
    })
}

/// Sets this replica's id, reported to agents (default `"connector"`).
///
/// # Safety
/// `server_id` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_server_id(
    config: *const connector_server_config,
    server_id: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        let id = arg_str(server_id, "server_id")?;
        if id.is_empty() {
            return Err(Error::invalid("server_id is empty"));
        }
        s.server_id = id.to_owned();
        Ok(())
    })
}

/// Sets how host dials find their agent, e.g. `"destHost,defaultRoute"`
/// (Konnectivity's `--proxy-strategies`).
///
/// # Safety
/// `strategies` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_proxy_strategies(
    config: *const connector_server_config,
    strategies: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        let list =
            ProxyStrategy::parse_list(arg_str(strategies, "strategies")?).map_err(|e| Error::invalid(e.to_string()))?;
        s.proxy_strategies = Some(list);
        Ok(())
    })
}

/// Sets the number of runtime worker threads (0: one per CPU).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_worker_threads(
    config: *const connector_server_config,
    threads: u32,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        s.worker_threads = threads as usize;
        Ok(())
    })
}

/// Sets how many server replicas run behind the address agents are given
/// (default 1). It is announced to agents, which keep connecting until they
/// hold a session with each replica, so every replica can dial through every
/// agent (see docs/operations.md, high availability).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_server_count(
    config: *const connector_server_config,
    count: u16,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        if count == 0 {
            return Err(Error::invalid("server_count must be at least 1"));
        }
        s.server_count = count;
        Ok(())
    })
}

/// Sets where the TCP fallback listener (TLS + QMux, for agents whose
/// network blocks UDP) listens: `"same"` (the default: the QUIC listener's
/// IP and port), `"off"`, or `IP:PORT`. See [`crate::server::connector_server_tcp_addr`].
///
/// # Safety
/// `listen` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_tcp_listen(
    config: *const connector_server_config,
    listen: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| {
        s.tcp_listen = arg_str(listen, "listen")?.parse().map_err(Error::invalid)?;
        Ok(())
    })
}

/// Sets how often the server sends a keepalive on an otherwise idle agent
/// connection (default 5 s) and after how long without hearing from an
/// agent it drops it (default 30 s); 0 keeps a value as it is. The
/// connection's idle timeout is the smaller of the two ends'.
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_keepalive(
    config: *const connector_server_config,
    keepalive_ms: u64,
    idle_timeout_ms: u64,
    error: *mut *mut c_char,
) -> connector_result {
    edit_server(config, error, |s| s.liveness.set(keepalive_ms, idle_timeout_ms))
}

// ---------------------------------------------------------------- agent

/// Creates agent settings. Required before starting: the server address,
/// its CA, an agent id and a credential (token, token file or client certificate).
///
/// # Safety
/// `out` writable; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_new(
    out: *mut *mut connector_agent_config,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || {
        check_out(out, "out")?;
        let settings = AgentSettings {
            max_connections: connector_core::agent::DEFAULT_MAX_CONNECTIONS,
            tunnel_stall_timeout: Some(connector_core::agent::DEFAULT_TUNNEL_STALL_TIMEOUT),
            ..Default::default()
        };
        let config = Arc::new(connector_agent_config {
            settings: Mutex::new(settings),
        });
        write_out(out, AGENT_CONFIGS.insert(config), "out")
    })
}

/// Frees agent settings (agents started from them are unaffected).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_free(
    config: *mut connector_agent_config,
    error: *mut *mut c_char,
) -> connector_result {
    guard(error, || AGENT_CONFIGS.remove(config).map(drop))
}

fn server_address(server: *const c_char, what: &str) -> Result<String, Error> {
    let text = arg_str(server, what)?;
    if !text.contains(':') {
        return Err(Error::invalid(format!("{what} address {text:?} is not host:port")));
    }
    Ok(text.to_owned())
}

/// Sets the server address, `host:port` (resolved at every connection
/// attempt), replacing any set before. One address may front several
/// replicas: the agent keeps connecting until it holds as many as the
/// servers announce (`connector_server_config_set_server_count`).
///
/// # Safety
/// `server` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_server(
    config: *const connector_agent_config,
    server: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.servers = vec![server_address(server, "server")?];
        Ok(())
    })
}

/// Adds a server address, `host:port`: with several, each is one replica
/// and the agent holds a session with every one of them.
///
/// # Safety
/// `server` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_add_server(
    config: *const connector_agent_config,
    server: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.servers.push(server_address(server, "server")?);
        Ok(())
    })
}

/// Sets the name expected on the server certificate (default: the host part of the server address).
///
/// # Safety
/// `name` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_server_name(
    config: *const connector_agent_config,
    name: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.server_name = Some(arg_str(name, "name")?.to_owned());
        Ok(())
    })
}

/// Adds CA certificates (PEM) the server certificate must chain to.
///
/// # Safety
/// Buffer readable for its length; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_add_server_ca_pem(
    config: *const connector_agent_config,
    pem: *const u8,
    len: usize,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        let cas = CaBundle::from_pem(arg_bytes(pem, len, "pem")?, "server CA PEM")
            .map_err(|e| Error::invalid(e.to_string()))?;
        s.server_cas.extend(cas);
        Ok(())
    })
}

/// Like [`connector_agent_config_add_server_ca_pem`], from a PEM file. The file is followed: when
/// its contents change, the next handshake uses the new CAs (a broken update
/// keeps the previous ones).
///
/// # Safety
/// `path` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_add_server_ca_file(
    config: *const connector_agent_config,
    path: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        let cas = CaBundle::from_file(arg_str(path, "path")?).map_err(|e| Error::invalid(e.to_string()))?;
        s.server_cas.extend(cas);
        Ok(())
    })
}

/// Sets the agent id (often the node name).
///
/// # Safety
/// `agent_id` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_agent_id(
    config: *const connector_agent_config,
    agent_id: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        let id = arg_str(agent_id, "agent_id")?;
        if id.is_empty() || id.len() > 128 {
            return Err(Error::invalid("agent_id must be 1 to 128 bytes"));
        }
        s.agent_id = Some(id.to_owned());
        Ok(())
    })
}

/// Sets a bearer token presented in every `Hello`.
///
/// # Safety
/// `token` readable for `len`; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_token(
    config: *const connector_agent_config,
    token: *const u8,
    len: usize,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        let token = arg_bytes(token, len, "token")?;
        if token.is_empty() {
            return Err(Error::invalid("token is empty"));
        }
        s.token = Some(Secret::new(token));
        Ok(())
    })
}

/// Reads the bearer token from a file at every connection attempt (rotation-friendly).
///
/// # Safety
/// `path` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_token_file(
    config: *const connector_agent_config,
    path: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.token_file = Some(arg_str(path, "path")?.to_owned());
        Ok(())
    })
}

/// Sets a client certificate and key (PEM) for mTLS.
///
/// # Safety
/// Buffers readable for their lengths; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_client_identity_pem(
    config: *const connector_agent_config,
    chain_pem: *const u8,
    chain_len: usize,
    key_pem: *const u8,
    key_len: usize,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        let identity = identity_from_pem(
            arg_bytes(chain_pem, chain_len, "chain_pem")?,
            arg_bytes(key_pem, key_len, "key_pem")?,
        )?;
        s.client_identity = Some(identity);
        Ok(())
    })
}

/// Sets a client certificate and key for mTLS from PEM files.
///
/// # Safety
/// Paths NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_client_identity_files(
    config: *const connector_agent_config,
    chain_path: *const c_char,
    key_path: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.client_identity = Some(identity_from_files(chain_path, key_path)?);
        Ok(())
    })
}

/// Sets what the agent claims to serve, e.g. `"host=node-a,ipv4=10.0.0.5,default-route=true"`.
///
/// # Safety
/// `identifiers` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_identifiers(
    config: *const connector_agent_config,
    identifiers: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.identifiers = arg_str(identifiers, "identifiers")?
            .parse()
            .map_err(|e: connector_core::identifiers::IdentifierParseError| Error::invalid(e.to_string()))?;
        Ok(())
    })
}

/// Adds a destination the agent may connect to, e.g. `"10.0.0.0/8"`,
/// `"127.0.0.1/32"`, `"*.svc.cluster.local:443"`. With no rules, anything
/// outside the guarded ranges (loopback, link-local, ...) is allowed.
///
/// # Safety
/// `rule` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_add_allow_rule(
    config: *const connector_agent_config,
    rule: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        let rule: Rule = arg_str(rule, "rule")?
            .parse()
            .map_err(|e: connector_core::agent::RuleParseError| Error::invalid(e.to_string()))?;
        s.rules.push(rule);
        Ok(())
    })
}

/// Sets how many tunnelled connections the agent serves at once (default 10,000).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_max_connections(
    config: *const connector_agent_config,
    max: u32,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        if max == 0 {
            return Err(Error::invalid("max_connections must be at least 1"));
        }
        s.max_connections = max as usize;
        Ok(())
    })
}

/// Sets the number of runtime worker threads (0: one per CPU).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_worker_threads(
    config: *const connector_agent_config,
    threads: u32,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.worker_threads = threads as usize;
        Ok(())
    })
}

/// Closes a tunnelled connection idle (no bytes either way) for `timeout_ms`
/// milliseconds (0: never, the default); a stream then fails with
/// `CONNECTOR_ERR_TIMED_OUT` (see `connector_stream_status`).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_tunnel_idle_timeout(
    config: *const connector_agent_config,
    timeout_ms: u64,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.tunnel_idle_timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
        Ok(())
    })
}

/// Closes a tunnelled connection one side of which (the dialer or the
/// target) has read none of the bytes waiting for it for `timeout_ms`
/// milliseconds (0: never; default 3 minutes); a stream then fails with
/// `CONNECTOR_ERR_IO` (see `connector_stream_status`: reset `stalled`).
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_tunnel_stall_timeout(
    config: *const connector_agent_config,
    timeout_ms: u64,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.tunnel_stall_timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
        Ok(())
    })
}

/// Sets how often the agent sends a keepalive on an otherwise idle
/// connection to its server (default 5 s) and after how long without an
/// answer the server counts as gone (default 30 s); 0 keeps a value as it is.
///
/// # Safety
/// `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_keepalive(
    config: *const connector_agent_config,
    keepalive_ms: u64,
    idle_timeout_ms: u64,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| s.liveness.set(keepalive_ms, idle_timeout_ms))
}

/// Sets the transport to the server: `"auto"` (the default: QUIC, falling
/// back to TCP when UDP does not get through), `"quic"` or `"tcp"`.
///
/// # Safety
/// `transport` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_transport(
    config: *const connector_agent_config,
    transport: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.transport = Some(arg_str(transport, "transport")?.parse().map_err(Error::invalid)?);
        Ok(())
    })
}

/// Sets the server's TCP fallback address, `host:port` (default: the same
/// as the server address; only with a single server address).
///
/// # Safety
/// `server` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_tcp_server(
    config: *const connector_agent_config,
    server: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit_agent(config, error, |s| {
        s.tcp_server = Some(server_address(server, "tcp_server")?);
        Ok(())
    })
}

impl AgentSettings {
    pub(crate) fn policy(&self) -> DestinationPolicy {
        DestinationPolicy::new(self.rules.clone())
    }
}
