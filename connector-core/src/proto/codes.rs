//! Numeric codes carried on the wire: dial outcomes, rejection reasons, and
//! the application error codes used when a stream or connection is reset.

use std::fmt;

macro_rules! wire_code {
    (
        $(#[$meta:meta])* $name:ident: $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal, $label:literal => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A code this version does not know (sent by a newer peer).
            Other($repr),
        }

        impl $name {
            /// The value on the wire.
            pub fn to_wire(self) -> $repr {
                match self {
                    $( Self::$variant => $value, )*
                    Self::Other(v) => v,
                }
            }
            /// The code for a wire value; unknown values become [`Self::Other`].
            pub fn from_wire(v: $repr) -> Self {
                match v {
                    $( $value => Self::$variant, )*
                    other => Self::Other(other),
                }
            }
            /// A short `snake_case` name, for metric labels and logs.
            pub fn label(self) -> &'static str {
                match self {
                    $( Self::$variant => $label, )*
                    Self::Other(_) => "other",
                }
            }
            /// A short human-readable description.
            pub fn describe(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )*
                    Self::Other(_) => "unknown code",
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    Self::Other(v) => write!(f, "unknown code {v}"),
                    known => f.write_str(known.describe()),
                }
            }
        }
    };
}

wire_code! {
    /// Outcome of a `Dial`, carried in `DialResult`.
    DialCode: u8 {
        /// The agent connected to the target; raw bytes follow.
        Ok = 0, "ok" => "connected",
        /// The target actively refused the connection (TCP RST).
        Refused = 1, "refused" => "connection refused by the target",
        /// No route to the target's network or host.
        Unreachable = 2, "unreachable" => "target unreachable",
        /// The connection attempt did not finish before the dial's deadline.
        TimedOut = 3, "timed_out" => "dial timed out",
        /// The target's host name did not resolve on the agent's side.
        DnsFailure = 4, "dns_failure" => "host name did not resolve",
        /// The agent's destination policy forbids this target.
        DeniedByPolicy = 5, "denied_by_policy" => "denied by the agent's destination policy",
        /// The agent has reached its limit of tunnelled connections.
        Overloaded = 6, "overloaded" => "agent overloaded",
        /// The target is not a valid `host:port`.
        InvalidTarget = 7, "invalid_target" => "invalid target",
        /// Any other failure on the agent's side.
        Internal = 8, "internal" => "agent internal error",
    }
}

wire_code! {
    /// Why a server refused an agent, carried in `Reject`.
    RejectCode: u16 {
        /// The agent speaks a major protocol version the server does not.
        UnsupportedVersion = 1, "unsupported_version" => "unsupported protocol version",
        /// The credential is missing, wrong or expired.
        Unauthenticated = 2, "unauthenticated" => "authentication failed",
        /// The agent claims identifiers its identity does not allow.
        IdentifiersNotAllowed = 3, "identifiers_not_allowed" => "identifiers not allowed for this identity",
        /// The `Hello` could not be decoded.
        Malformed = 4, "malformed" => "malformed hello",
        /// The server has reached its limit of agents.
        Overloaded = 5, "overloaded" => "server overloaded",
        /// The server is shutting down.
        ShuttingDown = 6, "shutting_down" => "server shutting down",
        /// Any other failure on the server's side.
        Internal = 7, "internal" => "server internal error",
        /// Since 1.1: the agent already holds a session with this server
        /// replica (it is listed in the `Hello`'s connected servers); the
        /// agent keeps looking for the replicas it lacks.
        AlreadyConnected = 8, "already_connected" => "agent already connected to this server",
    }
}

wire_code! {
    /// Application error code used to reset or stop a data stream.
    StreamCode: u32 {
        /// Orderly end; never sent as a reset.
        NoError = 0, "no_error" => "no error",
        /// The peer sent bytes that are not a valid frame where one was expected.
        ProtocolError = 1, "protocol_error" => "protocol error",
        /// The TCP connection at the far end was reset or failed.
        TargetReset = 2, "target_reset" => "target connection reset",
        /// The dialer gave up (deadline passed or the stream was dropped).
        Cancelled = 3, "cancelled" => "cancelled",
        /// An internal error ended the stream.
        Internal = 4, "internal" => "internal error",
        /// No byte went either way for the agent's tunnelled-connection idle timeout.
        IdleTimeout = 5, "idle_timeout" => "tunnelled connection idle for too long",
        /// Since 1.2: one side read none of the bytes waiting for it for the
        /// agent's stall timeout (a client or target that stopped reading).
        Stalled = 6, "stalled" => "tunnelled connection stalled: a side stopped reading",
    }
}

wire_code! {
    /// Application error code used to close a whole agent connection.
    ConnectionCode: u32 {
        /// Orderly close.
        Normal = 0, "normal" => "closed",
        /// The peer violated the protocol on the control stream.
        ProtocolError = 1, "protocol_error" => "protocol error",
        /// The server rejected the agent (a `Reject` frame, or without one
        /// the close reason, says why).
        Rejected = 2, "rejected" => "agent rejected",
        /// A newer connection of the same agent replaced this one.
        Replaced = 3, "replaced" => "replaced by a newer connection of the same agent",
        /// The endpoint is shutting down.
        Shutdown = 4, "shutdown" => "shutting down",
        /// Since 1.1: the agent moved to a new connection (another transport,
        /// or the server asked it to) and drained this one.
        Superseded = 5, "superseded" => "moved to a newer connection",
        /// Since 1.1: the agent is being drained (its node shuts down).
        Draining = 6, "draining" => "agent draining",
    }
}
