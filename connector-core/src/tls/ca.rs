//! CA bundles that follow their files: the verifiers built from a bundle read
//! from a file compare the file's contents with what they use at every
//! handshake and rebuild themselves when it changed, so a CA rotation (a
//! bundle gaining the new CA, then losing the old one) needs no restart. A
//! broken update (unreadable, no certificate, a certificate rustls refuses)
//! keeps the previous bundle and is logged; the next change is tried again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::follow::Following;
use super::purpose::{ClientAuthVerifier, ServerAuthVerifier};
use super::{TlsError, certs_from_pem, crypto_provider, read};

/// CA certificates a peer's certificate must chain to. Certificates read
/// with [`CaBundle::from_file`] follow their file: TLS configurations built
/// from the bundle use the file's new contents from the next handshake on.
#[derive(Clone, Default, PartialEq)]
pub struct CaBundle {
    /// Certificates given directly; they never change.
    fixed: Vec<CertificateDer<'static>>,
    /// Files followed, with the certificates each held when read.
    files: Vec<(PathBuf, Vec<CertificateDer<'static>>)>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("fixed", &self.fixed.len())
            .field("files", &self.files().collect::<Vec<_>>())
            .finish()
    }
}

impl From<Vec<CertificateDer<'static>>> for CaBundle {
    fn from(certs: Vec<CertificateDer<'static>>) -> Self {
        Self {
            fixed: certs,
            files: Vec::new(),
        }
    }
}

impl CaBundle {
    /// Parses a PEM bundle (at least one certificate); `what` names it in errors.
    /// The certificates never change.
    pub fn from_pem(pem: &[u8], what: &str) -> Result<Self, TlsError> {
        Ok(certs_from_pem(pem, what)?.into())
    }

    /// Reads a PEM bundle (at least one certificate) from a file, and follows the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let certs = certs_from_pem(&read(path)?, &path.display().to_string())?;
        Ok(Self {
            fixed: Vec::new(),
            files: vec![(path.to_owned(), certs)],
        })
    }

    /// Adds `other`'s certificates and files to this bundle.
    pub fn extend(&mut self, other: CaBundle) {
        self.fixed.extend(other.fixed);
        self.files.extend(other.files);
    }

    /// The certificates, as given or as last read here (not as a running verifier follows them).
    pub fn certs(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.fixed.iter().chain(self.files.iter().flat_map(|(_, certs)| certs))
    }

    /// The files this bundle follows.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(path, _)| path.as_path())
    }

    /// What an agent trusts, for an error message: `the CA in /etc/ca.pem`,
    /// `the CAs in a.pem, b.pem`, or the certificates given directly.
    pub fn describe(&self) -> String {
        let files: Vec<String> = self.files().map(|p| p.display().to_string()).collect();
        let given = match self.fixed.len() {
            0 => None,
            1 => Some("the CA certificate given directly".to_owned()),
            n => Some(format!("the {n} CA certificates given directly")),
        };
        let in_files = match files.len() {
            0 => None,
            1 => Some(format!("the CA in {}", files[0])),
            _ => Some(format!("the CAs in {}", files.join(", "))),
        };
        match (in_files, given) {
            (Some(files), Some(given)) => format!("{files} and {given}"),
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => "no CA at all".to_owned(),
        }
    }

    /// Whether there is no certificate at all.
    pub fn is_empty(&self) -> bool {
        self.certs().next().is_none()
    }

    /// The verifier of server certificates (agent side).
    /// The leaf must also name serverAuth in its extended key usage
    /// ([`super::KeyPurpose`]).
    pub(crate) fn server_verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
        let inner: Arc<dyn ServerCertVerifier> = if self.files.is_empty() {
            webpki_server(roots(&self.fixed, &[])?)?
        } else {
            let fixed = self.fixed.clone();
            let following = self.follow(move |files| webpki_server(roots(&fixed, files)?))?;
            Arc::new(FollowingServerVerifier(following))
        };
        Ok(Arc::new(ServerAuthVerifier { inner }))
    }

    /// The verifier of client certificates (server side); `optional` accepts
    /// clients without one (the authenticator then decides). The leaf must
    /// also name clientAuth in its extended key usage and, when `allowed` is
    /// not empty, carry one of its names (frontends).
    pub(crate) fn client_verifier(
        &self,
        optional: bool,
        allowed: &[String],
    ) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let inner = if self.files.is_empty() {
            webpki_client(roots(&self.fixed, &[])?, optional)?
        } else {
            let fixed = self.fixed.clone();
            let following = self.follow(move |files| {
                let verifier = webpki_client(roots(&fixed, files)?, optional)?;
                // rustls borrows the hints from the verifier for as long as it
                // lives: each bundle in use keeps its own, a few hundred bytes per
                // CA rotation.
                let hints: &'static [DistinguishedName] = Box::leak(verifier.root_hint_subjects().to_vec().into());
                Ok(ClientInner { verifier, hints })
            })?;
            Arc::new(FollowingClientVerifier(following))
        };
        Ok(Arc::new(ClientAuthVerifier {
            inner,
            allowed: allowed.into(),
        }))
    }

    fn follow<T: Clone>(
        &self,
        parse: impl Fn(&[(&Path, &[u8])]) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Following<T>, TlsError> {
        Following::load("CA bundle", self.files().map(Path::to_owned).collect(), parse)
    }
}

/// The root store of the fixed certificates and those in each file (each
/// must hold one at least); a certificate the store refuses names its file.
fn roots(fixed: &[CertificateDer<'static>], files: &[(&Path, &[u8])]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in fixed {
        roots.add(ca.clone())?;
    }
    for (path, pem) in files {
        let name = path.display().to_string();
        for cert in certs_from_pem(pem, &name)? {
            roots.add(cert).map_err(|e| TlsError::CaCertificate(name.clone(), e))?;
        }
    }
    Ok(Arc::new(roots))
}

fn webpki_server(roots: Arc<RootCertStore>) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(roots, crypto_provider())
        .build()
        .map_err(|e| TlsError::ServerCa(e.to_string()))
}

fn webpki_client(roots: Arc<RootCertStore>, optional: bool) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots, crypto_provider());
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| TlsError::ClientCa(e.to_string()))
}

/// Agent side: checks the file at each server certificate, then verifies with the bundle in use.
#[derive(Debug)]
struct FollowingServerVerifier(Following<Arc<WebPkiServerVerifier>>);

impl FollowingServerVerifier {
    fn inner(&self) -> Arc<WebPkiServerVerifier> {
        self.0.latest()
    }
}

impl ServerCertVerifier for FollowingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .current()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    delegate_signatures!(inner());

    // `root_hint_subjects`: the WebPKI verifier sends none (the default), and so does this one.
}

/// A client verifier in use, with its hints kept for as long as the process runs.
#[derive(Clone)]
struct ClientInner {
    verifier: Arc<dyn ClientCertVerifier>,
    hints: &'static [DistinguishedName],
}

/// Server side: checks the file when a handshake starts (rustls asks whether
/// to offer client authentication first), then verifies with the bundle in use.
#[derive(Debug)]
struct FollowingClientVerifier(Following<ClientInner>);

impl FollowingClientVerifier {
    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.latest().verifier
    }
}

impl ClientCertVerifier for FollowingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.0.current().verifier.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.latest().hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner().verify_client_cert(end_entity, intermediates, now)
    }

    delegate_signatures!(inner());
}
