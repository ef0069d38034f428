//! Certificates that follow their files: a key pair loaded from PEM files is
//! compared with the files' contents at every handshake (two small reads,
//! against a handshake's public-key operations) and re-parsed when either
//! changed, so a rotated certificate (cert-manager, a Kubernetes Secret
//! volume's symlink swap, an in-place rewrite) is used without a restart. A broken update
//! (unreadable file, key not matching the certificate while the files are
//! half-written) keeps the previous pair and is logged; the next change is
//! tried again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{Identity, TlsError, provider};

/// A version of a file: its contents (modification times can repeat within
/// one clock tick, and sizes across certificates).
type Stamp = Option<Vec<u8>>;

fn stamp(path: &Path) -> Stamp {
    std::fs::read(path).ok()
}

/// A key pair read from `chain` and `key`, re-read when they change.
pub(crate) struct ReloadingKey {
    chain: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
}

struct State {
    current: Arc<CertifiedKey>,
    stamps: (Stamp, Stamp),
}

impl fmt::Debug for ReloadingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingKey")
            .field("chain", &self.chain)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The pair as rustls signs with it; fails when the key does not match the certificate.
pub(crate) fn certified(identity: &Identity) -> Result<CertifiedKey, TlsError> {
    Ok(CertifiedKey::from_der(
        identity.chain.clone(),
        identity.private_key(),
        &provider(),
    )?)
}

impl ReloadingKey {
    /// Starts from `identity`, which was read from `chain` and `key`.
    pub(crate) fn new(identity: &Identity, chain: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            chain: chain.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(State {
                current: Arc::new(certified(identity)?),
                stamps: (stamp(chain), stamp(key)),
            }),
        })
    }

    /// The pair to use now, re-read first if either file changed.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        if self.chain.as_os_str().is_empty() {
            return self.state.lock().expect("certificate state").current.clone();
        }
        let stamps = (stamp(&self.chain), stamp(&self.key));
        let mut state = self.state.lock().expect("certificate state");
        if stamps != state.stamps {
            state.stamps = stamps;
            match Identity::from_files(&self.chain, &self.key).and_then(|id| certified(&id)) {
                Ok(pair) => {
                    tracing::info!(certificate = %self.chain.display(), "certificate file changed; using the new certificate");
                    state.current = Arc::new(pair);
                }
                Err(err) => tracing::warn!(
                    certificate = %self.chain.display(),
                    %err,
                    "certificate files changed but cannot be used; keeping the previous certificate"
                ),
            }
        }
        state.current.clone()
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
