//! Throw-away certificates for `connector demo`, tests and benchmarks: a CA,
//! a server certificate and client certificates, generated in memory with
//! rcgen. Never use these in production; issue real certificates instead.
//!
//! Every leaf carries an extended key usage (EKU) extension, because
//! connector refuses a certificate without the purpose it is presented for
//! (see [`crate::tls::KeyPurpose`]): [`ThrowawayCa::issue_server`] and
//! [`ThrowawayCa::issue_client`] issue single-purpose certificates, as a real
//! PKI should; [`ThrowawayCa::issue`] issues one valid for both ends, for
//! tests that do not care.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};

use crate::tls::{Identity, KeyPurpose};

/// A freshly generated certificate authority.
pub struct ThrowawayCa {
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// A certificate issued by a [`ThrowawayCa`], as PEM.
#[derive(Clone)]
pub struct IssuedPem {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM). Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedPem")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl IssuedPem {
    /// Parses the PEM into an [`Identity`].
    pub fn identity(&self) -> Identity {
        Identity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes()).expect("rcgen emits valid PEM")
    }
}

impl ThrowawayCa {
    /// Generates a new CA named `name`.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { key, cert })
    }

    /// The CA certificate, as PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> rustls_pki_types::CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Issues a certificate with common name `cn` and the given DNS names and IP
    /// addresses as subject alternative names, valid both as a server and as a
    /// client certificate (EKU serverAuth and clientAuth): for tests and
    /// demos that use one certificate either way. Prefer
    /// [`ThrowawayCa::issue_server`] and [`ThrowawayCa::issue_client`].
    pub fn issue(&self, cn: &str, names: &[&str]) -> Result<IssuedPem, rcgen::Error> {
        self.issue_for(cn, names, &[KeyPurpose::ServerAuth, KeyPurpose::ClientAuth])
    }

    /// Issues a server certificate (EKU serverAuth only): what a connector
    /// server presents to agents, or a frontend to kube-apiserver.
    pub fn issue_server(&self, cn: &str, names: &[&str]) -> Result<IssuedPem, rcgen::Error> {
        self.issue_for(cn, names, &[KeyPurpose::ServerAuth])
    }

    /// Issues a client certificate (EKU clientAuth only): what an agent, or
    /// a frontend client such as kube-apiserver, presents.
    pub fn issue_client(&self, cn: &str, names: &[&str]) -> Result<IssuedPem, rcgen::Error> {
        self.issue_for(cn, names, &[KeyPurpose::ClientAuth])
    }

    /// Issues a certificate for exactly `purposes`; with none, the
    /// certificate has no EKU extension at all (which connector refuses at
    /// both ends; for tests of that).
    pub fn issue_for(&self, cn: &str, names: &[&str], purposes: &[KeyPurpose]) -> Result<IssuedPem, rcgen::Error> {
        self.issue_with(cn, names, purposes, |_| {})
    }

    /// Like [`ThrowawayCa::issue`], but the certificate expired long ago
    /// (valid only during the year 2000): for testing that peers refuse it.
    pub fn issue_expired(&self, cn: &str, names: &[&str]) -> Result<IssuedPem, rcgen::Error> {
        self.issue_with(cn, names, &[KeyPurpose::ServerAuth, KeyPurpose::ClientAuth], |params| {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        })
    }

    fn issue_with(
        &self,
        cn: &str,
        names: &[&str],
        purposes: &[KeyPurpose],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Result<IssuedPem, rcgen::Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = purposes
            .iter()
            .map(|purpose| match purpose {
                KeyPurpose::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
                KeyPurpose::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            })
            .collect();
        for name in names {
            params.subject_alt_names.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into()?),
            });
        }
        adjust(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(IssuedPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
