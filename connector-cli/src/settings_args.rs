//! The flags of the settings schema (`connector_core::settings`): one clap
//! argument per field, built from its field table. The field's doc is the
//! help, its name the long flag, `CONNECTOR_<NAME>` its environment
//! variable and its default the one shown. What a user gave (flag or
//! environment; `--config` files arrive as flags, see `config_file`) is set
//! through the schema's own setter, so a value parses and is checked the
//! same way as from C or Python.

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches};
use connector_core::settings::{Field, Kind, Schema, SettingsError};

/// A settings struct as clap arguments; flatten it into a command.
#[derive(Debug, Clone, Default)]
pub struct SettingsArgs<T>(pub T);

/// The clap argument of one field, showing `default` (its text) unless empty.
fn arg(field: &Field, default: String) -> Arg {
    let name = field.name();
    let arg = Arg::new(name.clone())
        .long(name)
        .env(field.env())
        .help(field.help().trim_end_matches('.').to_owned())
        .help_heading("Settings (flag, CONNECTOR_* variable or --config file key)")
        .value_name(field.kind.value_name());
    let arg = if field.kind == Kind::List {
        arg.action(ArgAction::Append).value_delimiter(',')
    } else {
        arg.action(ArgAction::Set)
    };
    if default.is_empty() {
        arg
    } else {
        arg.default_value(default)
    }
}

/// `--name: reason`, the way the binary names a bad setting.
pub fn flag_error(err: SettingsError) -> anyhow::Error {
    anyhow::anyhow!("--{err}")
}

impl<T: Schema> clap::Args for SettingsArgs<T> {
    fn augment_args(cmd: Command) -> Command {
        let defaults = T::default();
        cmd.args(
            T::FIELDS
                .iter()
                .map(|field| arg(field, defaults.text(field.key).unwrap_or_default())),
        )
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl<T: Schema> FromArgMatches for SettingsArgs<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self(T::default());
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for field in T::FIELDS {
            let name = field.name();
            // The defaults shown in --help are the schema's own: only what was given is set.
            let source = match matches.value_source(&name) {
                Some(ValueSource::CommandLine) => String::new(),
                Some(ValueSource::EnvVariable) => format!(" (from {})", field.env()),
                _ => continue,
            };
            let items: Vec<&str> = matches
                .get_many::<String>(&name)
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            self.0.set_items(&name, &items).map_err(|err| {
                clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("--{err}{source}\n"))
            })?;
        }
        Ok(())
    }
}
