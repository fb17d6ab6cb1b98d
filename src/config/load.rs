//! Loading and layering: the embedded defaults, the `--config` file and the
//! environment, through the `config` crate, then [`Settings::validate`].

use std::path::Path;

use super::{ConfigError, Settings};

/// The defaults file, embedded so the binary runs from any directory.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// A loader message on one line (a bad configuration prints one clear line):
/// the TOML parser's source snippet (`3 | foo =`, `  |     ^`) is dropped and
/// the remaining lines are joined with `; `.
pub(super) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| {
            let snippet = l.starts_with('|')
                || l.split_once(" |")
                    .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            !l.is_empty() && !snippet
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Settings {
    /// Loads the layered configuration (see module docs) and validates it.
    ///
    /// `config_path` is `--config`; when `None`, `HOOKRELAY_CONFIG` is consulted.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key on any unreadable file, unknown key, wrong
    /// type or invalid value.
    pub fn load(config_path: Option<&Path>) -> Result<Settings, ConfigError> {
        let env_path = std::env::var_os("HOOKRELAY_CONFIG").map(std::path::PathBuf::from);
        let path = config_path.map(Path::to_path_buf).or(env_path);
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_CONFIG,
            config::FileFormat::Toml,
        ));
        if let Some(path) = &path {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(
                config::File::from(path.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("HOOKRELAY")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("delivery.retry_schedule_s")
                .with_list_parse_key("security.signing_key_encryption_keys")
                .with_list_parse_key("security.job_mac_keys")
                .with_list_parse_key("security.redact_fields")
                .try_parsing(true),
        );
        if std::env::var_os("HOOKRELAY__DATABASE__URL").is_none() {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                builder = builder
                    .set_override("database.url", url)
                    .map_err(|e| ConfigError::Load(one_line(&e.to_string())))?;
            }
        }
        let settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(one_line(&e.to_string())))?;
        settings.validate()
    }

    /// The embedded defaults only (no file, no environment), validated. Tests
    /// start from this and adjust fields.
    ///
    /// # Errors
    /// Only if the embedded defaults are themselves invalid (a bug).
    pub fn defaults() -> Result<Settings, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_CONFIG,
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(one_line(&e.to_string())))?;
        settings.validate()
    }

    /// The embedded defaults with `toml` layered over them, validated: how
    /// the unit tests feed values that deserialisation itself must refuse.
    #[cfg(test)]
    pub(super) fn from_toml(toml: &str) -> Result<Settings, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_CONFIG,
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(one_line(&e.to_string())))?;
        settings.validate()
    }
}
