//! Bearer-token authentication. Tokens are kept only as SHA-256 digests and
//! compared in constant time; a tokens file is re-read whenever it changes, so
//! rotating a token needs no restart.
//!
//! Tokens file format, one agent per line (`#` starts a comment):
//!
//! ```text
//! # TOKEN                IDENTITY   MAY CLAIM (optional)
//! 3f9c0a...e1            node-a     host=node-a,ipv4=10.0.0.5
//! 77b1d2...0c            gateway    *
//! ```
//!
//! Without a third column the identity may claim `host=IDENTITY` only; `*`
//! lets it claim anything. An identity name may not contain `/` or control
//! characters ([`super::check_identity_name`]): a file with one is refused.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{AgentIdentity, Allowance, AuthRejection, AuthRequest, Authenticator, check_identity_name};
use crate::identifiers::Identifiers;
use crate::proto::{Credential, Secret};
use crate::transport::BoxFuture;

/// One accepted token and what it grants. Its `Debug` output omits the
/// token's digest (a digest of a weak token could be brute-forced offline).
#[derive(Clone)]
pub struct TokenEntry {
    digest: [u8; 32],
    identity: AgentIdentity,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("digest", &"<redacted>")
            .field("identity", &self.identity)
            .finish()
    }
}

impl TokenEntry {
    /// Accepts `token` as identity `name` with the given allowance. A `name`
    /// that fails [`super::check_identity_name`] is refused when an agent
    /// presents the token.
    pub fn new(token: &Secret, name: impl Into<String>, allowance: Allowance) -> Self {
        Self {
            digest: Sha256::digest(token.expose()).into(),
            identity: AgentIdentity {
                name: name.into(),
                allowance,
            },
        }
    }
}

/// A malformed tokens file.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is not `TOKEN IDENTITY [IDENTIFIERS|*]`.
    #[error("tokens file {path}, line {line}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the token itself).
        reason: String,
    },
}

/// Parses the tokens file format (see the module docs); `path` only names
/// the file in errors. Errors never quote a token.
pub fn parse_tokens(text: &str, path: &str) -> Result<Vec<TokenEntry>, TokenFileError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let syntax = |reason: String| TokenFileError::Syntax {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let mut cols = line.split_whitespace();
        let token = cols.next().expect("non-empty line");
        let name = cols
            .next()
            .ok_or_else(|| syntax("expected TOKEN IDENTITY [IDENTIFIERS|*]".into()))?;
        check_identity_name(name).map_err(|e| syntax(e.to_string()))?;
        let allowance = match cols.next() {
            None => Allowance::Only(format!("host={name}").parse().map_err(|e| syntax(format!("{e}")))?),
            Some("*") => Allowance::Any,
            Some(ids) => Allowance::Only(ids.parse::<Identifiers>().map_err(|e| syntax(e.to_string()))?),
        };
        if cols.next().is_some() {
            return Err(syntax("too many columns".into()));
        }
        entries.push(TokenEntry::new(&Secret::new(token), name, allowance));
    }
    Ok(entries)
}

/// Accepts agents presenting one of a set of bearer tokens.
pub struct TokenAuthenticator {
    file: Option<PathBuf>,
    state: Mutex<TokenState>,
}

/// Modification time and length of a file, to notice rewrites.
type Stamp = Option<(SystemTime, u64)>;

struct TokenState {
    /// The tokens file's stamp when last loaded.
    stamp: Stamp,
    entries: Vec<TokenEntry>,
}

impl TokenAuthenticator {
    /// A fixed set of tokens.
    pub fn from_entries(entries: Vec<TokenEntry>) -> Self {
        Self {
            file: None,
            state: Mutex::new(TokenState { stamp: None, entries }),
        }
    }

    /// Tokens from a file, re-read when its modification time or size changes.
    /// Fails now if the file is unreadable or malformed; later, a broken
    /// rewrite keeps the previous tokens in force and is logged.
    /// Warns (once) when users other than its owner may read it
    /// ([`crate::secret_file::warn_if_exposed`]).
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, TokenFileError> {
        let path = path.into();
        let (stamp, entries) = load(&path)?;
        crate::secret_file::warn_if_exposed(&path, "tokens file");
        Ok(Self {
            file: Some(path),
            state: Mutex::new(TokenState { stamp, entries }),
        })
    }

    fn refresh(&self) {
        let Some(path) = &self.file else { return };
        let current = stamp(path);
        if current.is_some() && current == self.state.lock().expect("token state").stamp {
            return;
        }
        match load(path) {
            Ok((stamp, entries)) => {
                tracing::info!(path = %path.display(), tokens = entries.len(), "reloaded tokens file");
                *self.state.lock().expect("token state") = TokenState { stamp, entries };
            }
            Err(err) => tracing::error!(%err, "keeping the previous tokens"),
        }
    }

    fn lookup(&self, token: &Secret) -> Option<AgentIdentity> {
        let digest: [u8; 32] = Sha256::digest(token.expose()).into();
        let state = self.state.lock().expect("token state");
        // Compare against every entry so timing does not reveal which one matched.
        let mut found = None;
        for entry in &state.entries {
            if bool::from(entry.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(entry.identity.clone());
            }
        }
        found
    }
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn load(path: &Path) -> Result<(Stamp, Vec<TokenEntry>), TokenFileError> {
    let before = stamp(path);
    // Zeroed when dropped, like every copy of a token this process makes.
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.display().to_string(),
        source,
    })?);
    Ok((before, parse_tokens(&text, &path.display().to_string())?))
}

impl Authenticator for TokenAuthenticator {
    fn authenticate<'a>(&'a self, request: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
        Box::pin(async move {
            let Credential::Bearer(token) = &request.hello.credential else {
                return Err(AuthRejection::unauthenticated("no bearer token presented"));
            };
            self.refresh();
            let identity = self
                .lookup(token)
                .ok_or_else(|| AuthRejection::unauthenticated("bearer token not recognised"))?;
            // Entries made with `TokenEntry::new` were not checked when loaded.
            check_identity_name(&identity.name)?;
            Ok(identity)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_file_format() {
        let entries = parse_tokens(
            "# comment\n\nabc node-a\ndef gw *\nghi n2 host=n2,cidr=10.0.0.0/8 # x\n",
            "f",
        )
        .unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0].identity.allowance,
            Allowance::Only("host=node-a".parse().unwrap())
        );
        assert_eq!(entries[1].identity.allowance, Allowance::Any);
        let err = parse_tokens("secret-token\n", "f").unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains("secret-token"), "{err}");
        assert!(parse_tokens("t n host=x extra\n", "f").is_err());
    }

    #[test]
    fn looks_up_tokens_by_digest() {
        let auth = TokenAuthenticator::from_entries(vec![
            TokenEntry::new(&Secret::new("one"), "a", Allowance::Any),
            TokenEntry::new(&Secret::new("two"), "b", Allowance::Any),
        ]);
        assert_eq!(auth.lookup(&Secret::new("two")).unwrap().name, "b");
        assert!(auth.lookup(&Secret::new("three")).is_none());
        assert!(auth.lookup(&Secret::new("")).is_none());
    }

    /// Issue 16, item 10: a tokens file others may read is used, and
    /// warned about once, with its path, mode and the fix.
    #[cfg(unix)]
    #[test]
    fn an_exposed_tokens_file_is_warned_about_once() {
        use crate::secret_file::tests::{file_with_mode, logs_of};
        let path = file_with_mode("tokens", 0o644, "tok-1 node-a\n");
        let logs = logs_of(|| {
            let auth = TokenAuthenticator::from_file(&path).unwrap();
            assert!(auth.lookup(&Secret::new("tok-1")).is_some());
            std::fs::write(&path, "tok-22 node-a\n").unwrap();
            auth.refresh();
            let _again = TokenAuthenticator::from_file(&path).unwrap();
        });
        let warnings: Vec<_> = logs.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 1, "{logs}");
        assert!(
            warnings[0].contains(&format!("tokens file {}", path.display())),
            "{logs}"
        );
        assert!(
            warnings[0].contains("mode 0644") && warnings[0].contains("chmod 600"),
            "{logs}"
        );
        assert!(!logs.contains("tok-1") && !logs.contains("tok-22"), "{logs}");
        let private = file_with_mode("tokens-private", 0o600, "tok-3 node-a\n");
        let logs = logs_of(|| drop(TokenAuthenticator::from_file(&private).unwrap()));
        assert!(!logs.contains("WARN"), "{logs}");
    }

    #[test]
    fn rereads_a_rotated_file() {
        let dir = std::env::temp_dir().join(format!("connector-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, "old node-a\n").unwrap();
        let auth = TokenAuthenticator::from_file(&path).unwrap();
        auth.refresh();
        assert!(auth.lookup(&Secret::new("old")).is_some());
        // A different length guarantees a new stamp even within one mtime tick.
        std::fs::write(&path, "newer-token node-a\n").unwrap();
        auth.refresh();
        assert!(auth.lookup(&Secret::new("old")).is_none());
        assert!(auth.lookup(&Secret::new("newer-token")).is_some());
        // A broken rewrite keeps the previous tokens.
        std::fs::write(&path, "lonely\n").unwrap();
        auth.refresh();
        assert!(auth.lookup(&Secret::new("newer-token")).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
