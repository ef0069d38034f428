//! Agent side: where the credential in each `Hello` comes from.

use std::path::PathBuf;

use crate::proto::{Credential, Secret};
use crate::transport::BoxFuture;

/// The credential could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("token file {0} is empty")]
    Empty(String),
}

/// Supplies the agent's credential, asked afresh at every connection attempt.
pub trait CredentialSource: Send + Sync + 'static {
    /// The credential to present now.
    fn credential(&self) -> BoxFuture<'_, Result<Credential, CredentialError>>;
}

/// A fixed credential (or [`Credential::None`] for certificate-only agents).
#[derive(Debug, Clone, Default)]
pub struct StaticCredential(pub Credential);

impl CredentialSource for StaticCredential {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, CredentialError>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// A bearer token read from a file at each attempt, so a rotated token (a
/// projected service-account token, a re-issued secret) is picked up.
/// Surrounding whitespace is ignored.
#[derive(Debug, Clone)]
pub struct TokenFile(pub PathBuf);

impl CredentialSource for TokenFile {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, CredentialError>> {
        Box::pin(async move {
            let path = self.0.display().to_string();
            let text = tokio::fs::read(&self.0).await.map_err(|source| CredentialError::Read {
                path: path.clone(),
                source,
            })?;
            let token = text.trim_ascii();
            if token.is_empty() {
                return Err(CredentialError::Empty(path));
            }
            Ok(Credential::Bearer(Secret::new(token)))
        })
    }
}
