//! The broker's configuration: flags > `EMBARK_*` environment > TOML file > defaults.
//!
//! Secrets come only from the environment or the TOML file, never from flags,
//! which any local user could read in the process list.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use clap::Parser;
use embark_core::secret::Secret;
use embark_core::{dirs, text};
use serde::Deserialize;

/// Listen address when neither a flag, the environment nor the file names one.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8787));
/// Shortest secret the broker accepts, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

pub const ENV_CLIENT_SECRET: &str = "EMBARK_CLIENT_SECRET";
pub const ENV_ENROLLMENT_SECRET: &str = "EMBARK_RUNNER_ENROLLMENT_SECRET";

/// embark's broker: task queue, event log and credentials over HTTP.
///
/// Secrets are read from EMBARK_CLIENT_SECRET and EMBARK_RUNNER_ENROLLMENT_SECRET
/// (or `client_secret` / `runner_enrollment_secret` in the TOML file).
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "embark-broker", version)]
pub struct Args {
    /// Address to listen on [default: 127.0.0.1:8787]; port 0 picks a free port.
    #[arg(long, env = "EMBARK_BROKER_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// SQLite database file [default: $XDG_DATA_HOME/embark/broker.db]; its directory is created.
    #[arg(long, env = "EMBARK_BROKER_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// TOML configuration file (keys: listen, db, client_secret, runner_enrollment_secret).
    #[arg(long, env = "EMBARK_BROKER_CONFIG", value_name = "TOML")]
    pub config: Option<PathBuf>,
}

/// The TOML file's keys; unknown keys are refused so a typo does not pass silently.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    /// Relative paths are taken from the directory holding the TOML file.
    pub db: Option<PathBuf>,
    pub client_secret: Option<String>,
    pub runner_enrollment_secret: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub client_secret: Secret,
    pub enrollment_secret: Secret,
}

/// Causes are sources, not part of the message: `main` prints the chain.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `detail` is the place and the parser's message, never the file's text:
    /// the file may hold secrets (see [`text::parse_error_detail`]).
    #[error("the config file {path} is not valid: {detail}")]
    ParseFile { path: PathBuf, detail: String },
    #[error("no {what}: set {env} (or `{key}` in the config file); it must have at least {min} bytes", min = MIN_SECRET_BYTES)]
    MissingSecret {
        what: &'static str,
        env: &'static str,
        key: &'static str,
    },
    #[error("the {what} has {len} bytes; at least {min} are required: set a longer {env} (or `{key}`)", min = MIN_SECRET_BYTES)]
    ShortSecret {
        what: &'static str,
        env: &'static str,
        key: &'static str,
        len: usize,
    },
    #[error(
        "the client secret and the runner enrollment secret are the same: use two different secrets, or any client could enroll runners"
    )]
    SameSecrets,
    #[error(
        "no database path: pass --db <path> (or set EMBARK_BROKER_DB), or set HOME or XDG_DATA_HOME for the default"
    )]
    NoDataDir,
}

impl Config {
    /// Reads the TOML file named by `args` (if any) and resolves every knob.
    /// `env` looks up environment variables (the process environment in `main`).
    pub fn load(args: Args, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::resolve(args, file, env)
    }

    /// Precedence per knob: flag (or its env var, which clap already merged) > TOML > default.
    pub fn resolve(args: Args, file: FileConfig, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let listen = args.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN);
        let db = match args.db.or(file.db) {
            Some(path) => path,
            None => default_db(&env).ok_or(ConfigError::NoDataDir)?,
        };
        let client_secret = secret(
            "client secret",
            ENV_CLIENT_SECRET,
            "client_secret",
            env(ENV_CLIENT_SECRET),
            file.client_secret,
        )?;
        let enrollment_secret = secret(
            "runner enrollment secret",
            ENV_ENROLLMENT_SECRET,
            "runner_enrollment_secret",
            env(ENV_ENROLLMENT_SECRET),
            file.runner_enrollment_secret,
        )?;
        if client_secret == enrollment_secret {
            return Err(ConfigError::SameSecrets);
        }
        Ok(Config {
            listen,
            db,
            client_secret,
            enrollment_secret,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut file: FileConfig = toml::from_str(&text).map_err(|error| ConfigError::ParseFile {
        path: path.to_path_buf(),
        detail: text::parse_error_detail(&text, error.span(), error.message()),
    })?;
    if let (Some(db), Some(dir)) = (&file.db, path.parent())
        && db.is_relative()
    {
        file.db = Some(dir.join(db));
    }
    Ok(file)
}

fn secret(
    what: &'static str,
    env_name: &'static str,
    key: &'static str,
    from_env: Option<String>,
    from_file: Option<String>,
) -> Result<Secret, ConfigError> {
    let value = from_env
        .filter(|v| !v.is_empty())
        .or(from_file)
        .filter(|v| !v.is_empty());
    let value = value.ok_or(ConfigError::MissingSecret {
        what,
        env: env_name,
        key,
    })?;
    if value.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::ShortSecret {
            what,
            env: env_name,
            key,
            len: value.len(),
        });
    }
    Ok(Secret::new(value))
}

/// `$XDG_DATA_HOME/embark/broker.db`, or `$HOME/.local/share/embark/broker.db`.
fn default_db(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    Some(dirs::data_home(env)?.join("embark").join("broker.db"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    const CLIENT: &str = "client-secret-0123456789";
    const ENROLL: &str = "enroll-secret-0123456789";

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let env = env_of(&[
            (ENV_CLIENT_SECRET, CLIENT),
            (ENV_ENROLLMENT_SECRET, ENROLL),
            ("HOME", "/home/u"),
        ]);
        let config = Config::resolve(Args::default(), FileConfig::default(), env).expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(config.db, PathBuf::from("/home/u/.local/share/embark/broker.db"));
        assert_eq!(config.client_secret.expose(), CLIENT);
        let env = env_of(&[
            (ENV_CLIENT_SECRET, CLIENT),
            (ENV_ENROLLMENT_SECRET, ENROLL),
            ("HOME", "/home/u"),
            ("XDG_DATA_HOME", "/data"),
        ]);
        let config = Config::resolve(Args::default(), FileConfig::default(), env).expect("valid");
        assert_eq!(config.db, PathBuf::from("/data/embark/broker.db"));
    }

    #[test]
    fn flags_beat_the_file_and_env_secrets_beat_file_secrets() {
        let args = Args {
            listen: Some("127.0.0.1:1".parse().expect("addr")),
            db: None,
            config: None,
        };
        let file = FileConfig {
            listen: Some("127.0.0.1:2".parse().expect("addr")),
            db: Some("/file/broker.db".into()),
            client_secret: Some("file-client-secret-0123".into()),
            runner_enrollment_secret: Some("file-enroll-secret-0123".into()),
        };
        let env = env_of(&[(ENV_CLIENT_SECRET, CLIENT)]);
        let config = Config::resolve(args, file, env).expect("valid");
        assert_eq!(config.listen.port(), 1);
        assert_eq!(config.db, PathBuf::from("/file/broker.db"));
        assert_eq!(config.client_secret.expose(), CLIENT);
        assert_eq!(config.enrollment_secret.expose(), "file-enroll-secret-0123");
    }

    #[test]
    fn missing_short_or_equal_secrets_are_refused_with_the_variable_to_set() {
        let db = Args {
            db: Some("/x.db".into()),
            ..Args::default()
        };
        let err = Config::resolve(
            db.clone(),
            FileConfig::default(),
            env_of(&[(ENV_ENROLLMENT_SECRET, ENROLL)]),
        )
        .expect_err("no client secret");
        assert!(matches!(
            err,
            ConfigError::MissingSecret {
                env: ENV_CLIENT_SECRET,
                ..
            }
        ));
        assert!(err.to_string().contains(ENV_CLIENT_SECRET), "{err}");

        let env = env_of(&[(ENV_CLIENT_SECRET, CLIENT), (ENV_ENROLLMENT_SECRET, "short")]);
        let err = Config::resolve(db.clone(), FileConfig::default(), env).expect_err("short");
        assert!(matches!(err, ConfigError::ShortSecret { len: 5, .. }), "{err}");

        let env = env_of(&[(ENV_CLIENT_SECRET, CLIENT), (ENV_ENROLLMENT_SECRET, CLIENT)]);
        let err = Config::resolve(db, FileConfig::default(), env).expect_err("same");
        assert!(matches!(err, ConfigError::SameSecrets));
    }

    #[test]
    fn the_toml_file_is_read_strictly_and_relative_db_paths_follow_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9\"\ndb = \"data/b.db\"\nclient_secret = \"c-0123456789abcdef\"\nrunner_enrollment_secret = \"e-0123456789abcdef\"\n",
        )
        .expect("write");
        let args = Args {
            config: Some(path.clone()),
            ..Args::default()
        };
        let config = Config::load(args, env_of(&[])).expect("valid");
        assert_eq!(config.listen.port(), 9);
        assert_eq!(config.db, dir.path().join("data/b.db"));

        std::fs::write(&path, "lisen = \"127.0.0.1:9\"\n").expect("write");
        let args = Args {
            config: Some(path),
            ..Args::default()
        };
        let err = Config::load(args, env_of(&[])).expect_err("typo");
        assert!(matches!(err, ConfigError::ParseFile { .. }));
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn parse_errors_never_quote_a_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.toml");
        let args = Args {
            config: Some(path.clone()),
            ..Args::default()
        };
        for (text, line) in [
            ("listen = \"127.0.0.1:9\"\nclient_secret = hunter2-hunter2-hunter2\n", 2),
            ("client_secret = 98765432109876543210\n", 1),
            ("runner_enrollment_secret = \"hunter2-hunter2\nhunter2\"\n", 2),
        ] {
            std::fs::write(&path, text).expect("write");
            let err = Config::load(args.clone(), env_of(&[])).expect_err("not TOML");
            let shown = format!("{:#}", anyhow::Error::new(err));
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            assert!(shown.contains(&format!("line {line}, column")), "{shown}");
            for secret in ["hunter2", "98765432109876543210"] {
                assert!(!shown.contains(secret), "{text:?} leaked into {shown}");
            }
        }
    }

    #[test]
    fn causes_are_printed_once() {
        let args = Args {
            config: Some("/nonexistent/embark/broker.toml".into()),
            ..Args::default()
        };
        let err = Config::load(args, env_of(&[])).expect_err("no such file");
        let shown = format!("{:#}", anyhow::Error::new(err));
        let cause = std::fs::read("/nonexistent/embark/broker.toml")
            .expect_err("no such file")
            .to_string();
        assert_eq!(shown.matches(&cause).count(), 1, "{shown}");
    }
}
