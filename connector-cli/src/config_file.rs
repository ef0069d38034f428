//! `--config FILE`: settings from a TOML file.
//!
//! Every setting a flag takes can come from the file, under the flag's long
//! name (`max-agents` or `max_agents`): global ones (`log`, `log-format`) at
//! the top level, the rest in a table named after the command (`[server]`,
//! `[agent]`, `[forward]`, `[agents]`). Lists (`allow`, `forward`) are TOML arrays.
//!
//! Precedence, highest first: command-line flag, environment variable
//! (`CONNECTOR_*`, shown in `--help`), config file, built-in default. The
//! file is turned into flags placed before the user's own; clap lets a later
//! flag override an earlier one, and a setting whose environment variable is
//! set is not taken from the file. List settings accumulate instead.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use clap::Command;

/// Flags that name the file itself.
const CONFIG_FLAGS: &[&str] = &["--config", "--check-config"];

/// Returns `args` with the settings of the file named by `--config FILE`,
/// `--check-config FILE` or `CONNECTOR_CONFIG` spliced in after the command name.
pub fn expand(args: Vec<OsString>, cli: &Command) -> anyhow::Result<Vec<OsString>> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("config file {}: not valid TOML", path.display()))?;
    let Some(position) = args.iter().position(|a| cli.find_subcommand(a).is_some()) else {
        return Ok(args);
    };
    let command = cli.find_subcommand(&args[position]).expect("found above");
    let name = command.get_name().to_owned();
    let mut global = Vec::new();
    let mut local = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(section) if key == &name => {
                for (key, value) in section {
                    local.extend(flags(&path, &format!("[{name}]"), command, key, value)?);
                }
            }
            toml::Value::Table(_) if cli.find_subcommand(key).is_some() => {} // another command's settings
            toml::Value::Table(_) => bail!(
                "config file {}: unknown section [{key}]: use [server], [agent], [forward] or [agents]",
                path.display()
            ),
            value => global.extend(flags(&path, "the top level", cli, key, value)?),
        }
    }
    let mut expanded = args[..position].to_vec();
    expanded.splice(1..1, global);
    expanded.push(args[position].clone());
    expanded.extend(local);
    expanded.extend_from_slice(&args[position + 1..]);
    Ok(expanded)
}

/// The file named on the command line or in `CONNECTOR_CONFIG`.
fn config_path(args: &[OsString]) -> Option<std::path::PathBuf> {
    for (i, arg) in args.iter().enumerate() {
        let text = arg.to_string_lossy();
        for flag in CONFIG_FLAGS {
            if text == *flag {
                return args.get(i + 1).map(Into::into);
            }
            if let Some(value) = text.strip_prefix(&format!("{flag}=")) {
                return Some(value.into());
            }
        }
    }
    std::env::var_os("CONNECTOR_CONFIG").map(Into::into)
}

/// The flags for one `key = value` of the file, checked against `command`'s arguments.
fn flags(path: &Path, place: &str, command: &Command, key: &str, value: &toml::Value) -> anyhow::Result<Vec<OsString>> {
    let long = key.replace('_', "-");
    let Some(arg) = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()) && !CONFIG_FLAGS.contains(&format!("--{long}").as_str()))
    else {
        bail!(
            "config file {}: unknown setting {key:?} in {place} (see `connector {} --help`)",
            path.display(),
            command.get_name()
        );
    };
    if arg.get_env().is_some_and(|env| std::env::var_os(env).is_some()) {
        return Ok(Vec::new()); // the environment variable wins over the file
    }
    let flag = OsString::from(format!("--{long}"));
    let scalar = |value: &toml::Value| -> anyhow::Result<OsString> {
        Ok(match value {
            toml::Value::String(s) => s.into(),
            toml::Value::Integer(i) => i.to_string().into(),
            toml::Value::Float(f) => f.to_string().into(),
            toml::Value::Boolean(b) => b.to_string().into(),
            other => bail!(
                "config file {}: setting {key:?} in {place} must be a string, number or boolean, not {}",
                path.display(),
                other.type_str()
            ),
        })
    };
    Ok(match value {
        toml::Value::Array(items) => items
            .iter()
            .map(|item| Ok([flag.clone(), scalar(item)?]))
            .collect::<anyhow::Result<Vec<_>>>()?
            .concat(),
        value => vec![flag, scalar(value)?],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Command {
        Command::new("connector")
            .args_override_self(true)
            .arg(clap::Arg::new("log").long("log").global(true))
            .arg(clap::Arg::new("config").long("config").global(true))
            .subcommand(
                Command::new("server")
                    .arg(clap::Arg::new("max-agents").long("max-agents"))
                    .arg(
                        clap::Arg::new("forward")
                            .long("forward")
                            .action(clap::ArgAction::Append),
                    ),
            )
            .subcommand(Command::new("agent"))
    }

    fn expand_with(file: &str, args: &[&str]) -> anyhow::Result<Vec<String>> {
        let dir = std::env::temp_dir().join(format!("connector-config-{}-{}", std::process::id(), file.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("connector.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["connector".into()];
        argv.extend(args.iter().map(OsString::from));
        argv.extend(["--config".into(), path.clone().into()]);
        let out = expand(argv, &cli())?;
        Ok(out[..out.len() - 2]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn file_settings_come_before_the_command_lines_own() {
        let out = expand_with(
            "log = 'debug'\n[server]\nmax_agents = 10\nforward = ['a=b:1', 'c=d:2']\n[agent]\nx = 1\n",
            &["server", "--max-agents", "20"],
        )
        .unwrap();
        assert_eq!(
            out,
            [
                "connector",
                "--log",
                "debug",
                "server",
                "--forward",
                "a=b:1",
                "--forward",
                "c=d:2",
                "--max-agents",
                "10",
                "--max-agents",
                "20"
            ]
        );
        let matches = cli().try_get_matches_from(&out).unwrap();
        let server = matches.subcommand_matches("server").unwrap();
        assert_eq!(server.get_one::<String>("max-agents").unwrap(), "20");
    }

    #[test]
    fn unknown_settings_and_bad_values_are_named() {
        let err = expand_with("[server]\nmax-agent = 1\n", &["server"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting \"max-agent\" in [server]"), "{err}");
        let err = expand_with("[server]\nmax-agents = { a = 1 }\n", &["server"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be a string, number or boolean"), "{err}");
        let err = expand_with("[sever]\n", &["server"]).unwrap_err().to_string();
        assert!(err.contains("unknown section [sever]"), "{err}");
        let err = expand_with("not toml [", &["server"]).unwrap_err().to_string();
        assert!(err.contains("not valid TOML"), "{err}");
    }
}
