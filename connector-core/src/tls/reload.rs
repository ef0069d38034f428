//! Certificates that follow their files: a key pair loaded from PEM files is
//! compared with the files' contents at every handshake (two small reads,
//! against a handshake's public-key operations) and re-parsed when either
//! changed, so a rotated certificate (cert-manager, a Kubernetes Secret
//! volume's symlink swap, an in-place rewrite) is used without a restart. A broken update
//! (unreadable file, key not matching the certificate while the files are
//! half-written) keeps the previous pair and is logged; the next change is
//! tried again.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::follow::Following;
use super::{Identity, TlsError, crypto_provider};

/// A key pair read from a certificate chain file and a key file, re-read when they change
/// (or a fixed pair, for an identity not read from files).
#[derive(Debug)]
pub(crate) struct ReloadingKey(Following<Arc<CertifiedKey>>);

/// The pair as rustls signs with it; fails when the key does not match the certificate.
pub(crate) fn certified(identity: &Identity) -> Result<CertifiedKey, TlsError> {
    Ok(CertifiedKey::from_der(
        identity.chain.clone(),
        identity.private_key(),
        &crypto_provider(),
    )?)
}

impl ReloadingKey {
    /// Follows `identity`'s files, or holds it as it is when it has none.
    pub(crate) fn new(identity: &Identity) -> Result<Self, TlsError> {
        let Some((chain, key)) = identity.files() else {
            let pair = Arc::new(certified(identity)?);
            return Ok(Self(Following::load("certificate", Vec::new(), move |_| {
                Ok(pair.clone())
            })?));
        };
        let following = Following::load("certificate", vec![chain.to_owned(), key.to_owned()], |files| {
            let [(chain_path, chain), (key_path, key)] = files else {
                unreachable!("two files: certificate chain and key");
            };
            let identity = Identity::parse(chain, chain_path, key, key_path)?;
            Ok(Arc::new(certified(&identity)?))
        })?;
        Ok(Self(following))
    }

    /// The pair to use now, re-read first if either file changed.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        self.0.current()
    }
}

/// Server side: presents the current pair.
#[derive(Debug)]
pub(crate) struct ServerCert(pub(crate) Arc<ReloadingKey>);

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// Agent side: presents the current pair as its client certificate.
#[derive(Debug)]
pub(crate) struct ClientCert(pub(crate) Arc<ReloadingKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
