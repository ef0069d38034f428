//! TLS material for both ends: PEM loading and the rustls configurations
//! (TLS 1.3 only, ALPN `connector/1`). The server always proves itself with a
//! certificate; the agent verifies it against a pinned CA bundle and may
//! present a client certificate of its own (mTLS). Certificates, keys and CA
//! bundles read from files follow their files (see [`Identity`], [`CaBundle`]).

/// The signature methods of a rustls certificate verifier that wraps another
/// (`self.$inner`, a field or a method call) and hands them to it unchanged:
/// signatures do not depend on the CAs or on the checks the wrapper adds.
/// Defined before the modules so that they can use it.
macro_rules! delegate_signatures {
    (@verify $method:ident, $($inner:tt)+) => {
        fn $method(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            self.$($inner)+.$method(message, cert, dss)
        }
    };
    ($($inner:tt)+) => {
        delegate_signatures!(@verify verify_tls12_signature, $($inner)+);
        delegate_signatures!(@verify verify_tls13_signature, $($inner)+);

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.$($inner)+.supported_verify_schemes()
        }

        fn requires_raw_public_keys(&self) -> bool {
            self.$($inner)+.requires_raw_public_keys()
        }
    };
}

mod ca;
mod follow;
mod purpose;
mod reload;

pub use ca::CaBundle;
pub use purpose::{KeyPurpose, PurposeError, check_allowed_client, check_purpose};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::proto::ALPN;

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No certificate in a PEM input that must hold one.
    #[error("no PEM certificate found in {0}")]
    NoCertificate(String),
    /// No private key in a PEM input that must hold one.
    #[error("no PEM private key found in {0} (expected PKCS#8, PKCS#1 or SEC1)")]
    NoKey(String),
    /// The server name the agent should verify is not a valid DNS name or IP.
    #[error("invalid server name {0:?}: pass the name on the server's certificate")]
    ServerName(String),
    /// rustls refused the material (key does not match, bad CA, ...).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA bundle.
    #[error("client CA bundle rejected: {0}")]
    ClientCa(String),
    /// A certificate in a CA bundle file is not one rustls can trust.
    #[error("CA certificate in {0} cannot be used ({1}): the bundle must hold PEM CA certificates")]
    CaCertificate(String, rustls::Error),
    /// The server-certificate verifier could not be built from the CA bundle.
    #[error("server CA bundle rejected: {0}: pass the CA the server's certificate chains to")]
    ServerCa(String),
    /// A TLS frontend trusts the CA of agents' client certificates and
    /// admits any client it issued (see [`FrontendTls::check_trust_domains`]).
    #[error(
        "the frontend's client CA is also a CA of agents' client certificates, so every agent could dial through the frontend: give frontend clients (kube-apiserver) their own CA, or list the clients the frontend admits (connector server --frontend-allow-client NAME; FrontendTls::allowed_clients, allowed_clients in C, AllowedClients in Go)"
    )]
    SharedClientCa,
}

/// A certificate chain and its private key, as PEM. An identity read with
/// [`Identity::from_files`] follows its files: TLS configurations built from
/// it pick up a rotated certificate at the next handshake.
#[derive(Clone)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// The files it was read from (certificate chain, key), if any.
    files: Option<Arc<(PathBuf, PathBuf)>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Identity {
    /// Parses a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        Self::parse(chain_pem, Path::new("certificate PEM"), key_pem, Path::new("key PEM"))
    }

    /// Reads [`Identity::from_pem`]'s inputs from files.
    pub fn from_files(chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (chain_path, key_path) = (chain.as_ref(), key.as_ref());
        let identity = Self::parse(&read(chain_path)?, chain_path, &read(key_path)?, key_path)?;
        Ok(Self {
            files: Some(Arc::new((chain_path.to_owned(), key_path.to_owned()))),
            ..identity
        })
    }

    /// Parses PEM inputs, naming them in errors; the result follows no files.
    fn parse(chain_pem: &[u8], chain_name: &Path, key_pem: &[u8], key_name: &Path) -> Result<Self, TlsError> {
        let chain = certs_from_pem(chain_pem, &chain_name.display().to_string())?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey(key_name.display().to_string()))?;
        Ok(Self {
            chain,
            key: Arc::new(key),
            files: None,
        })
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A copy of the private key, for building other TLS configurations. Never log it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.as_ref().clone_key()
    }

    /// The files this identity follows, if it was read from files.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        self.files.as_deref().map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// A key pair for rustls: one that follows the files when there are files.
    fn reloading(&self) -> Result<Arc<reload::ReloadingKey>, TlsError> {
        Ok(Arc::new(reload::ReloadingKey::new(self)?))
    }

    /// A resolver presenting this identity as a server.
    fn server_cert(&self) -> Result<Arc<reload::ServerCert>, TlsError> {
        Ok(Arc::new(reload::ServerCert(self.reloading()?)))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Parses every certificate in a PEM bundle; at least one is required.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what.to_owned()));
    }
    Ok(certs)
}

/// Reads a PEM bundle of CA certificates from a file, once (see
/// [`CaBundle::from_file`] for a bundle that follows its file).
pub fn certs_from_file(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = path.as_ref();
    certs_from_pem(&read(path)?, &path.display().to_string())
}

/// The cryptography under every TLS connection connector makes or accepts
/// (QUIC, the TCP fallback, the frontends): aws-lc-rs. Its AES-GCM is what
/// every tunnelled byte passes through. `cargo bench -p connector-benches
/// --bench aead` on this project's 2-vCPU machine (AMD EPYC with VAES):
/// AES-128-GCM sealing at 6,550 / 1,452 bytes, 17.5 / 8.1 GiB/s, against
/// ring's 9.5 / 6.3 GiB/s.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Server-side TLS settings.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate and key.
    pub identity: Identity,
    /// CAs whose client certificates are accepted; `None` disables mTLS
    /// (agents then authenticate with a token). When set, a client
    /// certificate is verified if presented but not required, so token and
    /// certificate agents can share one listener; the authenticator decides.
    pub client_cas: Option<CaBundle>,
}

impl ServerTls {
    /// Builds the rustls configuration (TLS 1.3 only, our ALPN).
    pub fn rustls_config(&self) -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match &self.client_cas {
            Some(cas) => builder.with_client_cert_verifier(cas.client_verifier(true, &[])?),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.identity.server_cert()?);
        config.alpn_protocols = vec![ALPN.to_vec()];
        // No resumption: every agent connection is a full handshake, so the
        // identity the authenticator sees is the certificate presented now
        // (not one carried over in a ticket past its rotation or expiry).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }
}

/// Agent-side TLS settings.
#[derive(Debug, Clone)]
pub struct AgentTls {
    /// CAs the server's certificate must chain to (pinned; no system roots).
    pub server_cas: CaBundle,
    /// The name (or IP) expected on the server's certificate.
    pub server_name: String,
    /// A client certificate to present, for mTLS.
    pub client_identity: Option<Identity>,
}

impl AgentTls {
    /// Builds the rustls configuration (TLS 1.3 only, our ALPN).
    pub fn rustls_config(&self) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(self.server_cas.server_verifier()?);
        let mut config = match &self.client_identity {
            Some(id) => builder.with_client_cert_resolver(Arc::new(reload::ClientCert(id.reloading()?))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        // Full handshakes only (see `ServerTls::rustls_config`).
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    /// The server name in the form rustls verifies.
    pub fn server_name(&self) -> Result<ServerName<'static>, TlsError> {
        ServerName::try_from(self.server_name.clone()).map_err(|_| TlsError::ServerName(self.server_name.clone()))
    }
}

/// TLS settings of a TCP frontend (HTTP CONNECT, gRPC): the server's
/// certificate, the CAs whose client certificates are *required*
/// (kube-apiserver's egress selector presents one), and which of those
/// clients are admitted.
///
/// A frontend client may dial anything any agent serves, so its CA should
/// issue nothing else: if the frontend trusts the CA of agents' client
/// certificates, every agent could use the frontend. Give the frontend its
/// own client CA, or list the clients it admits in
/// [`FrontendTls::allowed_clients`]; [`FrontendTls::check_trust_domains`]
/// refuses the shared CA without a list.
#[derive(Debug, Clone)]
pub struct FrontendTls {
    /// The frontend's certificate and key.
    pub identity: Identity,
    /// CAs a client certificate must chain to. The client certificate must
    /// also name clientAuth in its extended key usage.
    pub client_cas: CaBundle,
    /// The clients admitted: a client certificate is accepted when its
    /// subject common name equals an entry, or one of its DNS subject
    /// alternative names equals one ignoring ASCII case. Empty: any client
    /// certificate the CAs issued (with clientAuth).
    pub allowed_clients: Vec<String>,
}

impl FrontendTls {
    /// Loads the certificate chain, key and client CA bundle from PEM files
    /// (and follows them), with no allow-list.
    pub fn from_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
        client_ca: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            identity: Identity::from_files(chain, key)?,
            client_cas: CaBundle::from_file(client_ca)?,
            allowed_clients: Vec::new(),
        })
    }

    /// Refuses a frontend without [`FrontendTls::allowed_clients`] whose
    /// client CAs include one of `agent_client_cas` (the CAs of agents'
    /// client certificates; the same DER certificate): every agent's
    /// certificate would open the frontend. Call it before starting a TLS
    /// frontend next to a server that authenticates agents by certificate.
    pub fn check_trust_domains(&self, agent_client_cas: &CaBundle) -> Result<(), TlsError> {
        if !self.allowed_clients.is_empty() {
            return Ok(());
        }
        let shared = self
            .client_cas
            .certs()
            .any(|ca| agent_client_cas.certs().any(|agents| agents == ca));
        if shared {
            return Err(TlsError::SharedClientCa);
        }
        Ok(())
    }

    /// Builds the rustls configuration: TLS 1.2 or 1.3, client certificate
    /// required (with clientAuth, and on the allow-list when there is one),
    /// offering `alpn` (e.g. `h2` for gRPC).
    pub fn rustls_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let verifier = self.client_cas.client_verifier(false, &self.allowed_clients)?;
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.identity.server_cert()?);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // No resumption: a resumed session skips the client certificate, so a
        // client whose CA left the bundle (or whose certificate expired) would
        // still get in. Every connection is checked against the bundle in use.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }
}
