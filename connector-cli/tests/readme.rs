//! The README's walkthrough ("Server and agent as separate processes"), run
//! as written: the commands are read from the README's block marked
//! `<!-- readme-walkthrough ... -->`, each run with `sh -c` in an empty
//! directory, with a fresh `HOME` and the `connector` binary under test first
//! on the `PATH` (what `cargo install --path connector-cli` gives a reader).
//!
//! A line ending in `&` is a process that keeps running, as in a terminal of
//! its own: the harness starts it, waits (hang guard: 60 s) for the log line
//! its `# wait for "..."` comment names, as the reader does, and stops it at
//! the end. Every other line must exit 0 (hang guard: 60 s). What the `curl`
//! lines print, one after the other, must be the README's block marked
//! `<!-- readme-walkthrough-output -->`.
//!
//! The walkthrough uses fixed ports (8000, 8443, ...). Where unprivileged user
//! and network namespaces are available (`unshare -rn`), the test runs itself
//! again in a network namespace of its own, a fresh loopback where those ports
//! are free whatever else the machine runs; elsewhere it uses the machine's.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

/// Set in the copy of this test that runs in its own network namespace.
const IN_NETNS: &str = "CONNECTOR_README_TEST_IN_NETNS";
const TEST_NAME: &str = "the_readme_walkthrough_runs_verbatim_and_reaches_the_service";
const HANG_GUARD: Duration = Duration::from_secs(60);

#[test]
fn the_readme_walkthrough_runs_verbatim_and_reaches_the_service() {
    if std::env::var_os(IN_NETNS).is_none()
        && let Some(ip) = namespace_tool()
    {
        // The same test, again, as root of a new user namespace with a
        // network namespace of its own (its loopback brought up first).
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("unshare")
            .args(["--user", "--map-root-user", "--net", "--", "sh", "-c"])
            .arg(r#"ip="$1"; shift; "$ip" link set lo up && exec "$@""#)
            .arg("sh")
            .arg(ip)
            .arg(exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(IN_NETNS, "1")
            .output()
            .expect("run unshare");
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("{stdout}");
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the walkthrough failed in its network namespace ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    if std::env::var_os(IN_NETNS).is_none() {
        eprintln!("no `unshare -rn` here: the walkthrough runs on this machine's loopback and needs its ports free");
    }
    run_walkthrough();
}

/// The `ip` binary, if `unshare -rn` works here and can bring up loopback.
fn namespace_tool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let ip = std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("ip"))
        .find(|ip| ip.is_file())?;
    let works = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net"])
        .arg(&ip)
        .args(["link", "set", "lo", "up"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    works.then_some(ip)
}

/// One command of the walkthrough, as the README writes it.
#[derive(Debug)]
struct Step {
    /// The shell text (continuation lines included), without a trailing `&`.
    command: String,
    /// A line ending in `&`: the log line to wait for.
    background: Option<String>,
}

fn run_walkthrough() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let steps = parse_steps(&fenced_block_after(&readme, "<!-- readme-walkthrough:"));
    let expected = fenced_block_after(&readme, "<!-- readme-walkthrough-output -->");
    assert!(
        steps.iter().any(|s| s.command.starts_with("curl ")),
        "the walkthrough has no curl: {steps:?}"
    );

    // A fresh machine: an empty directory, a HOME and state directories of
    // its own, `connector` (the binary under test) first on the PATH.
    let root = common::temp_dir("readme");
    let (work, bin, home) = (root.join("work"), root.join("bin"), root.join("home"));
    for dir in [&work, &bin, &home] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::os::unix::fs::symlink(common::BIN, bin.join("connector")).unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin.clone()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let shell = |command: &str| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(command).current_dir(&work).env_clear();
        cmd.env("PATH", &path).env("HOME", &home).env("LANG", "C.UTF-8");
        for (var, dir) in [
            ("XDG_CONFIG_HOME", ".config"),
            ("XDG_CACHE_HOME", ".cache"),
            ("XDG_DATA_HOME", ".local/share"),
            ("XDG_STATE_HOME", ".local/state"),
        ] {
            cmd.env(var, home.join(dir));
        }
        // A terminal shows a program's output line by line; Python buffers
        // its stdout when it is a pipe, as here, unless told not to.
        cmd.env("PYTHONUNBUFFERED", "1");
        cmd
    };

    let mut running = Vec::new();
    let mut transcript = String::new();
    let mut printed = String::new();
    for step in &steps {
        transcript.push_str(&format!(
            "$ {}{}\n",
            step.command,
            if step.background.is_some() { " &" } else { "" }
        ));
        match &step.background {
            Some(needle) => {
                let mut process = Background::spawn(shell(&step.command), &step.command);
                let line = process.wait_for(needle);
                transcript.push_str(&format!("  (ready: {line})\n"));
                running.push(process);
            }
            None => {
                let stdout = run(shell(&step.command), &step.command, &running);
                transcript.push_str(&stdout);
                if step.command.starts_with("curl ") {
                    printed.push_str(&stdout);
                }
            }
        }
    }
    println!("{transcript}");
    assert_eq!(
        printed,
        expected,
        "the README's curls printed something else than its output block\n{transcript}\n{}",
        logs(&running)
    );
    drop(running);
    let _ = std::fs::remove_dir_all(&root);
}

/// The text of the first fenced block after the line starting with `marker`.
fn fenced_block_after(readme: &str, marker: &str) -> String {
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.starts_with(marker))
        .skip(1)
        .skip_while(|l| !l.starts_with("```"));
    assert!(lines.next().is_some(), "README.md: no fenced block after {marker:?}");
    let mut block = String::new();
    for line in lines.by_ref() {
        if line.starts_with("```") {
            return block;
        }
        block.push_str(line);
        block.push('\n');
    }
    panic!("README.md: the block after {marker:?} does not end");
}

/// Splits `line` into its code and its comment (from a `#` that starts a
/// word outside quotes).
fn split_comment(line: &str) -> (&str, Option<&str>) {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return (&line[..i], Some(&line[i + 1..])),
            _ => {}
        }
        previous = c;
    }
    (line, None)
}

/// The commands of the block: continuation lines joined, comments off, a
/// trailing `&` read as "keeps running" with its `# wait for "..."` comment.
fn parse_steps(block: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut command = String::new();
    for line in block.lines() {
        let (code, comment) = split_comment(line);
        if !command.is_empty() {
            command.push('\n');
        }
        command.push_str(code.trim_end());
        if command.ends_with('\\') {
            continue;
        }
        let text = std::mem::take(&mut command);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let background = text.ends_with('&') && !text.ends_with("&&");
        let needle = comment
            .and_then(|c| c.split_once("wait for \""))
            .and_then(|(_, rest)| rest.split_once('"'));
        let step = Step {
            command: text.trim_end_matches('&').trim_end().to_owned(),
            background: background.then(|| {
                needle
                    .unwrap_or_else(|| panic!("README.md: `{text}` keeps running but has no `# wait for \"LOG LINE\"`"))
                    .0
                    .to_owned()
            }),
        };
        steps.push(step);
    }
    assert!(
        command.is_empty(),
        "README.md: the walkthrough ends inside a continued line"
    );
    steps
}

/// Runs a command to its end (hang guard) and returns its stdout; panics
/// unless it exits 0.
fn run(mut cmd: Command, text: &str, running: &[Background]) -> String {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("run `{text}`: {e}"));
    let (tx, rx) = mpsc::channel();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        let reader = std::thread::spawn(move || {
            let _ = stderr.read_to_string(&mut err);
            err
        });
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send((out, reader.join().unwrap_or_default()));
    });
    let Ok((out, err)) = rx.recv_timeout(HANG_GUARD) else {
        kill_group(&mut child);
        panic!("`{text}` did not end within {HANG_GUARD:?}");
    };
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "`{text}` failed ({status}):\n{out}{err}\nwhat the running processes logged:\n{}",
        logs(running)
    );
    out
}

/// A process the walkthrough leaves running, in a process group of its own,
/// killed (the whole group) when dropped.
struct Background {
    child: Child,
    text: String,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Background {
    fn spawn(mut cmd: Command, text: &str) -> Background {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start `{text}`: {e}"));
        let (tx, lines) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for pipe in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Background {
            child,
            text: text.to_owned(),
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for an output line containing `needle` (hang guard), as the
    /// reader watching its terminal does; panics if the process ends first.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "`{}` ended ({:?}) before logging {needle:?}:\n{}",
                    self.text,
                    self.child.wait(),
                    self.seen.join("\n")
                ),
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "`{}` did not log {needle:?} within {HANG_GUARD:?}:\n{}",
                    self.text,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// What it has logged so far.
    fn log(&self) -> String {
        let mut seen = self.seen.clone();
        seen.extend(self.lines.try_iter());
        format!("--- {}\n{}", self.text, seen.join("\n"))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Kills `child`'s process group (it leads one) and reaps it.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// What each running process has logged so far.
fn logs(running: &[Background]) -> String {
    running.iter().map(Background::log).collect::<Vec<_>>().join("\n")
}
