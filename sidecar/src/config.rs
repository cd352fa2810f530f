//! The sidecar's settings: flags > `EMBARK_*` environment > TOML file.
//!
//! | setting          | flag               | env                      | TOML             | default |
//! |------------------|--------------------|--------------------------|------------------|---------|
//! | config file      | `--config`         | `EMBARK_CONFIG`          | –                | `$XDG_CONFIG_HOME/embark/config.toml` or `~/.config/embark/config.toml`; a missing file is fine |
//! | broker URL       | `--broker-url`     | `EMBARK_BROKER_URL`      | `broker_url`     | none: `submit`/`status` answer a Config error |
//! | client secret    | –                  | `EMBARK_CLIENT_SECRET`   | `client_secret`  | none: as above |
//! | auth profile     | `--profile`        | `EMBARK_PROFILE`         | `profile`        | `default` |
//! | provider         | `--provider`       | `EMBARK_PROVIDER`        | `provider`       | none: a submit must name one |
//! | model            | `--model`          | `EMBARK_MODEL`           | `model`          | none: a submit must name one |
//! | max line bytes   | `--max-line-bytes` | `EMBARK_MAX_LINE_BYTES`  | `max_line_bytes` | 1048576 |
//! | max in-flight    | `--max-in-flight`  | `EMBARK_MAX_IN_FLIGHT`   | `max_in_flight`  | 16 |
//!
//! The client secret has no flag (argv is visible to every user of the
//! machine) and is never logged.

use std::path::{Path, PathBuf};

pub use embark_core::secret::Secret;
use embark_core::{dirs, text};
use serde::Deserialize;

use crate::stdio::{DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_LINE_BYTES, StdioOptions};

/// The auth profile used when none is configured.
pub const DEFAULT_PROFILE: &str = "default";
/// Bounds of the transport knobs.
pub const MIN_LINE_BYTES: usize = 1024;
pub const MAX_IN_FLIGHT_LIMIT: usize = 1024;

/// The settings that come from flags or their environment variables (clap reads both).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML config file [default: $XDG_CONFIG_HOME/embark/config.toml or ~/.config/embark/config.toml]
    #[arg(long, env = "EMBARK_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Broker base URL, e.g. http://127.0.0.1:8787
    #[arg(long, env = "EMBARK_BROKER_URL", value_name = "URL")]
    pub broker_url: Option<String>,
    /// Auth profile tasks run with unless `/embark --profile` says otherwise [default: default]
    #[arg(long, env = "EMBARK_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
    /// Provider tasks run with unless `/embark --provider` says otherwise (no default)
    #[arg(long, env = "EMBARK_PROVIDER", value_name = "NAME")]
    pub provider: Option<String>,
    /// Model tasks run with unless `/embark --model` says otherwise (no default)
    #[arg(long, env = "EMBARK_MODEL", value_name = "ID")]
    pub model: Option<String>,
    /// Longest request line accepted, in bytes [default: 1048576]
    #[arg(long, env = "EMBARK_MAX_LINE_BYTES", value_name = "BYTES")]
    pub max_line_bytes: Option<usize>,
    /// Requests answered concurrently; more wait [default: 16]
    #[arg(long, env = "EMBARK_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
}

/// The resolved settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub broker_url: Option<String>,
    pub client_secret: Option<Secret>,
    pub profile: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub stdio: StdioOptions,
    /// The TOML file that was read, if any.
    pub file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            broker_url: None,
            client_secret: None,
            profile: DEFAULT_PROFILE.to_owned(),
            provider: None,
            model: None,
            stdio: StdioOptions::default(),
            file: None,
        }
    }
}

/// Causes are sources, not part of the message: `main` prints the chain.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `detail` is the place and the parser's message, never the file's text:
    /// the file may hold the client secret (see [`text::parse_error_detail`]).
    #[error("config file {path} is not valid: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{0}")]
    Invalid(String),
}

/// The TOML file's keys (every one optional; unknown keys are refused so typos show).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    broker_url: Option<String>,
    client_secret: Option<String>,
    profile: Option<String>,
    provider: Option<String>,
    model: Option<String>,
    max_line_bytes: Option<usize>,
    max_in_flight: Option<usize>,
}

/// Where the config file is looked for when none is named.
pub fn default_config_path() -> Option<PathBuf> {
    Some(
        dirs::config_home(&dirs::process_env)?
            .join("embark")
            .join("config.toml"),
    )
}

impl Config {
    /// Reads the process environment's secret and the default path.
    pub fn load(args: ConfigArgs) -> Result<Config, ConfigError> {
        let secret = std::env::var("EMBARK_CLIENT_SECRET").ok();
        Config::resolve(args, secret, default_config_path())
    }

    /// Merges flags/env (`args`, `env_secret`) over the TOML file.
    pub fn resolve(
        args: ConfigArgs,
        env_secret: Option<String>,
        default_path: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        // A named file replaces the default one, even when it is missing.
        let named = args.config.is_some();
        let (file, path) = match args.config.or(default_path) {
            Some(path) => match read_file(&path, named)? {
                Some(file) => (file, Some(path)),
                None => (FileConfig::default(), None),
            },
            None => (FileConfig::default(), None),
        };
        let non_empty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        let config = Config {
            broker_url: non_empty(args.broker_url).or(non_empty(file.broker_url)),
            client_secret: non_empty(env_secret).or(non_empty(file.client_secret)).map(Secret::new),
            profile: non_empty(args.profile)
                .or(non_empty(file.profile))
                .unwrap_or_else(|| DEFAULT_PROFILE.to_owned()),
            provider: non_empty(args.provider).or(non_empty(file.provider)),
            model: non_empty(args.model).or(non_empty(file.model)),
            stdio: StdioOptions {
                max_line_bytes: args
                    .max_line_bytes
                    .or(file.max_line_bytes)
                    .unwrap_or(DEFAULT_MAX_LINE_BYTES),
                max_in_flight: args
                    .max_in_flight
                    .or(file.max_in_flight)
                    .unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            },
            file: path,
        };
        if config.stdio.max_line_bytes < MIN_LINE_BYTES {
            return Err(ConfigError::Invalid(format!(
                "max line bytes {} is too small: use at least {MIN_LINE_BYTES}",
                config.stdio.max_line_bytes
            )));
        }
        if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&config.stdio.max_in_flight) {
            return Err(ConfigError::Invalid(format!(
                "max in-flight {} is out of range: use 1 to {MAX_IN_FLIGHT_LIMIT}",
                config.stdio.max_in_flight
            )));
        }
        Ok(config)
    }
}

/// `Ok(None)` when the file is absent. That is fine even for a named file:
/// clients point EMBARK_CONFIG at a missing file to rule the user's out.
fn read_file(path: &Path, named: bool) -> Result<Option<FileConfig>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if named {
                tracing::info!(
                    "config file {} does not exist; using flags and environment only",
                    path.display()
                );
            }
            return Ok(None);
        }
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let file: FileConfig = toml::from_str(&text).map_err(|error| ConfigError::Parse {
        path: path.to_path_buf(),
        detail: text::parse_error_detail(&text, error.span(), error.message()),
    })?;
    if file.client_secret.is_some() {
        warn_if_readable_by_others(path);
    }
    Ok(Some(file))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "{} holds client_secret and other users may read it: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn flags_beat_env_secret_beats_file_and_defaults_fill_in() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(
            dir.path(),
            "broker_url = \"http://file\"\nclient_secret = \"file-secret\"\nprovider = \"file-p\"\nmodel = \"file-m\"\nmax_in_flight = 4\n",
        );
        let args = ConfigArgs {
            config: Some(path.clone()),
            broker_url: Some("http://flag".into()),
            model: Some("flag-m".into()),
            ..ConfigArgs::default()
        };
        let config = Config::resolve(args, Some("env-secret".into()), None).expect("resolves");
        assert_eq!(config.broker_url.as_deref(), Some("http://flag"));
        assert_eq!(config.client_secret, Some(Secret::new("env-secret")));
        assert_eq!(config.provider.as_deref(), Some("file-p"));
        assert_eq!(config.model.as_deref(), Some("flag-m"));
        assert_eq!(config.profile, DEFAULT_PROFILE);
        assert_eq!(
            config.stdio,
            StdioOptions {
                max_line_bytes: DEFAULT_MAX_LINE_BYTES,
                max_in_flight: 4,
            }
        );
        assert_eq!(config.file, Some(path));

        let from_file = Config::resolve(
            ConfigArgs {
                config: config.file.clone(),
                ..ConfigArgs::default()
            },
            Some(String::new()),
            None,
        )
        .expect("resolves");
        assert_eq!(from_file.client_secret, Some(Secret::new("file-secret")));
    }

    #[test]
    fn a_missing_file_is_fine_named_or_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let absent = dir.path().join("nope.toml");
        let config = Config::resolve(ConfigArgs::default(), None, Some(absent.clone())).expect("resolves");
        assert_eq!(config, Config::default());
        let present = write(dir.path(), "provider = \"from-default-file\"\n");
        let named = ConfigArgs {
            config: Some(absent),
            ..ConfigArgs::default()
        };
        let config = Config::resolve(named, None, Some(present)).expect("resolves");
        assert_eq!(
            config,
            Config::default(),
            "the named (missing) file replaces the default one"
        );
    }

    #[test]
    fn typos_and_bad_bounds_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "brokr_url = \"x\"\n");
        let error = Config::resolve(ConfigArgs::default(), None, Some(path)).expect_err("typo");
        assert!(error.to_string().contains("brokr_url"), "{error}");
        let args = ConfigArgs {
            max_line_bytes: Some(10),
            ..ConfigArgs::default()
        };
        assert!(matches!(
            Config::resolve(args, None, None),
            Err(ConfigError::Invalid(_))
        ));
        let args = ConfigArgs {
            max_in_flight: Some(0),
            ..ConfigArgs::default()
        };
        assert!(matches!(
            Config::resolve(args, None, None),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn parse_errors_never_quote_the_secret() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (text, line) in [
            (
                "broker_url = \"http://b\"\nclient_secret = hunter2-hunter2-hunter2\n",
                2,
            ),
            ("client_secret = 98765432109876543210\n", 1),
        ] {
            let path = write(dir.path(), text);
            let error = Config::resolve(ConfigArgs::default(), None, Some(path.clone())).expect_err("not TOML");
            assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
            let shown = format!("{:#}", anyhow::Error::new(error));
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            assert!(shown.contains(&format!("line {line}, column")), "{shown}");
            for secret in ["hunter2", "98765432109876543210"] {
                assert!(!shown.contains(secret), "{text:?} leaked into {shown}");
            }
        }
    }

    #[test]
    fn read_errors_name_their_cause_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A directory where the file should be: it exists but cannot be read as text.
        let error =
            Config::resolve(ConfigArgs::default(), None, Some(dir.path().to_path_buf())).expect_err("a directory");
        assert!(matches!(error, ConfigError::Read { .. }), "{error}");
        let cause = std::fs::read_to_string(dir.path())
            .expect_err("a directory")
            .to_string();
        let shown = format!("{:#}", anyhow::Error::new(error));
        assert_eq!(shown.matches(&cause).count(), 1, "{shown}");
    }

    #[test]
    fn the_secret_never_prints() {
        let config = Config {
            client_secret: Some(Secret::new("hunter2-hunter2-hunter2")),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
