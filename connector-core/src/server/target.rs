//! A dial's target: `host:port`, with `[v6]:port` for IPv6 literals.

/// Splits `target` into its host and port; the error says what is wrong.
pub(crate) fn split_target(target: &str) -> Result<(String, u16), &'static str> {
    let (host, port) = target.rsplit_once(':').ok_or("missing :port")?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or("unbalanced brackets")?,
        None if host.contains(':') => return Err("IPv6 addresses need brackets"),
        None => host,
    };
    if host.is_empty() {
        return Err("empty host");
    }
    if host.parse::<std::net::IpAddr>().is_err() && !crate::identifiers::valid_host(host) {
        return Err("host is neither an IP address nor a DNS name");
    }
    let port: u16 = port.parse().map_err(|_| "port is not a number in 1..=65535")?;
    if port == 0 {
        return Err("port 0");
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::split_target;

    #[test]
    fn splits_targets() {
        assert_eq!(split_target("10.0.0.5:10250").unwrap(), ("10.0.0.5".into(), 10250));
        assert_eq!(split_target("[fd00::1]:443").unwrap(), ("fd00::1".into(), 443));
        assert_eq!(
            split_target("node-a.cluster.local:80").unwrap(),
            ("node-a.cluster.local".into(), 80)
        );
        for bad in [
            "10.0.0.5",
            "fd00::1:443",
            ":80",
            "host:0",
            "host:99999",
            "ho st:80",
            "[fd00::1:443",
        ] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
    }
}
