//! Which destinations an agent will connect to on the server's behalf.
//!
//! A policy is an allow-list of rules, each a network (`10.0.0.0/8`, a single
//! address) or a host-name pattern (`node-a`, `*.svc.cluster.local`), with an
//! optional port or port range (`:10250`, `:8000-8999`). The decision is
//! made on the addresses a name resolves to, so a permitted name that
//! resolves to a forbidden address is still refused.
//!
//! **Default** (no rules): every destination except the *guarded* ranges —
//! the agent's own loopback (`127.0.0.0/8`, `::1`), unspecified addresses
//! (`0.0.0.0/8`, `::`), link-local addresses (`169.254.0.0/16`, `fe80::/10`),
//! where cloud metadata and credential services live (AWS, GCP, Azure and
//! OpenStack instance metadata at `169.254.169.254`, ECS task credentials at
//! `169.254.170.2`, EKS Pod Identity at `169.254.170.23`), and the metadata
//! endpoints outside link-local: `fd00:ec2::254` and `fd00:ec2::23` (AWS IMDS
//! and EKS Pod Identity over IPv6), `100.100.100.200` (Alibaba Cloud) and
//! `168.63.129.16` (Azure's wireserver). A guarded address is reachable only
//! through a network rule that lies inside the guarded range (`--allow
//! 127.0.0.1/32`, `--allow 169.254.170.2:80`), never through a broad rule such
//! as `0.0.0.0/0` or a host-name rule.
//!
//! An IPv6 address that carries an IPv4 address is checked against the
//! guarded ranges as that IPv4 address: IPv4-mapped (`::ffff:127.0.0.1`),
//! IPv4-compatible (`::127.0.0.1`; not `::` and `::1`, which are IPv6's own),
//! NAT64 (`64:ff9b::7f00:1`, RFC 6052, and the local-use `64:ff9b:1::/48` of
//! RFC 8215 with the IPv4 address in its last 32 bits) and 6to4
//! (`2002:7f00:1::`, RFC 3056). A rule unlocks such an address when it lies
//! inside the guarded range and contains the embedded IPv4 address, in
//! either notation (`127.0.0.1/32` and `[64:ff9b::7f00:1/128]` both unlock
//! `64:ff9b::7f00:1`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};

use crate::identifiers::{canonical_ip, normalize_host, valid_host};

/// Address ranges denied unless a network rule inside them allows them.
const GUARDED: &[&str] = &[
    // The agent's own host.
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    // Link-local: instance metadata and credential services (169.254.169.254,
    // ECS 169.254.170.2, EKS Pod Identity 169.254.170.23, ...).
    "169.254.0.0/16",
    "fe80::/10",
    // Metadata endpoints elsewhere: AWS IMDS and EKS Pod Identity over IPv6,
    // Alibaba Cloud, Azure's wireserver.
    "fd00:ec2::254/128",
    "fd00:ec2::23/128",
    "100.100.100.200/32",
    "168.63.129.16/32",
];

fn guarded_ranges() -> impl Iterator<Item = IpNet> {
    GUARDED.iter().map(|n| n.parse().expect("constant network"))
}

/// The IPv4 address an IPv6 address carries, in the forms that reach it:
/// IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96` (but `::` and `::1`),
/// NAT64 `64:ff9b::/96` and `64:ff9b:1::/48` (last 32 bits), 6to4 `2002::/16`
/// (bits 16..48).
fn embedded_ipv4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = addr.segments();
    let last = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(last),
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(last),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last),
        [0x64, 0xff9b, 1, ..] => Some(last),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

/// The address the guarded ranges are checked against: the embedded IPv4
/// address of an IPv6 address that carries one, else the address itself.
fn guard_view(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => embedded_ipv4(v6).map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// A rule's network in the notation of [`guard_view`]: an IPv6 network
/// inside one of the forms that carry an IPv4 address, long enough to fix
/// that address's leading bits (from `/96` for the forms that carry it in
/// their last 32 bits, from `/16` for 6to4), becomes the IPv4 network it
/// carries: `[64:ff9b::7f00:1/128]` is `127.0.0.1/32`. Others stay as they are.
fn guard_view_net(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else { return net };
    let first = v6.network();
    let Some(v4) = embedded_ipv4(first) else { return net };
    let prefix = match (first.segments()[0], v6.prefix_len()) {
        (0x2002, p) if p >= 16 => (p - 16).min(32),
        (0x2002, _) => return net,
        (_, p) if p >= 96 => p - 96,
        _ => return net,
    };
    Ipv4Net::new(v4, prefix).map_or(net, |n| IpNet::V4(n.trunc()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    Network(IpNet),
    /// Exact name, or `*.suffix` (stored as `.suffix`) for any name below it.
    Name {
        pattern: String,
        wildcard: bool,
    },
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    destination: Destination,
    ports: RangeInclusive<u16>,
}

/// A rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid destination rule {rule:?}: {reason} (examples: 10.0.0.0/8, 10.0.0.5:10250, [fd00::/8]:443, *.svc.cluster.local:8000-8999)"
)]
pub struct RuleParseError {
    rule: String,
    reason: &'static str,
}

impl FromStr for Rule {
    type Err = RuleParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| RuleParseError {
            rule: s.to_owned(),
            reason,
        };
        let s = s.trim();
        // Split off a port spec: `[v6...]:ports`, or `x:ports` when x has no other colon.
        let (dest, ports) = if let Some(rest) = s.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| err("unbalanced brackets"))?;
            match after.strip_prefix(':') {
                Some(p) => (inner, Some(p)),
                None if after.is_empty() => (inner, None),
                None => return Err(err("unexpected text after ']'")),
            }
        } else if s.matches(':').count() == 1 {
            let (d, p) = s.split_once(':').expect("one colon");
            (d, Some(p))
        } else {
            (s, None)
        };
        let ports = match ports {
            None => 1..=u16::MAX,
            Some(p) => {
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                let lo: u16 = lo.parse().map_err(|_| err("bad port"))?;
                let hi: u16 = hi.parse().map_err(|_| err("bad port"))?;
                if lo == 0 || lo > hi {
                    return Err(err("empty port range"));
                }
                lo..=hi
            }
        };
        let destination = if let Ok(net) = dest.parse::<IpNet>() {
            Destination::Network(net.trunc())
        } else if let Ok(ip) = normalize_host(dest).parse::<IpAddr>() {
            // An address, possibly written with a trailing dot ("10.0.0.5.").
            Destination::Network(IpNet::from(ip))
        } else if let Some(suffix) = dest.strip_prefix("*.") {
            if !valid_host(suffix) || suffix.contains('*') {
                return Err(err("bad host-name pattern"));
            }
            Destination::Name {
                pattern: format!(".{}", normalize_host(suffix)),
                wildcard: true,
            }
        } else if valid_host(dest) && !dest.contains('*') {
            Destination::Name {
                pattern: normalize_host(dest),
                wildcard: false,
            }
        } else {
            return Err(err("not a network, address or host name"));
        };
        Ok(Rule { destination, ports })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.destination {
            Destination::Network(net) if net.addr().is_ipv6() => write!(f, "[{net}]")?,
            Destination::Network(net) => write!(f, "{net}")?,
            Destination::Name {
                pattern,
                wildcard: true,
            } => write!(f, "*{pattern}")?,
            Destination::Name { pattern, .. } => f.write_str(pattern)?,
        }
        if self.ports != (1..=u16::MAX) {
            write!(f, ":{}-{}", self.ports.start(), self.ports.end())?;
        }
        Ok(())
    }
}

impl Rule {
    fn matches_name(&self, name: &str, port: u16) -> bool {
        self.ports.contains(&port)
            && match &self.destination {
                Destination::Name {
                    pattern,
                    wildcard: false,
                } => *pattern == name,
                Destination::Name {
                    pattern,
                    wildcard: true,
                } => name.ends_with(pattern.as_str()),
                Destination::Network(_) => false,
            }
    }

    fn network(&self) -> Option<IpNet> {
        match self.destination {
            Destination::Network(net) => Some(net),
            Destination::Name { .. } => None,
        }
    }
}

/// The agent's destination allow-list (see the module docs for the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    rules: Vec<Rule>,
}

impl DestinationPolicy {
    /// A policy allowing exactly what `rules` allow (plus, with no rules,
    /// everything outside the guarded ranges).
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// Whether the agent may connect to `addr:port`, reached by the name
    /// `name` (None for an address literal). `Err` carries a reason for the
    /// dialer.
    pub fn check(&self, name: Option<&str>, addr: IpAddr, port: u16) -> Result<(), Denied> {
        let addr = canonical_ip(addr);
        let in_rule = |net: &IpNet| net.contains(&addr);
        let view = guard_view(addr);
        if let Some(guard) = guarded_ranges().find(|g| g.contains(&view)) {
            let unlocked = self.rules.iter().any(|r| {
                r.ports.contains(&port)
                    && r.network()
                        .map(guard_view_net)
                        .is_some_and(|n| guard.contains(&n) && n.contains(&view))
            });
            return if unlocked {
                Ok(())
            } else {
                Err(Denied::Guarded {
                    addr,
                    carried: (view != addr).then_some(view),
                    range: guard,
                })
            };
        }
        if self.rules.is_empty() {
            return Ok(());
        }
        let by_network = self
            .rules
            .iter()
            .any(|r| r.ports.contains(&port) && r.network().is_some_and(|n| in_rule(&n)));
        let by_name = name
            .map(normalize_host)
            .is_some_and(|n| self.rules.iter().any(|r| r.matches_name(&n, port)));
        if by_network || by_name {
            Ok(())
        } else {
            Err(Denied::NotAllowed {
                name: name.map(str::to_owned),
                addr,
                port,
            })
        }
    }
}

/// Why [`DestinationPolicy::check`] refused a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The address is in a guarded range and no rule inside that range allows it.
    #[error("{addr}{} is in the guarded range {range}; allow it explicitly with a rule inside {range}", carried.map(|v| format!(" (which carries {v})")).unwrap_or_default())]
    Guarded {
        /// The address asked for.
        addr: IpAddr,
        /// The IPv4 address it carries, when that is what is guarded.
        carried: Option<IpAddr>,
        /// The guarded range it falls in.
        range: IpNet,
    },
    /// No rule of the allow-list covers the destination.
    #[error("{} port {port} is not in the agent's allow-list", name.as_ref().map_or(addr.to_string(), |n| format!("{n} ({addr})")))]
    NotAllowed {
        /// The host name asked for, if the dial named one.
        name: Option<String>,
        /// The address it resolved to (or was given).
        addr: IpAddr,
        /// The port asked for.
        port: u16,
    },
}

impl fmt::Display for DestinationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.rules.is_empty() {
            return f.write_str("any destination outside the guarded ranges");
        }
        let rules: Vec<_> = self.rules.iter().map(Rule::to_string).collect();
        f.write_str(&rules.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[&str]) -> DestinationPolicy {
        DestinationPolicy::new(rules.iter().map(|r| r.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_rules() {
        for (text, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.0.0.5:10250", "10.0.0.5/32:10250-10250"),
            ("[fd00::/8]:443", "[fd00::/8]:443-443"),
            ("fd00::1", "[fd00::1/128]"),
            ("*.svc.cluster.local:8000-8999", "*.svc.cluster.local:8000-8999"),
            ("Node-A", "node-a"),
            // Found by the config_parsers fuzz target: an address with a
            // trailing dot was a name rule that printed as an address rule.
            ("0.1.51.5.", "0.1.51.5/32"),
        ] {
            assert_eq!(text.parse::<Rule>().unwrap().to_string(), shown);
        }
        for bad in ["", "10.0.0.0/8:0", "10.0.0.0/8:9-1", "[fd00::/8", "*.*.x", "a b", "x:y"] {
            assert!(bad.parse::<Rule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn default_allows_all_but_guarded_ranges() {
        let p = DestinationPolicy::default();
        assert!(p.check(None, ip("10.0.0.5"), 10250).is_ok());
        assert!(p.check(None, ip("8.8.8.8"), 53).is_ok());
        for denied in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "fd00:ec2::254",
            "0.0.0.0",
            "::ffff:127.0.0.1",
        ] {
            assert!(p.check(None, ip(denied), 80).is_err(), "{denied}");
        }
    }

    #[test]
    fn guarded_ranges_need_a_rule_inside_them() {
        let broad = policy(&["0.0.0.0/0", "localhost"]);
        assert!(broad.check(Some("localhost"), ip("127.0.0.1"), 80).is_err());
        let narrow = policy(&["127.0.0.1/32:8080"]);
        assert!(narrow.check(None, ip("127.0.0.1"), 8080).is_ok());
        assert!(narrow.check(None, ip("127.0.0.1"), 8081).is_err());
        assert!(narrow.check(None, ip("10.0.0.1"), 8080).is_err());
    }

    /// Issue 16, item 8: every metadata address and every IPv6 form of a
    /// guarded IPv4 address is denied by default, and by broad rules.
    #[test]
    fn metadata_addresses_and_embedded_ipv4_forms_are_guarded() {
        let denied = [
            // Link-local metadata and credential endpoints.
            "169.254.169.254",
            "169.254.170.2",
            "169.254.170.23",
            "169.254.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "100.100.100.200",
            "168.63.129.16",
            // Guarded IPv4 addresses inside IPv6 ones.
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::7f00:1",
            "64:ff9b:1:abcd::a9fe:aa02",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:6464:64c8:1::5",
            "::a83f:8110",
        ];
        for rules in [
            &[][..],
            &["0.0.0.0/0", "[::/0]"],
            &["[64:ff9b::/96]", "[2002::/16]", "[::/96]", "[::ffff:0:0/96]"],
        ] {
            let p = policy(rules);
            for addr in denied {
                let err = p.check(Some("metadata.example"), ip(addr), 80).unwrap_err();
                assert!(matches!(err, Denied::Guarded { .. }), "{rules:?} {addr}: {err}");
                assert!(err.to_string().contains("guarded range"), "{rules:?} {addr}: {err}");
            }
        }
        let err = DestinationPolicy::default()
            .check(None, ip("64:ff9b::7f00:1"), 80)
            .unwrap_err();
        assert!(
            err.to_string().contains("64:ff9b::7f00:1 (which carries 127.0.0.1)"),
            "{err}"
        );
        // What is not guarded stays reachable by default, in every notation.
        let p = DestinationPolicy::default();
        for allowed in [
            "10.0.0.5",
            "64:ff9b::a00:5",
            "2002:a00:5::1",
            "::ffff:10.0.0.5",
            "fd00:ec2::1",
            "169.253.0.1",
        ] {
            assert!(p.check(None, ip(allowed), 80).is_ok(), "{allowed}");
        }
        // `::` and `::1` are IPv6's own, not IPv4-compatible addresses.
        assert!(policy(&["[::1/128]"]).check(None, ip("::1"), 80).is_ok());
    }

    #[test]
    fn a_rule_inside_a_guarded_range_unlocks_it_in_either_notation() {
        let ecs = policy(&["169.254.170.2:80"]);
        assert!(ecs.check(None, ip("169.254.170.2"), 80).is_ok());
        assert!(ecs.check(None, ip("64:ff9b::a9fe:aa02"), 80).is_ok());
        assert!(ecs.check(None, ip("169.254.170.2"), 81).is_err());
        assert!(ecs.check(None, ip("169.254.169.254"), 80).is_err());
        let nat64 = policy(&["[64:ff9b::7f00:1/128]"]);
        assert!(nat64.check(None, ip("64:ff9b::7f00:1"), 80).is_ok());
        assert!(nat64.check(None, ip("127.0.0.1"), 80).is_ok());
        assert!(nat64.check(None, ip("127.0.0.2"), 80).is_err());
        let six_to_four = policy(&["[2002:a9fe::/32]"]);
        assert!(six_to_four.check(None, ip("2002:a9fe:aa17::1"), 80).is_ok());
        assert!(six_to_four.check(None, ip("169.254.1.1"), 80).is_ok());
        assert!(six_to_four.check(None, ip("127.0.0.1"), 80).is_err());
        let link_local = policy(&["[fe80::/10]", "169.254.0.0/16", "100.100.100.200", "168.63.129.16/32"]);
        for addr in ["fe80::1", "169.254.169.254", "100.100.100.200", "168.63.129.16"] {
            assert!(link_local.check(None, ip(addr), 443).is_ok(), "{addr}");
        }
        // A rule wider than the guarded range unlocks nothing in it.
        assert!(policy(&["168.63.0.0/16"]).check(None, ip("168.63.129.16"), 80).is_err());
        assert!(policy(&["169.0.0.0/8"]).check(None, ip("169.254.170.2"), 80).is_err());
    }

    #[test]
    fn names_are_checked_with_their_resolved_address() {
        let p = policy(&["*.cluster.local:443", "10.1.0.0/16"]);
        assert!(p.check(Some("api.cluster.local"), ip("10.9.9.9"), 443).is_ok());
        assert!(p.check(Some("api.cluster.local"), ip("10.9.9.9"), 80).is_err());
        assert!(p.check(Some("evil.example"), ip("10.9.9.9"), 443).is_err());
        assert!(p.check(Some("evil.example"), ip("10.1.2.3"), 443).is_ok());
        // A permitted name resolving to the metadata endpoint stays denied.
        assert!(p.check(Some("api.cluster.local"), ip("169.254.169.254"), 443).is_err());
    }
}
