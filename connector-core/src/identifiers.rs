//! What an agent serves: node/host names, addresses, networks and the
//! default route. The same type describes what an agent *claims* in its
//! `Hello` and what its authenticated identity *allows* it to claim.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Longest host name accepted anywhere (RFC 1035's limit on a full name).
pub const MAX_HOST_LEN: usize = 253;

/// The identifiers an agent serves, in the spirit of Konnectivity's
/// `--agent-identifiers` (`host=`, `ipv4=`, `ipv6=`, `cidr=`, `default-route=`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identifiers {
    /// Node or host names, lower-cased, without a trailing dot.
    pub hosts: Vec<String>,
    /// Single addresses (IPv4 or IPv6).
    pub addresses: Vec<IpAddr>,
    /// Networks reachable through the agent.
    pub cidrs: Vec<IpNet>,
    /// Whether the agent offers to carry traffic for destinations no other agent serves.
    pub default_route: bool,
}

/// A malformed identifier list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid identifier {item:?}: {reason} (expected host=NAME, ipv4=ADDR, ipv6=ADDR, cidr=NET or default-route=true|false)"
)]
pub struct IdentifierParseError {
    /// The offending item.
    pub item: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl Identifiers {
    /// True when nothing is claimed at all (no names, addresses, networks or default route).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.addresses.is_empty() && self.cidrs.is_empty() && !self.default_route
    }

    /// Whether `host` (a name or an address literal) is served by these identifiers:
    /// a name matches a host entry (case-insensitively); an address matches an
    /// address entry or lies inside a network entry. The default route is not
    /// consulted here; routing treats it as a fallback.
    pub fn serves(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => self.serves_ip(ip),
            Err(_) => {
                let host = normalize_host(host);
                self.hosts.contains(&host)
            }
        }
    }

    fn serves_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.addresses.iter().any(|a| canonical_ip(*a) == ip) || self.cidrs.iter().any(|n| n.contains(&ip))
    }

    /// The claims in `claimed` that these identifiers (taken as an allowance) do
    /// not cover. Empty means every claim is permitted. A claimed network is
    /// covered only by an allowed network that contains it entirely.
    pub fn uncovered(&self, claimed: &Identifiers) -> Vec<String> {
        let mut out = Vec::new();
        for h in &claimed.hosts {
            if !self.hosts.iter().any(|a| a == h) {
                out.push(format!("host={h}"));
            }
        }
        for ip in &claimed.addresses {
            if !self.serves_ip(*ip) {
                out.push(format!("{}={ip}", ip_kind(ip)));
            }
        }
        for net in &claimed.cidrs {
            if !self.cidrs.iter().any(|a| a.contains(net)) {
                out.push(format!("cidr={net}"));
            }
        }
        if claimed.default_route && !self.default_route {
            out.push("default-route=true".to_owned());
        }
        out
    }
}

fn ip_kind(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "ipv4" } else { "ipv6" }
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Lower-cases a host name and drops one trailing dot.
pub fn normalize_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Checks that `host` is a plausible DNS name: 1..=253 bytes of letters,
/// digits, `-`, `_`, `.`, `*` (for patterns), in dot-separated labels of
/// 1..=63 bytes; one trailing dot (a fully qualified name) is allowed.
pub(crate) fn valid_host(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'))
        && name.split('.').all(|label| (1..=63).contains(&label.len()))
}

impl FromStr for Identifiers {
    type Err = IdentifierParseError;

    /// Parses Konnectivity's syntax: items separated by `,` or `&`, each
    /// `host=`, `ipv4=`, `ipv6=`, `cidr=` or `default-route=`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut ids = Identifiers::default();
        for item in s.split([',', '&']).map(str::trim).filter(|i| !i.is_empty()) {
            ids.push_item(item)?;
        }
        Ok(ids)
    }
}

impl Identifiers {
    /// Adds one `kind=value` item (see [`FromStr`]).
    pub fn push_item(&mut self, item: &str) -> Result<(), IdentifierParseError> {
        let err = |reason| IdentifierParseError {
            item: item.to_owned(),
            reason,
        };
        let (kind, value) = item.split_once('=').ok_or_else(|| err("missing '='"))?;
        match kind.trim() {
            "host" => {
                // Validated before normalising: "a.." must not become "a.".
                let host = value.trim();
                if !valid_host(host) {
                    return Err(err("not a valid host name"));
                }
                self.hosts.push(normalize_host(host));
            }
            "ipv4" => {
                let ip: std::net::Ipv4Addr = value.trim().parse().map_err(|_| err("not an IPv4 address"))?;
                self.addresses.push(ip.into());
            }
            "ipv6" => {
                let ip: std::net::Ipv6Addr = value.trim().parse().map_err(|_| err("not an IPv6 address"))?;
                self.addresses.push(ip.into());
            }
            "cidr" => {
                let net: IpNet = value.trim().parse().map_err(|_| err("not a CIDR network"))?;
                self.cidrs.push(net.trunc());
            }
            "default-route" => {
                self.default_route = value.trim().parse().map_err(|_| err("expected true or false"))?;
            }
            _ => return Err(err("unknown kind")),
        }
        Ok(())
    }
}

impl fmt::Display for Identifiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items: Vec<String> = Vec::new();
        items.extend(self.hosts.iter().map(|h| format!("host={h}")));
        items.extend(self.addresses.iter().map(|a| format!("{}={a}", ip_kind(a))));
        items.extend(self.cidrs.iter().map(|c| format!("cidr={c}")));
        if self.default_route {
            items.push("default-route=true".into());
        }
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_need_non_empty_labels() {
        // Found by the config_parsers and frame_decoder fuzz targets: "." and
        // "1...1.." were accepted, and normalising them changed their meaning.
        for bad in [".", "..", "a..b", "1...1..", ".a", "a.b..", &"x".repeat(64)] {
            assert!(!valid_host(bad), "{bad:?}");
        }
        for good in ["a", "a.", "node-a.cluster.local", "*.svc", "_srv.x", &"x".repeat(63)] {
            assert!(valid_host(good), "{good:?}");
        }
        assert!(valid_host(&["a"; 127].join("."))); // 253 bytes
        assert!(!valid_host(&"a.".repeat(127)));
        // Found by the config_parsers fuzz target: normalising before
        // validating turned "o.1.." into "o.1.", which prints differently.
        assert!("host=o.1..".parse::<Identifiers>().is_err());
        assert_eq!("host=O.1.".parse::<Identifiers>().unwrap().hosts, ["o.1"]);
    }

    #[test]
    fn parses_konnectivity_syntax() {
        let ids: Identifiers = "host=Node-A.,ipv4=10.0.0.5&ipv6=fd00::5,cidr=10.1.0.7/16,default-route=true"
            .parse()
            .unwrap();
        assert_eq!(ids.hosts, vec!["node-a"]);
        assert_eq!(ids.addresses.len(), 2);
        assert_eq!(ids.cidrs, vec!["10.1.0.0/16".parse::<IpNet>().unwrap()]);
        assert!(ids.default_route);
        assert_eq!(ids.to_string().parse::<Identifiers>().unwrap(), ids);
        assert!("bogus=1".parse::<Identifiers>().is_err());
        assert!("host=".parse::<Identifiers>().is_err());
        assert!("ipv4=::1".parse::<Identifiers>().is_err());
    }

    #[test]
    fn serves_names_addresses_and_networks() {
        let ids: Identifiers = "host=node-a,ipv4=10.0.0.5,cidr=10.1.0.0/16".parse().unwrap();
        assert!(ids.serves("NODE-A"));
        assert!(ids.serves("10.0.0.5"));
        assert!(ids.serves("::ffff:10.0.0.5"));
        assert!(ids.serves("10.1.200.3"));
        assert!(!ids.serves("10.2.0.1"));
        assert!(!ids.serves("node-b"));
    }

    #[test]
    fn uncovered_lists_what_is_not_allowed() {
        let allowed: Identifiers = "host=node-a,cidr=10.0.0.0/8".parse().unwrap();
        let claimed: Identifiers = "host=node-a,host=node-b,ipv4=10.3.3.3,cidr=10.0.0.0/4,default-route=true"
            .parse()
            .unwrap();
        assert_eq!(
            allowed.uncovered(&claimed),
            vec!["host=node-b", "cidr=0.0.0.0/4", "default-route=true"]
        );
    }
}
