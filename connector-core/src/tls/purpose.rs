//! Extended key usage (EKU) and frontend client allow-lists: what a
//! certificate may be used for, and by whom.
//!
//! rustls' WebPKI verifiers refuse a certificate whose EKU extension lacks
//! the purpose, but take one with *no* EKU extension for any purpose (RFC
//! 5280 allows it). A certificate without EKU (say, an agent's client
//! certificate from an older PKI) would then pass as the server's
//! certificate, and the server's as an agent's. connector requires the
//! extension and the purpose on every leaf: [`check_purpose`], applied by
//! the verifiers built here after the chain is verified.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName, OtherError};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The purpose a certificate is presented for; its extended key usage
/// extension must list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// TLS server authentication (`id-kp-serverAuth`): the server's
    /// certificate as agents see it, a frontend's certificate.
    ServerAuth,
    /// TLS client authentication (`id-kp-clientAuth`): an agent's client
    /// certificate, a frontend client's (kube-apiserver's).
    ClientAuth,
}

impl fmt::Display for KeyPurpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyPurpose::ServerAuth => "serverAuth",
            KeyPurpose::ClientAuth => "clientAuth",
        })
    }
}

/// Why a certificate is refused for a purpose or a frontend. Its `Debug`
/// output is its message, because rustls shows it that way in handshake
/// errors.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum PurposeError {
    /// The certificate has no extended key usage extension at all.
    #[error(
        "the certificate has no extended key usage extension, and connector needs one listing {0}: reissue it with extendedKeyUsage = {0}"
    )]
    NoExtendedKeyUsage(KeyPurpose),
    /// The extension does not list the purpose.
    #[error("the certificate's extended key usage does not list {0}: reissue it with extendedKeyUsage = {0}")]
    PurposeNotListed(KeyPurpose),
    /// The certificate could not be parsed.
    #[error("unparsable certificate: {0}")]
    Unparsable(String),
    /// A frontend client whose names are not on the frontend's allow-list.
    #[error(
        "client certificate {cn:?} (DNS names: {dns:?}) is not on the frontend's allow-list: add its common name to --frontend-allow-client / FrontendTls::allowed_clients if it may dial"
    )]
    ClientNotAllowed {
        /// The certificate's subject common name (empty without one).
        cn: String,
        /// Its DNS subject alternative names.
        dns: Vec<String>,
    },
}

impl fmt::Debug for PurposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<PurposeError> for rustls::Error {
    fn from(err: PurposeError) -> Self {
        let cert_error = match err {
            PurposeError::PurposeNotListed(_) => CertificateError::InvalidPurpose,
            PurposeError::ClientNotAllowed { .. } => CertificateError::ApplicationVerificationFailure,
            // Sent as `certificate_unknown`; the local error keeps the message.
            other => CertificateError::Other(OtherError(Arc::new(other))),
        };
        rustls::Error::InvalidCertificate(cert_error)
    }
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PurposeError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| PurposeError::Unparsable(e.to_string()))
}

/// Checks that the DER certificate's extended key usage extension exists
/// and lists `purpose` (`anyExtendedKeyUsage` does not count, as in WebPKI).
pub fn check_purpose(der: &[u8], purpose: KeyPurpose) -> Result<(), PurposeError> {
    let cert = parse(der)?;
    let eku = cert
        .extended_key_usage()
        .map_err(|e| PurposeError::Unparsable(e.to_string()))?
        .ok_or(PurposeError::NoExtendedKeyUsage(purpose))?
        .value;
    let listed = match purpose {
        KeyPurpose::ServerAuth => eku.server_auth,
        KeyPurpose::ClientAuth => eku.client_auth,
    };
    if listed {
        Ok(())
    } else {
        Err(PurposeError::PurposeNotListed(purpose))
    }
}

/// Checks a frontend client's certificate against `allowed`: admitted when
/// its subject common name equals an entry exactly, or one of its DNS
/// subject alternative names equals one ignoring ASCII case.
pub fn check_allowed_client(der: &[u8], allowed: &[String]) -> Result<(), PurposeError> {
    let cert = parse(der)?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(name) = name {
                dns.push((*name).to_owned());
            }
        }
    }
    let listed = allowed
        .iter()
        .any(|entry| (!cn.is_empty() && *entry == cn) || dns.iter().any(|name| name.eq_ignore_ascii_case(entry)));
    if listed {
        Ok(())
    } else {
        Err(PurposeError::ClientNotAllowed { cn, dns })
    }
}

/// Agent side: the chain as `inner` verifies it, then serverAuth on the leaf.
#[derive(Debug)]
pub(crate) struct ServerAuthVerifier {
    pub(crate) inner: Arc<dyn ServerCertVerifier>,
}

impl ServerCertVerifier for ServerAuthVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        check_purpose(end_entity, KeyPurpose::ServerAuth).inspect_err(|err| {
            tracing::warn!(%err, "refusing the server's certificate");
        })?;
        Ok(verified)
    }

    delegate_signatures!(inner);
}

/// Server and frontend side: the chain as `inner` verifies it, then
/// clientAuth on the leaf and, for a frontend with an allow-list, the
/// client's name.
#[derive(Debug)]
pub(crate) struct ClientAuthVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    /// Frontends only: the clients admitted (empty: any the CAs issued).
    pub(crate) allowed: Arc<[String]>,
}

impl ClientCertVerifier for ClientAuthVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let check = || {
            check_purpose(end_entity, KeyPurpose::ClientAuth)?;
            if !self.allowed.is_empty() {
                check_allowed_client(end_entity, &self.allowed)?;
            }
            Ok::<_, PurposeError>(())
        };
        check().inspect_err(|err| tracing::warn!(%err, "refusing a client certificate"))?;
        Ok(verified)
    }

    delegate_signatures!(inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ThrowawayCa;
    use rustls_pki_types::pem::PemObject;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_certificate_needs_the_purpose_it_is_used_for() {
        let ca = ThrowawayCa::new("ca").unwrap();
        let server = der(&ca.issue_server("s", &["localhost"]).unwrap().cert_pem);
        let client = der(&ca.issue_client("c", &[]).unwrap().cert_pem);
        let both = der(&ca.issue("b", &[]).unwrap().cert_pem);
        let none = der(&ca.issue_for("n", &[], &[]).unwrap().cert_pem);
        assert_eq!(check_purpose(&server, KeyPurpose::ServerAuth), Ok(()));
        assert_eq!(
            check_purpose(&server, KeyPurpose::ClientAuth),
            Err(PurposeError::PurposeNotListed(KeyPurpose::ClientAuth))
        );
        assert_eq!(check_purpose(&client, KeyPurpose::ClientAuth), Ok(()));
        assert_eq!(
            check_purpose(&client, KeyPurpose::ServerAuth),
            Err(PurposeError::PurposeNotListed(KeyPurpose::ServerAuth))
        );
        assert!(
            check_purpose(&both, KeyPurpose::ServerAuth).is_ok()
                && check_purpose(&both, KeyPurpose::ClientAuth).is_ok()
        );
        for purpose in [KeyPurpose::ServerAuth, KeyPurpose::ClientAuth] {
            let err = check_purpose(&none, purpose).unwrap_err();
            assert_eq!(err, PurposeError::NoExtendedKeyUsage(purpose));
            assert!(
                err.to_string().contains(&format!("extendedKeyUsage = {purpose}")),
                "{err}"
            );
        }
        assert!(matches!(
            check_purpose(b"garbage", KeyPurpose::ServerAuth),
            Err(PurposeError::Unparsable(_))
        ));
    }

    #[test]
    fn allow_lists_match_the_common_name_or_a_dns_name() {
        let ca = ThrowawayCa::new("ca").unwrap();
        let apiserver = der(&ca.issue_client("kube-apiserver", &[]).unwrap().cert_pem);
        let by_dns = der(&ca.issue_client("some CN", &["Apiserver.Example"]).unwrap().cert_pem);
        let agent = der(&ca.issue_client("node-a", &["node-a"]).unwrap().cert_pem);
        let allowed = ["kube-apiserver".to_owned(), "apiserver.example".to_owned()];
        assert_eq!(check_allowed_client(&apiserver, &allowed), Ok(()));
        assert_eq!(check_allowed_client(&by_dns, &allowed), Ok(()));
        let err = check_allowed_client(&agent, &allowed).unwrap_err();
        assert!(
            err.to_string().contains("\"node-a\"") && err.to_string().contains("allow-list"),
            "{err}"
        );
        // The common name is compared exactly.
        assert!(check_allowed_client(&apiserver, &["Kube-Apiserver".to_owned()]).is_err());
    }
}
