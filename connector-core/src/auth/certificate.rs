//! Client-certificate (mTLS) authentication. TLS has already verified the
//! chain against the server's client CA bundle, and that the leaf names
//! clientAuth in its extended key usage; this maps the leaf certificate to
//! an identity: its subject common name is the identity's name, and its DNS
//! and IP subject alternative names are what it may claim.

use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{AgentIdentity, Allowance, AuthRejection, AuthRequest, Authenticator, check_identity_name};
use crate::identifiers::{Identifiers, normalize_host, valid_host};
use crate::tls::{KeyPurpose, check_purpose};
use crate::transport::BoxFuture;

/// Accepts agents by their verified client certificate. Its subject common
/// name must be a valid identity name ([`super::check_identity_name`]: no
/// `/`, no control characters).
#[derive(Debug, Clone, Default)]
pub struct CertificateAuthenticator;

impl CertificateAuthenticator {
    /// Maps a DER leaf certificate to an identity. The certificate must
    /// name clientAuth in its extended key usage (checked again here for
    /// transports without TLS and for custom authenticators that call this).
    pub fn identity_of(der: &[u8]) -> Result<AgentIdentity, AuthRejection> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| AuthRejection::unauthenticated(format!("unparsable client certificate: {e}")))?;
        check_purpose(der, KeyPurpose::ClientAuth)
            .map_err(|e| AuthRejection::unauthenticated(format!("client certificate refused: {e}")))?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| AuthRejection::unauthenticated("client certificate has no subject common name"))?
            .to_owned();
        check_identity_name(&name).map_err(|e| {
            AuthRejection::unauthenticated(format!(
                "the client certificate's common name cannot be an identity: {e}"
            ))
        })?;
        let mut allowed = Identifiers::default();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for general in &san.value.general_names {
                match general {
                    GeneralName::DNSName(dns) if valid_host(dns) => allowed.hosts.push(normalize_host(dns)),
                    GeneralName::IPAddress(raw) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*raw) {
                            allowed.addresses.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*raw) {
                            allowed.addresses.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(AgentIdentity {
            name,
            allowance: Allowance::Only(allowed),
        })
    }
}

impl Authenticator for CertificateAuthenticator {
    fn authenticate<'a>(&'a self, request: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
        Box::pin(async move {
            let leaf = request
                .peer
                .certificates
                .first()
                .ok_or_else(|| AuthRejection::unauthenticated("no client certificate presented"))?;
            Self::identity_of(leaf)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ThrowawayCa;
    use rustls_pki_types::{CertificateDer, pem::PemObject};

    #[test]
    fn maps_subject_and_sans() {
        let ca = ThrowawayCa::new("test ca").unwrap();
        let issued = ca.issue("node-a", &["node-a.example", "10.0.0.5"]).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let id = CertificateAuthenticator::identity_of(&der).unwrap();
        assert_eq!(id.name, "node-a");
        assert_eq!(
            id.allowance,
            Allowance::Only("host=node-a.example,ipv4=10.0.0.5".parse().unwrap())
        );
        assert!(CertificateAuthenticator::identity_of(b"garbage").is_err());
    }

    #[test]
    fn needs_client_auth() {
        let ca = ThrowawayCa::new("test ca").unwrap();
        for purposes in [&[][..], &[KeyPurpose::ServerAuth]] {
            let issued = ca.issue_for("node-a", &["node-a"], purposes).unwrap();
            let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
            let err = CertificateAuthenticator::identity_of(&der).unwrap_err();
            assert!(err.reason.contains("clientAuth"), "{purposes:?}: {}", err.reason);
        }
        let issued = ca.issue_client("node-a", &["node-a"]).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(CertificateAuthenticator::identity_of(&der).unwrap().name, "node-a");
    }
}
