//! `connector forward`: a local TCP port whose connections are tunnelled to
//! one target through a running server's HTTP CONNECT frontend — `kubectl
//! port-forward` for anything behind an agent, and the way iperf3, wrk or
//! curl are pointed at the tunnel. It speaks plain HTTP CONNECT, so it works
//! against any CONNECT proxy (Konnectivity's included).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use connector_core::proto::escaped;
use connector_core::tls::{Identity, certs_from_file};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Local address to listen on: a loopback address, since whoever reaches it
    /// reaches the target through the tunnel without authenticating.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Where every connection goes, as seen from the agent: `host:port`.
    #[arg(long)]
    target: String,
    /// The server's CONNECT frontend: `unix:///path`, `tls://host:port` or `tcp://127.0.0.1:port`.
    #[arg(long)]
    proxy: String,
    /// CA bundle (PEM) for a `tls://` proxy's certificate.
    #[arg(long, requires = "proxy_cert")]
    proxy_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a `tls://` proxy.
    #[arg(long, requires = "proxy_key")]
    proxy_cert: Option<PathBuf>,
    /// Client key (PEM) for a `tls://` proxy.
    #[arg(long)]
    proxy_key: Option<PathBuf>,
    /// Name on a `tls://` proxy's certificate (default: the host of --proxy).
    #[arg(long)]
    proxy_server_name: Option<String>,
}

/// How to reach the CONNECT proxy.
enum Proxy {
    Unix(PathBuf),
    Tcp(String),
    Tls {
        addr: String,
        name: ServerName<'static>,
        connector: tokio_rustls::TlsConnector,
    },
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Proxy {
    fn from_args(args: &ForwardArgs) -> anyhow::Result<Proxy> {
        if let Some(path) = args.proxy.strip_prefix("unix://") {
            return Ok(Proxy::Unix(path.into()));
        }
        if let Some(addr) = args.proxy.strip_prefix("tcp://") {
            return Ok(Proxy::Tcp(addr.to_owned()));
        }
        let Some(addr) = args.proxy.strip_prefix("tls://") else {
            bail!(
                "--proxy {:?}: use unix:///path, tls://host:port or tcp://host:port",
                args.proxy
            );
        };
        let (Some(ca), Some(cert), Some(key)) = (&args.proxy_ca, &args.proxy_cert, &args.proxy_key) else {
            bail!("a tls:// proxy needs --proxy-ca, --proxy-cert and --proxy-key");
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs_from_file(ca)? {
            roots.add(ca)?;
        }
        let identity = Identity::from_files(cert, key)?;
        connector_core::warn_if_exposed(key, "TLS key file");
        let config = rustls::ClientConfig::builder_with_provider(connector_core::tls::crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.chain().to_vec(), identity.private_key())?;
        let host = args.proxy_server_name.clone().unwrap_or_else(|| {
            addr.rsplit_once(':')
                .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
                .unwrap_or_default()
        });
        let name = ServerName::try_from(host.clone()).with_context(|| format!("invalid proxy server name {host:?}"))?;
        Ok(Proxy::Tls {
            addr: addr.to_owned(),
            name,
            connector: Arc::new(config).into(),
        })
    }

    async fn connect(&self) -> anyhow::Result<Pin<Box<dyn Io>>> {
        Ok(match self {
            Proxy::Unix(path) => Box::pin(UnixStream::connect(path).await?),
            Proxy::Tcp(addr) => Box::pin(TcpStream::connect(addr).await?),
            Proxy::Tls { addr, name, connector } => {
                let tcp = TcpStream::connect(addr).await?;
                Box::pin(connector.connect(name.clone(), tcp).await?)
            }
        })
    }
}

/// Largest CONNECT response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Sends `CONNECT target` and checks for a 200; on failure returns the
/// proxy's status line and reason.
async fn handshake(io: &mut (impl AsyncRead + AsyncWrite + Unpin), target: &str) -> anyhow::Result<()> {
    io.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    // Read byte by byte so that no tunnelled byte is consumed with the head.
    let mut head = Vec::with_capacity(128);
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        if io.read(&mut byte).await? == 0 || head.len() > MAX_HEAD {
            bail!("the proxy closed the connection before answering the CONNECT");
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        return Ok(());
    }
    let mut body = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), io.read(&mut body))
        .await
        .unwrap_or(Ok(0))
        .unwrap_or(0);
    // The proxy's text, escaped: it goes into a log line.
    let body = String::from_utf8_lossy(&body[..n]);
    bail!("{}: {}", escaped(status), escaped(body.trim()))
}

pub async fn run(args: ForwardArgs) -> anyhow::Result<()> {
    connector_core::frontend::require_loopback(args.listen).context("--listen")?;
    let proxy = Arc::new(Proxy::from_args(&args)?);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, target = %args.target, proxy = %args.proxy, "forwarding");
    let target: Arc<str> = args.target.into();
    loop {
        let (mut local, peer) = tokio::select! {
            _ = crate::shutdown_signal() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let _ = local.set_nodelay(true);
        let (proxy, target) = (proxy.clone(), target.clone());
        tokio::spawn(async move {
            let result = async {
                let mut remote = proxy.connect().await.context("connecting to the proxy")?;
                handshake(&mut remote, &target).await?;
                let copied = connector_core::copy_both(&mut local, &mut remote).await?;
                anyhow::Ok(copied)
            };
            match result.await {
                Ok((up, down)) => tracing::debug!(%peer, to_target = up, to_client = down, "closed"),
                Err(err) => tracing::warn!(%peer, "{err:#}"),
            }
        });
    }
}
