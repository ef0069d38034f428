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
//! (`0.0.0.0/8`, `::`) and cloud metadata endpoints (`169.254.169.254`,
//! `fd00:ec2::254`). A guarded address is reachable only through a network
//! rule that lies inside the guarded range (`--allow 127.0.0.1/32`), never
//! through a broad rule such as `0.0.0.0/0` or a host-name rule.

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::str::FromStr;

use ipnet::IpNet;

use crate::identifiers::{canonical_ip, normalize_host, valid_host};

/// Address ranges denied unless a network rule inside them allows them.
const GUARDED: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    "169.254.169.254/32",
    "fd00:ec2::254/128",
];

fn guarded_ranges() -> impl Iterator<Item = IpNet> {
    GUARDED.iter().map(|n| n.parse().expect("constant network"))
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
    pub fn check(&self, name: Option<&str>, addr: IpAddr, port: u16) -> Result<(), String> {
        let addr = canonical_ip(addr);
        let in_rule = |net: &IpNet| net.contains(&addr);
        if let Some(guard) = guarded_ranges().find(|g| g.contains(&addr)) {
            let unlocked = self
                .rules
                .iter()
                .any(|r| r.ports.contains(&port) && r.network().is_some_and(|n| guard.contains(&n) && in_rule(&n)));
            return if unlocked {
                Ok(())
            } else {
                Err(format!(
                    "{addr} is in the guarded range {guard}; allow it explicitly with a rule inside {guard}"
                ))
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
            Err(format!(
                "{} port {port} is not in the agent's allow-list",
                name.map_or(addr.to_string(), |n| format!("{n} ({addr})"))
            ))
        }
    }
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
