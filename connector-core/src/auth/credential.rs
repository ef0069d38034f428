//! Agent side: where the credential in each `Hello` comes from.

use std::path::PathBuf;

use zeroize::Zeroizing;

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
/// Surrounding whitespace is ignored. A file other users may read is
/// warned about once ([`crate::secret_file::warn_if_exposed`]).
#[derive(Debug, Clone)]
pub struct TokenFile(pub PathBuf);

impl TokenFile {
    /// Reads the token now, as a start-up check: a file that is missing,
    /// unreadable or empty when the agent starts is a configuration error
    /// (the agent then retries only for a file that goes away later, during
    /// a rotation).
    pub fn check(&self) -> Result<(), CredentialError> {
        self.token(std::fs::read(&self.0)).map(drop)
    }

    /// The credential in `read`, the file's content.
    fn token(&self, read: std::io::Result<Vec<u8>>) -> Result<Credential, CredentialError> {
        let path = self.0.display().to_string();
        // Zeroed when dropped: the token is copied into the `Secret`.
        let text = Zeroizing::new(read.map_err(|source| CredentialError::Read {
            path: path.clone(),
            source,
        })?);
        crate::secret_file::warn_if_exposed(&self.0, "token file");
        let token = text.trim_ascii();
        if token.is_empty() {
            return Err(CredentialError::Empty(path));
        }
        Ok(Credential::Bearer(Secret::new(token)))
    }
}

impl CredentialSource for TokenFile {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, CredentialError>> {
        Box::pin(async move { self.token(tokio::fs::read(&self.0).await) })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::secret_file::tests::{file_with_mode, logs_of};

    /// Issue 16, item 10: the agent's token file, re-read at every attempt,
    /// is warned about once when others may read it.
    #[test]
    fn an_exposed_token_file_is_warned_about_once() {
        let path = file_with_mode("agent-token", 0o604, " tok-agent \n");
        let source = TokenFile(path.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let logs = logs_of(|| {
            for _ in 0..3 {
                let credential = runtime.block_on(source.credential()).unwrap();
                assert_eq!(credential, Credential::Bearer(Secret::new("tok-agent")));
            }
        });
        let warnings: Vec<_> = logs.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 1, "{logs}");
        assert!(
            warnings[0].contains(&format!("token file {}", path.display())),
            "{logs}"
        );
        assert!(
            warnings[0].contains("mode 0604") && warnings[0].contains("chmod 600"),
            "{logs}"
        );
        assert!(!logs.contains("tok-agent"), "{logs}");
    }
}
