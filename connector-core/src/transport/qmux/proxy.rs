//! Reaching the server through an HTTP proxy with `CONNECT`, for networks
//! whose only way out is such a proxy. The proxy comes from the settings or
//! from `HTTPS_PROXY`/`https_proxy`, minus hosts listed in `NO_PROXY`/`no_proxy`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::escaped;
use crate::transport::TransportError;

/// Largest proxy response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// How long the proxy may take to answer `CONNECT`.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// An unusable proxy setting.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The URL is not `http://[user:password@]host[:port]`.
    #[error("invalid proxy URL {0:?}: expected http://[user:password@]host[:port]")]
    Url(String),
    /// A scheme other than `http`.
    #[error("proxy scheme {0:?} is not supported: use an http:// proxy (the tunnel inside is TLS already)")]
    Scheme(String),
}

/// How the TCP transport reaches the server.
#[derive(Debug, Clone, Default)]
pub enum ProxyChoice {
    /// `HTTPS_PROXY`/`https_proxy` if set and the server is not in `NO_PROXY`/`no_proxy`.
    #[default]
    Environment,
    /// Straight to the server.
    Direct,
    /// Through this proxy.
    Via(HttpProxy),
}

impl ProxyChoice {
    /// Parses a setting: `off`/`none`/`direct` → [`ProxyChoice::Direct`], a URL → [`ProxyChoice::Via`].
    pub fn parse(s: &str) -> Result<Self, ProxyError> {
        match s.trim() {
            "off" | "none" | "direct" => Ok(Self::Direct),
            url => HttpProxy::parse(url).map(Self::Via),
        }
    }

    /// The proxy to use for `server` (`host:port`), if any.
    pub fn resolve(&self, server: &str) -> Result<Option<HttpProxy>, ProxyError> {
        match self {
            Self::Direct => Ok(None),
            Self::Via(p) => Ok(Some(p.clone())),
            Self::Environment => {
                let url = env_var(&["HTTPS_PROXY", "https_proxy"]);
                let Some(url) = url.filter(|u| !u.trim().is_empty()) else {
                    return Ok(None);
                };
                let no_proxy = env_var(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
                if no_proxy_matches(&no_proxy, host_of(server)) {
                    return Ok(None);
                }
                HttpProxy::parse(&url).map(Some)
            }
        }
    }
}

fn env_var(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| std::env::var(n).ok())
}

fn host_of(server: &str) -> &str {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `host` is exempt from proxying by a `NO_PROXY` list: `*`, exact
/// names, domain suffixes (`example.com` and `.example.com` both cover
/// `a.example.com`), IP addresses and CIDR ranges. Ports in entries are ignored.
pub fn no_proxy_matches(no_proxy: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let ip: Option<IpAddr> = host.parse().ok();
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let (Some(ip), Ok(net)) = (ip, entry.parse::<ipnet::IpNet>()) {
                return net.contains(&ip);
            }
            let entry = match entry.rsplit_once(':') {
                Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
                _ => entry,
            };
            let entry = entry.trim_start_matches('[').trim_end_matches(']');
            if let (Some(ip), Ok(e)) = (ip, entry.parse::<IpAddr>()) {
                return ip == e;
            }
            let entry = entry
                .trim_start_matches("*.")
                .trim_start_matches('.')
                .to_ascii_lowercase();
            !entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}")))
        })
}

/// An HTTP proxy that tunnels with `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpProxy {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

impl fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl HttpProxy {
    /// Parses `http://[user:password@]host[:port]` (port 80 by default; `user`
    /// and `password` may be percent-encoded). A bare `host:port` means http.
    pub fn parse(url: &str) -> Result<Self, ProxyError> {
        let bad = || ProxyError::Url(redact(url));
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => return Err(ProxyError::Scheme(scheme.to_owned())),
            None => url,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (credentials, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (
                    Some((
                        percent_decode(user).ok_or_else(bad)?,
                        percent_decode(pass).ok_or_else(bad)?,
                    )),
                    hostport,
                )
            }
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 80,
                None => return Err(bad()),
            };
            (host.to_owned(), port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (hostport.to_owned(), 80),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        Ok(Self {
            host,
            port,
            credentials,
        })
    }

    /// `http://host:port`, without credentials (for logs and errors).
    pub fn describe(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }

    fn request(&self, target: &str) -> String {
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((user, pass)) = &self.credentials {
            req.push_str("Proxy-Authorization: Basic ");
            req.push_str(&base64(format!("{user}:{pass}").as_bytes()));
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req
    }

    /// Opens a TCP connection to the proxy and asks it to tunnel to `target`
    /// (`host:port`). Returns the tunnel and the proxy's address.
    pub async fn connect(&self, target: &str) -> Result<(TcpStream, Option<SocketAddr>), TransportError> {
        let me = self.describe();
        let mut tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| TransportError::Connect(format!("cannot reach proxy {me}: {e}")))?;
        let remote = tcp.peer_addr().ok();
        let exchange = async {
            tcp.write_all(self.request(target).as_bytes()).await?;
            read_head(&mut tcp).await
        };
        let head = tokio::time::timeout(RESPONSE_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                TransportError::Connect(format!("proxy {me} did not answer CONNECT within {RESPONSE_TIMEOUT:?}"))
            })?
            .map_err(|e| TransportError::Connect(format!("proxy {me}: {e}")))?;
        match parse_connect_answer(&head) {
            Ok(()) => {}
            Err(ConnectAnswerError::Malformed) => {
                return Err(TransportError::Connect(format!(
                    "proxy {me} sent a malformed answer to CONNECT"
                )));
            }
            Err(refused) => {
                return Err(TransportError::Connect(format!(
                    "proxy {me} refused CONNECT to {target}: {refused}"
                )));
            }
        }
        tracing::debug!(proxy = %me, %target, "tunnel through HTTP proxy established");
        Ok((tcp, remote))
    }
}

/// Why a proxy's answer to `CONNECT` does not open the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectAnswerError {
    /// Not an HTTP/1.x response head.
    #[error("malformed answer")]
    Malformed,
    /// A status other than 2xx. The proxy's reason phrase displays escaped
    /// ([`crate::proto::escaped`]) and cut to 100 characters.
    #[error(
        "{status} {}{}",
        escaped(reason),
        if *status == 407 { " (check the proxy credentials in the proxy URL)" } else { "" }
    )]
    Refused {
        /// The status code.
        status: u16,
        /// The reason phrase, at most 100 characters of it.
        reason: String,
    },
}

/// Checks a proxy's response head (up to and including its blank line):
/// `Ok` for a 2xx status. Public for the `proxy_response` fuzz target only.
#[doc(hidden)]
pub fn parse_connect_answer(head: &[u8]) -> Result<(), ConnectAnswerError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(ConnectAnswerError::Malformed),
    }
    let status = response.code.unwrap_or(0);
    if (200..300).contains(&status) {
        return Ok(());
    }
    Err(ConnectAnswerError::Refused {
        status,
        reason: response.reason.unwrap_or("").chars().take(100).collect(),
    })
}

/// Reads a response head up to its blank line, at most [`MAX_RESPONSE_HEAD`]
/// bytes, never consuming bytes after it (the TLS handshake follows).
/// Public for the `proxy_response` fuzz target only.
#[doc(hidden)]
pub async fn read_head<R: AsyncRead + Unpin>(io: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("answer to CONNECT longer than {MAX_RESPONSE_HEAD} bytes"),
            ));
        }
        if io.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed the connection before answering CONNECT",
            ));
        }
        head.push(byte[0]);
    }
    Ok(head)
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://<credentials>@{}", &url[..s], &url[at + 1..]),
        (None, Some(at)) => format!("<credentials>@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_credentials() {
        let p = HttpProxy::parse("http://al%40ice:s3cr%3At@proxy.corp:3128/").unwrap();
        assert_eq!(p.describe(), "http://proxy.corp:3128");
        assert_eq!(format!("{p:?}"), "http://proxy.corp:3128");
        assert_eq!(p.credentials, Some(("al@ice".into(), "s3cr:t".into())));
        assert!(
            p.request("srv:443")
                .contains("Proxy-Authorization: Basic YWxAaWNlOnMzY3I6dA==\r\n")
        );
        assert_eq!(HttpProxy::parse("proxy:8080").unwrap().describe(), "http://proxy:8080");
        assert_eq!(
            HttpProxy::parse("http://[::1]:8080").unwrap().describe(),
            "http://[::1]:8080"
        );
        assert!(matches!(HttpProxy::parse("socks5://p:1"), Err(ProxyError::Scheme(_))));
        let err = HttpProxy::parse("http://u:hunter2@host:notaport")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_proxy_answer_is_checked_and_its_reason_escaped() {
        assert_eq!(
            parse_connect_answer(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Ok(())
        );
        assert_eq!(
            parse_connect_answer(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(ConnectAnswerError::Malformed)
        );
        // httparse refuses control bytes in the reason phrase but a tab, and
        // gives an empty reason for one with bytes above 0x7f.
        let refused = parse_connect_answer(b"HTTP/1.1 407 Auth\trequired\r\n\r\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            refused,
            r"407 Auth\trequired (check the proxy credentials in the proxy URL)"
        );
        assert!(parse_connect_answer(b"HTTP/1.1 407 \x1b[2K\r\n\r\n").is_err());
        let bidi = parse_connect_answer("HTTP/1.1 403 \u{202e}deined\r\n\r\n".as_bytes()).unwrap_err();
        assert!(!bidi.to_string().contains('\u{202e}'), "{bidi}");
        let long = format!("HTTP/1.1 502 {}\r\n\r\n", "x".repeat(500));
        match parse_connect_answer(long.as_bytes()) {
            Err(ConnectAnswerError::Refused { status: 502, reason }) => assert_eq!(reason.len(), 100),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn no_proxy_lists_exempt_names_suffixes_and_addresses() {
        let list = "localhost, .internal,example.com:443, 10.0.0.0/8, ::1";
        assert!(no_proxy_matches(list, "localhost"));
        assert!(no_proxy_matches(list, "a.b.internal"));
        assert!(no_proxy_matches(list, "example.com"));
        assert!(no_proxy_matches(list, "api.example.com"));
        assert!(!no_proxy_matches(list, "notexample.com"));
        assert!(no_proxy_matches(list, "10.1.2.3"));
        assert!(no_proxy_matches(list, "::1"));
        assert!(!no_proxy_matches(list, "192.168.1.1"));
        assert!(no_proxy_matches("*", "anything"));
        assert!(!no_proxy_matches("", "anything"));
    }
}
