//! The messages of the protocol and their payload encodings.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::wire::{Reader, Writer};
use super::{ConnectionCode, DecodeError, DialCode, EncodeError, PROTOCOL_MAJOR, RejectCode};
use crate::identifiers::{Identifiers, valid_host};

/// Longest agent or server id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// A secret byte string (a bearer token). Its `Debug` output is redacted,
/// equality is checked in constant time, and its bytes are overwritten with
/// zeros when it is dropped (each clone's own copy too).
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(bytes.into()))
    }
    /// The secret bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// The bytes are zeroed on drop (by the `Zeroizing` inside).
impl zeroize::ZeroizeOnDrop for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for Secret {}

/// What an agent presents to prove who it is, beside its TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Credential {
    /// Nothing beyond the TLS client certificate (if any).
    #[default]
    None,
    /// A bearer token.
    Bearer(Secret),
}

/// Agent → server: the first frame on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol major version of the agent.
    pub version_major: u16,
    /// Protocol minor version of the agent.
    pub version_minor: u16,
    /// The agent's self-chosen id (for example its node name), 1..=128 bytes.
    pub agent_id: String,
    /// What the agent offers to serve.
    pub identifiers: Identifiers,
    /// The agent's credential.
    pub credential: Credential,
    /// Since 1.1: ids of the server replicas this agent already holds a
    /// session with and does not mean to replace. A server whose id is listed
    /// answers `Reject(AlreadyConnected)` without touching its registry, so an
    /// agent behind a load balancer can look for the replicas it still lacks.
    pub connected_servers: Vec<String>,
}

/// Most identifiers in one [`Hello`] (hosts, addresses and networks
/// together, including kinds this version skips). Without it a 64 KiB frame
/// of one-byte host names would decode into some 16,000 strings.
pub const MAX_IDENTIFIERS: usize = 1_024;

/// Most entries in [`Hello::connected_servers`].
pub const MAX_CONNECTED_SERVERS: usize = 64;

/// Server → agent: the agent is registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Stable id of this server replica.
    pub server_id: String,
    /// How many server replicas the agent should connect to (0 = unknown).
    pub server_count: u16,
    /// Keepalive interval the server uses, in milliseconds.
    pub keepalive_ms: u32,
    /// Idle timeout after which a silent connection is dead, in milliseconds.
    pub idle_timeout_ms: u32,
    /// Most tunnelled connections the server will open to this agent at once.
    pub max_streams: u32,
    /// Largest frame payload the server accepts, in bytes.
    pub max_frame: u32,
}

/// Server → agent: the agent is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Why, as a code.
    pub code: RejectCode,
    /// Why, for a person.
    pub reason: String,
}

/// Either side, on the control stream (since 1.1): the sender routes no new
/// tunnelled connections over this connection. Open ones may finish within
/// `grace_ms`; then the sender closes the connection. A server sends it when
/// it shuts down (the agent connects elsewhere and keeps serving what is
/// open); an agent sends it when it is drained or moves to a new connection
/// (the server stops choosing it for dials at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// Why, as a connection code (`Shutdown`, `Superseded`, ...).
    pub code: ConnectionCode,
    /// How long the sender lets open tunnelled connections run, in milliseconds.
    pub grace_ms: u32,
    /// Why, for a person.
    pub reason: String,
}

/// Server → agent: the first frame of a data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// Server-chosen id that ties log lines of both sides together.
    pub request_id: u64,
    /// Host name or IP address literal, resolved on the agent's side.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Time left until the dialer gives up, in milliseconds (relative, since
    /// the peers' clocks are not synchronised).
    pub timeout_ms: u32,
}

/// Agent → server: how a `Dial` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialResult {
    /// The `Dial`'s request id.
    pub request_id: u64,
    /// Outcome.
    pub code: DialCode,
    /// Details for a person (empty on success).
    pub message: String,
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        return Err(EncodeError::FieldTooLong { field, len, max });
    }
    Ok(())
}

fn put_str(w: &mut Writer, field: &'static str, v: &str, max: usize) -> Result<(), EncodeError> {
    check_len(field, v.len(), max)?;
    w.str(v);
    Ok(())
}

fn get_id(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    let id = r.str(field)?;
    // Printable only: ids go into log lines and metric labels as they are.
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(super::is_printable) {
        return Err(DecodeError::InvalidValue {
            field,
            reason: "must be 1..=128 printable bytes",
        });
    }
    Ok(id)
}

/// Identifier item kinds inside a `Hello`.
mod ident {
    pub const HOST: u8 = 1;
    pub const IPV4: u8 = 2;
    pub const IPV6: u8 = 3;
    pub const CIDR: u8 = 4;
}

const FLAG_DEFAULT_ROUTE: u8 = 0x01;
const CRED_NONE: u8 = 0;
const CRED_BEARER: u8 = 1;

impl Hello {
    /// A `Hello` at this build's protocol version.
    pub fn new(agent_id: impl Into<String>, identifiers: Identifiers, credential: Credential) -> Self {
        Self {
            version_major: PROTOCOL_MAJOR,
            version_minor: super::PROTOCOL_MINOR,
            agent_id: agent_id.into(),
            identifiers,
            credential,
            connected_servers: Vec::new(),
        }
    }

    pub(super) fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u16(self.version_major);
        w.u16(self.version_minor);
        put_str(w, "agent id", &self.agent_id, MAX_ID_LEN)?;
        encode_identifiers(w, &self.identifiers)?;
        encode_credential(w, &self.credential)?;
        check_len("connected servers", self.connected_servers.len(), MAX_CONNECTED_SERVERS)?;
        w.u16(self.connected_servers.len() as u16);
        for server in &self.connected_servers {
            put_str(w, "connected server id", server, MAX_ID_LEN)?;
        }
        Ok(())
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version_major = r.u16("version")?;
        let version_minor = r.u16("version")?;
        if version_major != PROTOCOL_MAJOR {
            return Err(DecodeError::UnsupportedVersion {
                major: version_major,
                minor: version_minor,
            });
        }
        let agent_id = get_id(r, "agent id")?;
        let identifiers = decode_identifiers(r)?;
        let credential = decode_credential(r)?;
        // Appended in 1.1; a 1.0 Hello ends here.
        let connected_servers = if r.is_empty() {
            Vec::new()
        } else {
            decode_connected_servers(r)?
        };
        Ok(Self {
            version_major,
            version_minor,
            agent_id,
            identifiers,
            credential,
            connected_servers,
        })
    }
}

/// A `Hello`'s identifiers: a count, each as kind and value, then the flags byte.
fn encode_identifiers(w: &mut Writer, ids: &Identifiers) -> Result<(), EncodeError> {
    let count = ids.hosts.len() + ids.addresses.len() + ids.cidrs.len();
    check_len("identifiers", count, MAX_IDENTIFIERS)?;
    w.u16(count as u16);
    for host in &ids.hosts {
        w.u8(ident::HOST);
        put_str(w, "host identifier", host, crate::identifiers::MAX_HOST_LEN)?;
    }
    for addr in &ids.addresses {
        match addr {
            IpAddr::V4(v4) => {
                w.u8(ident::IPV4);
                w.bytes(&v4.octets());
            }
            IpAddr::V6(v6) => {
                w.u8(ident::IPV6);
                w.bytes(&v6.octets());
            }
        }
    }
    for net in &ids.cidrs {
        w.u8(ident::CIDR);
        let mut v = match net.addr() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        v.push(net.prefix_len());
        w.bytes(&v);
    }
    w.u8(if ids.default_route { FLAG_DEFAULT_ROUTE } else { 0 });
    Ok(())
}

fn decode_identifiers(r: &mut Reader<'_>) -> Result<Identifiers, DecodeError> {
    let mut identifiers = Identifiers::default();
    let count = r.u16("identifier count")?;
    if usize::from(count) > MAX_IDENTIFIERS {
        return Err(DecodeError::InvalidValue {
            field: "identifier count",
            reason: "more than 1,024 identifiers",
        });
    }
    for _ in 0..count {
        let kind = r.u8("identifier kind")?;
        let value = r.bytes("identifier value")?;
        decode_identifier(kind, value, &mut identifiers)?;
    }
    identifiers.default_route = r.u8("flags")? & FLAG_DEFAULT_ROUTE != 0;
    Ok(identifiers)
}

/// Adds the identifier of `kind` encoded in `value` to `identifiers`; kinds
/// from newer minor versions are skipped.
fn decode_identifier(kind: u8, value: &[u8], identifiers: &mut Identifiers) -> Result<(), DecodeError> {
    let bad = |reason| DecodeError::InvalidValue {
        field: "identifier",
        reason,
    };
    match kind {
        ident::HOST => {
            let host = std::str::from_utf8(value).map_err(|_| DecodeError::InvalidUtf8 {
                field: "host identifier",
            })?;
            if !valid_host(host) {
                return Err(bad("host is not a valid DNS name"));
            }
            identifiers.hosts.push(crate::identifiers::normalize_host(host));
        }
        ident::IPV4 => {
            let octets: [u8; 4] = value.try_into().map_err(|_| bad("IPv4 address must be 4 bytes"))?;
            identifiers.addresses.push(Ipv4Addr::from(octets).into());
        }
        ident::IPV6 => {
            let octets: [u8; 16] = value.try_into().map_err(|_| bad("IPv6 address must be 16 bytes"))?;
            identifiers.addresses.push(Ipv6Addr::from(octets).into());
        }
        ident::CIDR => {
            let (addr, prefix): (IpAddr, u8) = match value {
                [a, b, c, d, p] => (Ipv4Addr::new(*a, *b, *c, *d).into(), *p),
                [rest @ .., p] if rest.len() == 16 => {
                    let octets: [u8; 16] = rest.try_into().map_err(|_| bad("bad CIDR"))?;
                    (Ipv6Addr::from(octets).into(), *p)
                }
                _ => return Err(bad("CIDR must be 5 or 17 bytes")),
            };
            let net = IpNet::new(addr, prefix).map_err(|_| bad("CIDR prefix too long"))?;
            identifiers.cidrs.push(net.trunc());
        }
        _ => {}
    }
    Ok(())
}

fn encode_credential(w: &mut Writer, credential: &Credential) -> Result<(), EncodeError> {
    match credential {
        Credential::None => {
            w.u8(CRED_NONE);
            w.bytes(&[]);
        }
        Credential::Bearer(token) => {
            w.u8(CRED_BEARER);
            check_len("bearer token", token.expose().len(), u16::MAX as usize)?;
            w.bytes(token.expose());
        }
    }
    Ok(())
}

fn decode_credential(r: &mut Reader<'_>) -> Result<Credential, DecodeError> {
    let kind = r.u8("credential kind")?;
    let value = r.bytes("credential")?;
    match kind {
        CRED_NONE => Ok(Credential::None),
        CRED_BEARER => Ok(Credential::Bearer(Secret::new(value))),
        _ => Err(DecodeError::InvalidValue {
            field: "credential kind",
            reason: "unknown kind",
        }),
    }
}

fn decode_connected_servers(r: &mut Reader<'_>) -> Result<Vec<String>, DecodeError> {
    let count = r.u16("connected server count")? as usize;
    if count > MAX_CONNECTED_SERVERS {
        return Err(DecodeError::InvalidValue {
            field: "connected servers",
            reason: "more than 64 entries",
        });
    }
    (0..count).map(|_| get_id(r, "connected server id")).collect()
}

impl Welcome {
    pub(super) fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        put_str(w, "server id", &self.server_id, MAX_ID_LEN)?;
        w.u16(self.server_count);
        w.u32(self.keepalive_ms);
        w.u32(self.idle_timeout_ms);
        w.u32(self.max_streams);
        w.u32(self.max_frame);
        Ok(())
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            server_id: get_id(r, "server id")?,
            server_count: r.u16("server count")?,
            keepalive_ms: r.u32("keepalive")?,
            idle_timeout_ms: r.u32("idle timeout")?,
            max_streams: r.u32("max streams")?,
            max_frame: r.u32("max frame")?,
        })
    }
}

/// Longest reason or message text, in bytes.
pub const MAX_TEXT_LEN: usize = 1024;

/// Shortens `text` to at most [`MAX_TEXT_LEN`] bytes on a character boundary.
pub fn clip_text(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

impl Reject {
    pub(super) fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u16(self.code.to_wire());
        put_str(w, "reason", &self.reason, MAX_TEXT_LEN)
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            code: RejectCode::from_wire(r.u16("reject code")?),
            reason: clip_text(&r.str("reason")?),
        })
    }
}

impl GoAway {
    pub(super) fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u32(self.code.to_wire());
        w.u32(self.grace_ms);
        put_str(w, "reason", &self.reason, MAX_TEXT_LEN)
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            code: ConnectionCode::from_wire(r.u32("go-away code")?),
            grace_ms: r.u32("grace")?,
            reason: clip_text(&r.str("reason")?),
        })
    }
}

impl Dial {
    pub(super) fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u64(self.request_id);
        put_str(w, "host", &self.host, crate::identifiers::MAX_HOST_LEN)?;
        w.u16(self.port);
        w.u32(self.timeout_ms);
        Ok(())
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let request_id = r.u64("request id")?;
        let host = r.str("host")?;
        let is_ip = host.parse::<IpAddr>().is_ok();
        if !is_ip && !valid_host(&host) {
            return Err(DecodeError::InvalidValue {
                field: "host",
                reason: "neither an IP address nor a DNS name",
            });
        }
        Ok(Self {
            request_id,
            host,
            port: r.u16("port")?,
            timeout_ms: r.u32("timeout")?,
        })
    }
}

impl DialResult {
    pub(super) fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u64(self.request_id);
        w.u8(self.code.to_wire());
        put_str(w, "message", &self.message, MAX_TEXT_LEN)
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            request_id: r.u64("request id")?,
            code: DialCode::from_wire(r.u8("dial code")?),
            message: clip_text(&r.str("message")?),
        })
    }
}
