//! Server and agent settings, built up on a config handle and then passed
//! to [`crate::server::connector_server_start`] or
//! [`crate::agent::connector_agent_start`]. Every setting of the schema
//! (`connector_core::settings`, the same as the `connector` binary's flags
//! and TOML keys) goes through one generic path:
//! [`connector_server_config_set`] / [`connector_agent_config_set`] take a
//! key and its value as text, [`connector_server_config_set_toml`] /
//! [`connector_agent_config_set_toml`] a TOML table of them. The typed
//! setters are thin wrappers over that path, kept for existing callers; the
//! rest take what is not a setting (PEM material in memory, tokens, the C
//! authenticator, worker threads). Invalid input is rejected by the call
//! that receives it, with a message saying what is wrong.

use std::ffi::{c_char, c_void};
use std::sync::{Mutex, MutexGuard};

use connector_core::Identifiers;
use connector_core::auth::{Allowance, TokenEntry};
use connector_core::proto::Secret;
use connector_core::settings::{AgentSettings, Schema, ServerSettings, SettingsError, SettingsMap};
use connector_core::tls::{CaBundle, Identity};

use crate::auth::connector_auth_callback;
use crate::connector_result;
use crate::error::{Error, arg_bytes, arg_str, guard};
use crate::handle::Registry;

/// Settings of a server, edited through `connector_server_config_*` calls.
pub struct connector_server_config {
    state: Mutex<ServerState>,
}

/// A server config: the schema's settings, and what is not a setting.
#[derive(Clone, Default)]
pub(crate) struct ServerState {
    pub(crate) settings: ServerSettings,
    /// Certificate and key given as PEM bytes or loaded from files.
    pub(crate) identity: Option<Identity>,
    pub(crate) tokens: Vec<TokenEntry>,
    /// Client CAs given as PEM bytes or added from files.
    pub(crate) client_cas: CaBundle,
    pub(crate) callback: Option<(connector_auth_callback, usize)>,
    pub(crate) worker_threads: usize,
}

/// Settings of an agent, edited through `connector_agent_config_*` calls.
pub struct connector_agent_config {
    state: Mutex<AgentState>,
}

/// An agent config: the schema's settings, and what is not a setting.
#[derive(Clone, Default)]
pub(crate) struct AgentState {
    pub(crate) settings: AgentSettings,
    /// Server CAs given as PEM bytes or added from files.
    pub(crate) server_cas: CaBundle,
    pub(crate) token: Option<Secret>,
    pub(crate) client_identity: Option<Identity>,
    pub(crate) worker_threads: usize,
}

/// A refused setting: the schema's message.
fn invalid(err: SettingsError) -> Error {
    Error::invalid(err.to_string())
}

/// Sets `key` to `text` on `settings`.
fn set_text(settings: &mut impl Schema, key: &str, text: &str) -> Result<(), Error> {
    settings.set(key, text).map_err(invalid)
}

/// Sets a key to a C string.
fn set_arg(settings: &mut impl Schema, key: &str, value: *const c_char, what: &str) -> Result<(), Error> {
    set_text(settings, key, arg_str(value, what)?)
}

/// Sets every entry of a TOML table.
fn set_toml(settings: &mut impl Schema, text: &str) -> Result<(), Error> {
    let map: SettingsMap =
        toml::from_str(text).map_err(|e| Error::invalid(format!("not a TOML table of settings: {e}")))?;
    settings.merge(map).map_err(invalid)
}

/// Sets keepalive and idle timeout from milliseconds (0 keeps one as it is).
fn set_liveness(settings: &mut impl Schema, keepalive_ms: u64, idle_timeout_ms: u64) -> Result<(), Error> {
    if keepalive_ms == 0 && idle_timeout_ms == 0 {
        return Err(Error::invalid(
            "give a keepalive interval, an idle timeout, or both (0 keeps one as it is)",
        ));
    }
    if keepalive_ms > 0 {
        set_text(settings, "keepalive", &format!("{keepalive_ms}ms"))?;
    }
    if idle_timeout_ms > 0 {
        set_text(settings, "idle-timeout", &format!("{idle_timeout_ms}ms"))?;
    }
    Ok(())
}

/// A duration in milliseconds as a setting's text, 0 meaning `off`.
fn optional_ms(ms: u64) -> String {
    if ms == 0 { "off".into() } else { format!("{ms}ms") }
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

/// What the server and agent config handles have in common: a registry, and
/// a state edited under a lock by the `connector_*_config_*` calls.
pub(crate) trait Config: Sized + 'static {
    /// The settings and what is not a setting.
    type State: Clone + Default;
    /// The live handles of this kind.
    fn registry() -> &'static Registry<Self>;
    /// A config holding `state`.
    fn holding(state: Self::State) -> Self;
    /// The state, under its lock.
    fn state(&self) -> &Mutex<Self::State>;

    /// A copy of the state, to start a server or agent from.
    fn snapshot(&self) -> Self::State {
        lock(self.state()).clone()
    }
}

/// Implements [`Config`] for a config handle: its state type and registry.
macro_rules! config_handle {
    ($handle:ty, $state:ty, $registry:expr) => {
        impl Config for $handle {
            type State = $state;
            fn registry() -> &'static Registry<Self> {
                &$registry
            }
            fn holding(state: $state) -> Self {
                Self {
                    state: Mutex::new(state),
                }
            }
            fn state(&self) -> &Mutex<$state> {
                &self.state
            }
        }
    };
}

config_handle!(connector_server_config, ServerState, SERVER_CONFIGS);
config_handle!(connector_agent_config, AgentState, AGENT_CONFIGS);

/// Creates a config with the default state in `*out`.
fn new_config<C: Config>(out: *mut *mut C, error: *mut *mut c_char) -> connector_result {
    guard(error, || {
        C::registry().insert_out(out, || Ok(C::holding(C::State::default())))
    })
}

/// Runs one edit of a config's state.
fn edit<C: Config>(
    config: *const C,
    error: *mut *mut c_char,
    change: impl FnOnce(&mut C::State) -> Result<(), Error>,
) -> connector_result {
    guard(error, || {
        let config = C::registry().get(config)?;
        let mut state = lock(config.state());
        change(&mut state)
    })
}

/// Adds values (separated by commas) to a list setting from a C string.
fn push_arg(settings: &mut impl Schema, key: &str, value: *const c_char, what: &str) -> Result<(), Error> {
    settings.push(key, arg_str(value, what)?).map_err(invalid)
}

/// A certificate chain and key from PEM buffers.
fn identity_from_pem(
    chain_pem: *const u8,
    chain_len: usize,
    key_pem: *const u8,
    key_len: usize,
) -> Result<Identity, Error> {
    Identity::from_pem(
        arg_bytes(chain_pem, chain_len, "chain_pem")?,
        arg_bytes(key_pem, key_len, "key_pem")?,
    )
    .map_err(|e| Error::invalid(e.to_string()))
}

/// CA certificates from a PEM buffer; `name` names them in errors.
fn cas_from_pem(pem: *const u8, len: usize, name: &str) -> Result<CaBundle, Error> {
    CaBundle::from_pem(arg_bytes(pem, len, "pem")?, name).map_err(|e| Error::invalid(e.to_string()))
}

/// CA certificates from a PEM file (followed when it changes).
fn cas_from_file(path: *const c_char) -> Result<CaBundle, Error> {
    CaBundle::from_file(arg_str(path, "path")?).map_err(|e| Error::invalid(e.to_string()))
}

/// A bearer token argument, which must not be empty.
fn token_arg<'a>(token: *const u8, len: usize, what: &str) -> Result<&'a [u8], Error> {
    let token = arg_bytes(token, len, what)?;
    if token.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    Ok(token)
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
    new_config(out, error)
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

/// Sets one setting by name, as the `connector server` flag of that name
/// (without `--`) or its `[server]` TOML key takes it: `key` such as
/// `"max-agents"` (or `"max_agents"`), `value` its text such as `"5000"`,
/// `"30s"`, `"off"`; a list (`"proxy-strategies"`) takes its values
/// separated by commas. docs/settings.md lists every key.
///
/// # Safety
/// `key` and `value` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set(
    config: *const connector_server_config,
    key: *const c_char,
    value: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit(config, error, |s| {
        set_arg(&mut s.settings, arg_str(key, "key")?, value, "value")
    })
}

/// Adds values (separated by commas) to a list setting (`"proxy-strategies"`).
///
/// # Safety
/// `key` and `value` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_add(
    config: *const connector_server_config,
    key: *const c_char,
    value: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit(config, error, |s| {
        push_arg(&mut s.settings, arg_str(key, "key")?, value, "value")
    })
}

/// Sets every setting of a TOML table (the `[server]` section of a
/// `connector server --config` file, without its header), e.g.
/// `"max-agents = 5000\nhello-timeout = \"5s\""`. Settings it does not name keep
/// their values; an unknown key is refused (and the settings before it stay set).
///
/// # Safety
/// `toml` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_server_config_set_toml(
    config: *const connector_server_config,
    toml: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit(config, error, |s| set_toml(&mut s.settings, arg_str(toml, "toml")?))
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
    edit(config, error, |s| set_arg(&mut s.settings, "listen", listen, "listen"))
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
    edit(config, error, |s| {
        s.identity = Some(identity_from_pem(chain_pem, chain_len, key_pem, key_len)?);
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
    edit(config, error, |s| {
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
    edit(config, error, |s| {
        s.client_cas.extend(cas_from_pem(pem, len, "client CA PEM")?);
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
    edit(config, error, |s| {
        s.client_cas.extend(cas_from_file(path)?);
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
    edit(config, error, |s| {
        let token = token_arg(token, token_len, "token")?;
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
    edit(config, error, |s| set_arg(&mut s.settings, "tokens", path, "path"))
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
    edit(config, error, |s| {
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
    edit(config, error, |s| {
        if limits.is_null() {
            return Err(Error::invalid("limits is null"));
        }
        // SAFETY: non-null and readable per the contract.
        let l = unsafe { *limits };
        let numbers = [
            ("max-agents", l.max_agents),
            ("max-streams-per-agent", u64::from(l.max_streams_per_agent)),
            ("max-pending-dials", l.max_pending_dials),
        ];
        let durations = [
            ("hello-timeout", l.hello_timeout_ms),
            ("dial-timeout", l.dial_timeout_ms),
        ];
        let mut settings = s.settings.clone();
        for (key, n) in numbers.into_iter().filter(|(_, n)| *n > 0) {
            set_text(&mut settings, key, &n.to_string())?;
        }
        for (key, ms) in durations.into_iter().filter(|(_, ms)| *ms > 0) {
            set_text(&mut settings, key, &format!("{ms}ms"))?;
        }
        s.settings = settings;
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
    edit(config, error, |s| {
        set_arg(&mut s.settings, "server-id", server_id, "server_id")
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
    edit(config, error, |s| {
        set_arg(&mut s.settings, "proxy-strategies", strategies, "strategies")
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
    edit(config, error, |s| {
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
    edit(config, error, |s| {
        set_text(&mut s.settings, "server-count", &count.to_string())
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
    edit(config, error, |s| {
        set_arg(&mut s.settings, "tcp-listen", listen, "listen")
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
    edit(config, error, |s| {
        set_liveness(&mut s.settings, keepalive_ms, idle_timeout_ms)
    })
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
    new_config(out, error)
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

/// Sets one setting by name, as the `connector agent` flag of that name
/// (without `--`) or its `[agent]` TOML key takes it: `key` such as
/// `"max-connections"`, `value` its text such as `"500"`, `"3m"`, `"off"`;
/// a list (`"server"`, `"allow"`) takes its values separated by commas and
/// replaces what was set (see [`connector_agent_config_add`]).
/// docs/settings.md lists every key.
///
/// # Safety
/// `key` and `value` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set(
    config: *const connector_agent_config,
    key: *const c_char,
    value: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit(config, error, |s| {
        set_arg(&mut s.settings, arg_str(key, "key")?, value, "value")
    })
}

/// Adds values (separated by commas) to a list setting such as `"allow"` or `"server"`.
///
/// # Safety
/// `key` and `value` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_add(
    config: *const connector_agent_config,
    key: *const c_char,
    value: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit(config, error, |s| {
        push_arg(&mut s.settings, arg_str(key, "key")?, value, "value")
    })
}

/// Sets every setting of a TOML table (the `[agent]` section of a
/// `connector agent --config` file, without its header); see
/// [`connector_server_config_set_toml`].
///
/// # Safety
/// `toml` NUL-terminated; `error` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connector_agent_config_set_toml(
    config: *const connector_agent_config,
    toml: *const c_char,
    error: *mut *mut c_char,
) -> connector_result {
    edit(config, error, |s| set_toml(&mut s.settings, arg_str(toml, "toml")?))
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
    edit(config, error, |s| set_arg(&mut s.settings, "server", server, "server"))
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
    edit(config, error, |s| push_arg(&mut s.settings, "server", server, "server"))
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
    edit(config, error, |s| set_arg(&mut s.settings, "server-name", name, "name"))
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
    edit(config, error, |s| {
        s.server_cas.extend(cas_from_pem(pem, len, "server CA PEM")?);
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
    edit(config, error, |s| {
        s.server_cas.extend(cas_from_file(path)?);
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
    edit(config, error, |s| {
        set_arg(&mut s.settings, "agent-id", agent_id, "agent_id")
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
    edit(config, error, |s| {
        let token = token_arg(token, len, "token")?;
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
    edit(config, error, |s| set_arg(&mut s.settings, "token-file", path, "path"))
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
    edit(config, error, |s| {
        s.client_identity = Some(identity_from_pem(chain_pem, chain_len, key_pem, key_len)?);
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
    edit(config, error, |s| {
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
    edit(config, error, |s| {
        set_arg(&mut s.settings, "identifiers", identifiers, "identifiers")
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
    edit(config, error, |s| push_arg(&mut s.settings, "allow", rule, "rule"))
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
    edit(config, error, |s| {
        set_text(&mut s.settings, "max-connections", &max.to_string())
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
    edit(config, error, |s| {
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
    edit(config, error, |s| {
        set_text(&mut s.settings, "tunnel-idle-timeout", &optional_ms(timeout_ms))
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
    edit(config, error, |s| {
        set_text(&mut s.settings, "tunnel-stall-timeout", &optional_ms(timeout_ms))
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
    edit(config, error, |s| {
        set_liveness(&mut s.settings, keepalive_ms, idle_timeout_ms)
    })
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
    edit(config, error, |s| {
        set_arg(&mut s.settings, "transport", transport, "transport")
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
    edit(config, error, |s| {
        set_arg(&mut s.settings, "tcp-server", server, "tcp_server")
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::ptr;

    use super::*;
    use crate::error::connector_string_free;

    fn c(text: &str) -> CString {
        CString::new(text).unwrap()
    }

    /// The result and, on failure, the message.
    fn call(f: impl FnOnce(*mut *mut c_char) -> connector_result) -> Result<(), String> {
        let mut error = ptr::null_mut();
        match f(&mut error) {
            connector_result::CONNECTOR_OK => Ok(()),
            _ => {
                // SAFETY: an error message the library allocated.
                let message = unsafe { std::ffi::CStr::from_ptr(error) }
                    .to_string_lossy()
                    .into_owned();
                unsafe { connector_string_free(error) };
                Err(message)
            }
        }
    }

    fn new_server() -> *mut connector_server_config {
        let mut config = ptr::null_mut();
        call(|e| unsafe { connector_server_config_new(&mut config, e) }).unwrap();
        config
    }

    fn new_agent() -> *mut connector_agent_config {
        let mut config = ptr::null_mut();
        call(|e| unsafe { connector_agent_config_new(&mut config, e) }).unwrap();
        config
    }

    /// Every setting of the schema is reachable from C by its name, through
    /// the generic setter and a TOML table.
    #[test]
    fn every_setting_is_reachable_by_name() {
        let config = new_server();
        for field in ServerSettings::FIELDS {
            let (key, value) = (c(&field.name()), c(&field.sample::<ServerSettings>()));
            call(|e| unsafe { connector_server_config_set(config, key.as_ptr(), value.as_ptr(), e) })
                .unwrap_or_else(|err| panic!("{}: {err}", field.name()));
            let toml = c(&format!("{} = {:?}", field.name(), field.sample::<ServerSettings>()));
            call(|e| unsafe { connector_server_config_set_toml(config, toml.as_ptr(), e) })
                .unwrap_or_else(|err| panic!("{}: {err}", field.name()));
        }
        call(|e| unsafe { connector_server_config_free(config, e) }).unwrap();
        let config = new_agent();
        for field in AgentSettings::FIELDS {
            let (key, value) = (c(&field.name()), c(&field.sample::<AgentSettings>()));
            call(|e| unsafe { connector_agent_config_set(config, key.as_ptr(), value.as_ptr(), e) })
                .unwrap_or_else(|err| panic!("{}: {err}", field.name()));
            let toml = c(&format!("{} = {:?}", field.name(), field.sample::<AgentSettings>()));
            call(|e| unsafe { connector_agent_config_set_toml(config, toml.as_ptr(), e) })
                .unwrap_or_else(|err| panic!("{}: {err}", field.name()));
        }
        call(|e| unsafe { connector_agent_config_free(config, e) }).unwrap();
    }

    #[test]
    fn the_typed_setters_and_the_generic_path_set_the_same_settings() {
        let config = new_agent();
        let (key, value) = (c("max-connections"), c("500"));
        call(|e| unsafe { connector_agent_config_set(config, key.as_ptr(), value.as_ptr(), e) }).unwrap();
        call(|e| unsafe { connector_agent_config_set_tunnel_stall_timeout(config, 0, e) }).unwrap();
        let rule = c("10.0.0.0/8");
        call(|e| unsafe { connector_agent_config_add_allow_rule(config, rule.as_ptr(), e) }).unwrap();
        let (key, value) = (c("allow"), c("192.168.0.0/16"));
        call(|e| unsafe { connector_agent_config_add(config, key.as_ptr(), value.as_ptr(), e) }).unwrap();
        let state = AGENT_CONFIGS.get(config).unwrap().snapshot();
        assert_eq!(state.settings.max_connections, 500);
        assert_eq!(state.settings.tunnel_stall_timeout, None);
        assert_eq!(state.settings.allow.len(), 2);

        // The schema's message comes back; a refused value changes nothing.
        let err = call(|e| unsafe { connector_agent_config_set_max_connections(config, 0, e) }).unwrap_err();
        assert!(
            err.contains("max-connections") && err.contains("from 1 to 1000000"),
            "{err}"
        );
        let (key, value) = (c("max-conections"), c("5"));
        let err = call(|e| unsafe { connector_agent_config_set(config, key.as_ptr(), value.as_ptr(), e) }).unwrap_err();
        assert!(err.contains("unknown setting"), "{err}");
        let toml = c("keepalive = \"2s\"\nbogus = 1\n");
        let err = call(|e| unsafe { connector_agent_config_set_toml(config, toml.as_ptr(), e) }).unwrap_err();
        assert!(err.contains("unknown setting \"bogus\""), "{err}");
        assert_eq!(
            AGENT_CONFIGS.get(config).unwrap().snapshot().settings.max_connections,
            500
        );
        call(|e| unsafe { connector_agent_config_free(config, e) }).unwrap();

        let config = new_server();
        let limits = connector_limits {
            max_agents: 7,
            max_streams_per_agent: 0,
            hello_timeout_ms: 1500,
            dial_timeout_ms: 0,
            max_pending_dials: 3,
        };
        call(|e| unsafe { connector_server_config_set_limits(config, &limits, e) }).unwrap();
        let settings = SERVER_CONFIGS.get(config).unwrap().snapshot().settings;
        assert_eq!(settings.max_agents, 7);
        assert_eq!(settings.max_streams_per_agent, 10_000);
        assert_eq!(settings.hello_timeout, std::time::Duration::from_millis(1500));
        assert_eq!(settings.max_pending_dials, 3);
        call(|e| unsafe { connector_server_config_free(config, e) }).unwrap();
    }
}
