//! Files that hold secrets (TLS private keys, bearer tokens) should be
//! readable by their owner only. [`warn_if_exposed`] logs a warning, once
//! per file, for one that other users may read, as ssh does for private
//! keys; it never refuses the file (a mounted secret may be exposed on
//! purpose, and the file still works).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Files already warned about in this process.
static WARNED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Logs a warning (once per path in this process) when the file at `path`,
/// holding `what` (for example "TLS key file"), can be read by users other
/// than its owner: readable by others, or owned by this process's user and
/// open to its group or others at all (what ssh refuses for a private key;
/// a file owned by root and readable by the group, as a Kubernetes secret
/// volume with `defaultMode: 0440` and `fsGroup` mounts it, passes). A
/// file that cannot be inspected is left to the code that reads it to
/// report. Does nothing on platforms without Unix permissions.
pub fn warn_if_exposed(path: &Path, what: &str) {
    if let Some(mode) = exposed_mode(path) {
        let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
        if warned.get_or_insert_with(HashSet::new).insert(path.to_path_buf()) {
            tracing::warn!(
                path = %path.display(),
                mode = %format!("{mode:04o}"),
                "{what} {} can be read by other users (mode {mode:04o}); restrict it to its owner: chmod 600 {}",
                path.display(),
                path.display(),
            );
        }
    }
}

/// The permission bits of `path` when they expose it (see [`warn_if_exposed`]).
#[cfg(unix)]
fn exposed_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o7777;
    let ours = meta.uid() == rustix::process::geteuid().as_raw();
    let exposed = mode & 0o004 != 0 || (ours && mode & 0o077 != 0);
    exposed.then_some(mode)
}

#[cfg(not(unix))]
fn exposed_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(all(test, unix))]
pub(crate) mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines written while a closure runs on this thread.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` with a subscriber that records this thread's log lines, and returns them.
    pub(crate) fn logs_of(f: impl FnOnce()) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    /// A new file with `mode` in a fresh directory.
    pub(crate) fn file_with_mode(name: &str, mode: u32, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("connector-mode-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn warns_once_about_a_file_others_can_read() {
        let open = file_with_mode("open-key.pem", 0o644, "key");
        let logs = logs_of(|| warn_if_exposed(&open, "TLS key file"));
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains(&format!("TLS key file {}", open.display())), "{logs}");
        assert!(logs.contains("mode 0644") && logs.contains("chmod 600"), "{logs}");
        // Once per file.
        assert_eq!(logs_of(|| warn_if_exposed(&open, "TLS key file")), "");

        let group = file_with_mode("group-key.pem", 0o640, "key");
        let logs = logs_of(|| warn_if_exposed(&group, "TLS key file"));
        assert!(logs.contains("mode 0640"), "our own file, open to the group: {logs}");

        for private in [0o600, 0o400] {
            let path = file_with_mode(&format!("private-{private:o}"), private, "key");
            assert_eq!(logs_of(|| warn_if_exposed(&path, "TLS key file")), "", "{private:o}");
        }
        // A missing file is the reader's to report.
        assert_eq!(logs_of(|| warn_if_exposed(Path::new("/nonexistent/key"), "x")), "");
    }
}
