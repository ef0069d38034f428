//! How a dial names the agent it goes through: [`Selector`]s, and for
//! host-based dials the ordered [`ProxyStrategy`] list (Konnectivity's
//! `--proxy-strategies`).

use std::fmt;
use std::str::FromStr;

use crate::identifiers::Identifiers;

/// Which agent a dial goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The agent with this agent id.
    Agent(String),
    /// The agent for this host name or address, chosen by the server's proxy
    /// strategies (by default: an agent whose identifiers serve the host —
    /// names, addresses, networks — and failing that, a default-route agent).
    Host(String),
    /// Any connected agent.
    Any,
}

impl Selector {
    /// Routes by the host part of a `host:port` target, the usual choice for
    /// an apiserver reaching a node.
    pub fn for_target(target: &str) -> Self {
        match super::target::split_target(target) {
            Ok((host, _)) => Selector::Host(host),
            Err(_) => Selector::Host(target.to_owned()),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Agent(id) => write!(f, "agent id {id:?}"),
            Selector::Host(host) => write!(f, "host {host:?}"),
            Selector::Any => f.write_str("any agent"),
        }
    }
}

/// One way of finding agents for a host, tried in the configured order until
/// one yields an agent. Names and meaning follow Konnectivity's
/// `--proxy-strategies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyStrategy {
    /// `destHost`: agents whose identifiers serve the destination host.
    DestHost,
    /// `defaultRoute`: agents that announced `default-route=true`.
    DefaultRoute,
    /// `default`: any connected agent.
    Default,
}

/// The strategies used unless configured otherwise: the agent for the host,
/// then a default-route agent. Unlike Konnectivity (whose default is
/// `default`), a host nobody serves is not sent to an arbitrary agent.
pub const DEFAULT_STRATEGIES: &[ProxyStrategy] = &[ProxyStrategy::DestHost, ProxyStrategy::DefaultRoute];

impl ProxyStrategy {
    /// Whether an agent with `identifiers` is a candidate for `host` under this strategy.
    pub fn admits(self, identifiers: &Identifiers, host: &str) -> bool {
        match self {
            ProxyStrategy::DestHost => identifiers.serves(host),
            ProxyStrategy::DefaultRoute => identifiers.default_route,
            ProxyStrategy::Default => true,
        }
    }

    /// Parses a comma-separated list such as `destHost,defaultRoute`.
    pub fn parse_list(text: &str) -> Result<Vec<ProxyStrategy>, StrategyParseError> {
        let list: Vec<_> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if list.is_empty() {
            return Err(StrategyParseError(text.to_owned()));
        }
        Ok(list)
    }
}

/// An unknown proxy strategy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown proxy strategy {0:?}: use destHost, defaultRoute or default, comma-separated")]
pub struct StrategyParseError(String);

impl FromStr for ProxyStrategy {
    type Err = StrategyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "destHost" => Ok(ProxyStrategy::DestHost),
            "defaultRoute" => Ok(ProxyStrategy::DefaultRoute),
            "default" => Ok(ProxyStrategy::Default),
            other => Err(StrategyParseError(other.to_owned())),
        }
    }
}

impl fmt::Display for ProxyStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyStrategy::DestHost => "destHost",
            ProxyStrategy::DefaultRoute => "defaultRoute",
            ProxyStrategy::Default => "default",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_konnectivity_names() {
        assert_eq!(
            ProxyStrategy::parse_list("destHost, defaultRoute,default").unwrap(),
            [
                ProxyStrategy::DestHost,
                ProxyStrategy::DefaultRoute,
                ProxyStrategy::Default
            ]
        );
        assert!(ProxyStrategy::parse_list("").is_err());
        assert!(ProxyStrategy::parse_list("desthost").is_err());
    }
}
