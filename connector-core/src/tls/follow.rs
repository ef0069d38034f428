//! Values that follow their files: parsed from one or more files and parsed
//! again when the files' contents change. The contents are compared at every
//! use that asks for a check (a few small reads, against a handshake's
//! public-key operations). A broken update keeps the previous value and is
//! logged once per distinct content; the next change is tried again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{TlsError, read};

/// Builds the value from each file's path and contents, in the order given.
type Parse<T> = dyn Fn(&[(&Path, &[u8])]) -> Result<T, TlsError> + Send + Sync;

/// A value parsed from `paths`, parsed again when their contents change.
pub(crate) struct Following<T> {
    /// What the value is, for logs ("certificate", "CA bundle").
    what: &'static str,
    paths: Vec<PathBuf>,
    parse: Box<Parse<T>>,
    state: Mutex<State<T>>,
}

struct State<T> {
    current: T,
    /// The contents `current` (or the last broken update) was read from; `None` where unreadable.
    contents: Vec<Option<Vec<u8>>>,
}

impl<T> fmt::Debug for Following<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Following")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl<T: Clone> Following<T> {
    /// Reads `paths` and parses them now; fails if that fails.
    pub(crate) fn load(
        what: &'static str,
        paths: Vec<PathBuf>,
        parse: impl Fn(&[(&Path, &[u8])]) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let contents = paths.iter().map(|p| read(p)).collect::<Result<Vec<_>, _>>()?;
        let inputs: Vec<_> = paths
            .iter()
            .map(PathBuf::as_path)
            .zip(contents.iter().map(Vec::as_slice))
            .collect();
        let current = parse(&inputs)?;
        Ok(Self {
            what,
            paths,
            parse: Box::new(parse),
            state: Mutex::new(State {
                current,
                contents: contents.into_iter().map(Some).collect(),
            }),
        })
    }

    /// The value to use now, parsed again first if a file changed.
    pub(crate) fn current(&self) -> T {
        let reads: Vec<std::io::Result<Vec<u8>>> = self.paths.iter().map(std::fs::read).collect();
        let mut state = self.state.lock().expect("followed file state");
        let unchanged = (state.contents.iter().map(Option::as_ref)).eq(reads.iter().map(|r| r.as_ref().ok()));
        if !unchanged {
            match self.parse_reads(&reads) {
                Ok(value) => {
                    tracing::info!(file = %self.files(), "{} file changed; using the new one", self.what);
                    state.current = value;
                }
                Err(err) => tracing::warn!(
                    file = %self.files(),
                    %err,
                    "{} file changed but cannot be used; keeping the previous one",
                    self.what
                ),
            }
            state.contents = reads.into_iter().map(Result::ok).collect();
        }
        state.current.clone()
    }

    /// The value in use, without looking at the files.
    pub(crate) fn latest(&self) -> T {
        self.state.lock().expect("followed file state").current.clone()
    }

    fn parse_reads(&self, reads: &[std::io::Result<Vec<u8>>]) -> Result<T, TlsError> {
        let mut inputs = Vec::with_capacity(reads.len());
        for (path, read) in self.paths.iter().zip(reads) {
            match read {
                Ok(bytes) => inputs.push((path.as_path(), bytes.as_slice())),
                Err(err) => {
                    return Err(TlsError::Read {
                        path: path.display().to_string(),
                        source: std::io::Error::new(err.kind(), err.to_string()),
                    });
                }
            }
        }
        (self.parse)(&inputs)
    }

    fn files(&self) -> String {
        let names: Vec<_> = self.paths.iter().map(|p| p.display().to_string()).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(files: &[(&Path, &[u8])]) -> Result<u32, TlsError> {
        let text = String::from_utf8_lossy(files[0].1);
        text.trim()
            .parse()
            .map_err(|_| TlsError::NoCertificate(files[0].0.display().to_string()))
    }

    #[test]
    fn follows_changes_and_keeps_the_last_good_value() {
        let dir = std::env::temp_dir().join(format!("connector-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("value");
        std::fs::write(&file, "1").unwrap();
        let following = Following::load("number", vec![file.clone()], number).unwrap();
        assert_eq!(following.current(), 1);

        std::fs::write(&file, "2").unwrap();
        assert_eq!(following.latest(), 1, "latest() does not look at the file");
        assert_eq!(following.current(), 2);

        for broken in ["two", "three"] {
            std::fs::write(&file, broken).unwrap();
            assert_eq!(following.current(), 2);
        }
        std::fs::remove_file(&file).unwrap();
        assert_eq!(following.current(), 2);

        std::fs::write(&file, "3").unwrap();
        assert_eq!(following.current(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_file_at_start_is_an_error() {
        let missing = std::env::temp_dir().join("connector-follow-missing/value");
        assert!(matches!(
            Following::load("number", vec![missing], number),
            Err(TlsError::Read { .. })
        ));
    }
}
