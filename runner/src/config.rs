//! Runner configuration: flags > `EMBARK_*` environment variables > TOML file
//! > built-in defaults. Every knob is listed in `docs/runner.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use clap::builder::BoolishValueParser;
use embark_core::dirs;
use embark_core::secret::Secret;
use serde::Deserialize;

/// Shortest claim long-poll accepted: shorter ones would hammer the broker.
const MIN_CLAIM_WAIT_MS: u64 = 100;
const DEFAULT_CLAIM_WAIT_MS: u64 = 25_000;
const DEFAULT_TASK_TIMEOUT_SECS: u64 = 3600;
const DEFAULT_CLONE_TIMEOUT_SECS: u64 = 600;

/// Command line. Each option also reads the environment variable it names;
/// the TOML file fills in what neither gives.
#[derive(Debug, Default, Parser)]
#[command(
    name = "embark-runner",
    version,
    about = "Claims embark tasks from a broker and runs each with Pi in its own task directory"
)]
pub struct Cli {
    /// Broker root URL, e.g. http://127.0.0.1:8787 (required; TOML `broker_url`).
    #[arg(long, env = "EMBARK_BROKER_URL", value_name = "URL")]
    pub broker_url: Option<String>,
    /// Name shown in the broker and logs (default: the host name; TOML `name`).
    #[arg(long, env = "EMBARK_RUNNER_NAME")]
    pub name: Option<String>,
    /// Directory holding one directory per task (default $XDG_DATA_HOME/embark/spaces or ~/.local/share/embark/spaces; TOML `spaces`).
    #[arg(long, env = "EMBARK_RUNNER_SPACES", value_name = "DIR")]
    pub spaces: Option<PathBuf>,
    /// Directory holding one directory per auth profile (default $XDG_CONFIG_HOME/embark/profiles or ~/.config/embark/profiles; TOML `profiles`).
    #[arg(long, env = "EMBARK_RUNNER_PROFILES", value_name = "DIR")]
    pub profiles: Option<PathBuf>,
    /// The Pi executable (default `pi` on PATH; TOML `pi`).
    #[arg(long, env = "EMBARK_PI_BIN", value_name = "PATH")]
    pub pi: Option<PathBuf>,
    /// TOML config file (default $XDG_CONFIG_HOME/embark/runner.toml or ~/.config/embark/runner.toml; a missing default file is fine).
    #[arg(long, env = "EMBARK_RUNNER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run one task, then exit (TOML `once`).
    #[arg(long)]
    pub once: bool,
    /// How long one claim request waits for a task, in ms, 100..=30000 (default 25000; TOML `claim_wait_ms`).
    #[arg(long, env = "EMBARK_RUNNER_CLAIM_WAIT_MS", value_name = "MS")]
    pub claim_wait_ms: Option<u64>,
    /// Longest a task may run, clone included; then Pi is aborted and the task fails (default 3600; TOML `task_timeout_secs`).
    #[arg(long, env = "EMBARK_RUNNER_TASK_TIMEOUT_SECS", value_name = "SECS")]
    pub task_timeout_secs: Option<u64>,
    /// Longest the git clone and checkout may take (default 600; TOML `clone_timeout_secs`).
    #[arg(long, env = "EMBARK_RUNNER_CLONE_TIMEOUT_SECS", value_name = "SECS")]
    pub clone_timeout_secs: Option<u64>,
    /// Keep each task directory after the task finished (default true; `--keep-spaces=false` removes them; TOML `keep_spaces`).
    #[arg(
        long,
        env = "EMBARK_RUNNER_KEEP_SPACES",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new()
    )]
    pub keep_spaces: Option<bool>,
}

/// The TOML file's keys (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub broker_url: Option<String>,
    pub enrollment_secret: Option<String>,
    pub name: Option<String>,
    pub spaces: Option<PathBuf>,
    pub profiles: Option<PathBuf>,
    pub pi: Option<PathBuf>,
    pub once: Option<bool>,
    pub claim_wait_ms: Option<u64>,
    pub task_timeout_secs: Option<u64>,
    pub clone_timeout_secs: Option<u64>,
    pub keep_spaces: Option<bool>,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub broker_url: String,
    pub enrollment_secret: Secret,
    pub name: String,
    pub spaces: PathBuf,
    pub profiles: PathBuf,
    pub pi: PathBuf,
    pub once: bool,
    pub claim_wait_ms: u64,
    pub task_timeout: Duration,
    pub clone_timeout: Duration,
    pub keep_spaces: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `detail` is the place and the parser's message, never the file's
    /// text: the file may hold the enrollment secret.
    #[error("config file {path} is not valid: {detail}")]
    ParseFile { path: PathBuf, detail: String },
    #[error("no broker URL: pass --broker-url, set EMBARK_BROKER_URL, or put broker_url in {toml}")]
    MissingBrokerUrl { toml: String },
    #[error(
        "no enrollment secret: set EMBARK_RUNNER_ENROLLMENT_SECRET or put enrollment_secret in {toml} (it must match the broker's)"
    )]
    MissingEnrollmentSecret { toml: String },
    #[error("{what} is not set and there is no HOME to derive a default from: pass {flag}")]
    NoHome { what: &'static str, flag: &'static str },
    #[error("{knob} = {value} is out of range: {expected}")]
    OutOfRange {
        knob: &'static str,
        value: u64,
        expected: &'static str,
    },
    #[error("cannot make {path} absolute")]
    Absolute {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("runner name is empty: pass --name or set EMBARK_RUNNER_NAME")]
    EmptyName,
}

impl Config {
    /// Resolves the configuration. `env` looks up environment variables that
    /// clap does not read itself (the secret, HOME, XDG dirs); tests pass
    /// their own.
    pub fn resolve(cli: Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let config_home = dirs::config_home(env);
        let data_home = dirs::data_home(env);

        let (file, toml_name) = match &cli.config {
            Some(path) => (load_file(path, true)?, path.display().to_string()),
            None => match &config_home {
                Some(dir) => {
                    let path = dir.join("embark/runner.toml");
                    (load_file(&path, false)?, path.display().to_string())
                }
                None => (FileConfig::default(), "the config file".to_owned()),
            },
        };

        // An empty value counts as unset at every level, so `EMBARK_BROKER_URL=` does not hide the file's.
        let set = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
        let broker_url = set(cli.broker_url)
            .or(set(file.broker_url))
            .ok_or_else(|| ConfigError::MissingBrokerUrl {
                toml: toml_name.clone(),
            })?;
        let enrollment_secret = set(env("EMBARK_RUNNER_ENROLLMENT_SECRET"))
            .or(set(file.enrollment_secret))
            .map(Secret::new)
            .ok_or(ConfigError::MissingEnrollmentSecret { toml: toml_name })?;
        let name = match cli.name.or(file.name) {
            Some(name) => name,
            None => host_name(),
        };
        if name.trim().is_empty() {
            return Err(ConfigError::EmptyName);
        }
        let spaces = match cli.spaces.or(file.spaces) {
            Some(dir) => dir,
            None => data_home.map(|d| d.join("embark/spaces")).ok_or(ConfigError::NoHome {
                what: "the spaces directory",
                flag: "--spaces",
            })?,
        };
        let profiles = match cli.profiles.or(file.profiles) {
            Some(dir) => dir,
            None => config_home
                .map(|d| d.join("embark/profiles"))
                .ok_or(ConfigError::NoHome {
                    what: "the profiles directory",
                    flag: "--profiles",
                })?,
        };
        let claim_wait_ms = cli
            .claim_wait_ms
            .or(file.claim_wait_ms)
            .unwrap_or(DEFAULT_CLAIM_WAIT_MS);
        if !(MIN_CLAIM_WAIT_MS..=embark_core::limits::MAX_CLAIM_WAIT_MS).contains(&claim_wait_ms) {
            return Err(ConfigError::OutOfRange {
                knob: "claim_wait_ms",
                value: claim_wait_ms,
                expected: "between 100 and 30000",
            });
        }
        let task_timeout_secs = positive(
            "task_timeout_secs",
            cli.task_timeout_secs
                .or(file.task_timeout_secs)
                .unwrap_or(DEFAULT_TASK_TIMEOUT_SECS),
        )?;
        let clone_timeout_secs = positive(
            "clone_timeout_secs",
            cli.clone_timeout_secs
                .or(file.clone_timeout_secs)
                .unwrap_or(DEFAULT_CLONE_TIMEOUT_SECS),
        )?;
        // Pi runs with the workspace as its cwd: every path it gets must be absolute.
        let pi = match cli.pi.or(file.pi) {
            Some(pi) if pi.components().count() > 1 => absolute(pi)?,
            Some(pi) => pi,
            None => PathBuf::from("pi"),
        };
        Ok(Config {
            broker_url,
            enrollment_secret,
            name,
            spaces: absolute(spaces)?,
            profiles: absolute(profiles)?,
            pi,
            once: cli.once || file.once.unwrap_or(false),
            claim_wait_ms,
            task_timeout: Duration::from_secs(task_timeout_secs),
            clone_timeout: Duration::from_secs(clone_timeout_secs),
            keep_spaces: cli.keep_spaces.or(file.keep_spaces).unwrap_or(true),
        })
    }
}

fn absolute(path: PathBuf) -> Result<PathBuf, ConfigError> {
    std::path::absolute(&path).map_err(|source| ConfigError::Absolute { path, source })
}

fn positive(knob: &'static str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::OutOfRange {
            knob,
            value,
            expected: "at least 1",
        });
    }
    Ok(value)
}

/// Reads the TOML file; a missing file is an error only when it was named explicitly.
fn load_file(path: &Path, explicit: bool) -> Result<FileConfig, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(FileConfig::default()),
        Err(source) => {
            return Err(ConfigError::ReadFile {
                path: path.to_owned(),
                source,
            });
        }
    };
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.to_owned(),
        detail: embark_core::text::parse_error_detail(&text, e.span(), e.message()),
    })
}

/// The machine's host name, or `embark-runner` when it has none.
fn host_name() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().trim().to_owned();
    if name.is_empty() {
        "embark-runner".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |key| map.get(key).cloned()
    }

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["embark-runner"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("arguments parse")
    }

    #[test]
    fn defaults_derive_from_home() {
        let home = tempfile::tempdir().expect("temp dir");
        let h = home.path().to_str().expect("utf-8");
        let env = env_of(&[("HOME", h), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "s3cret-s3cret-s3cret")]);
        let config = Config::resolve(cli(&["--broker-url", "http://127.0.0.1:1"]), &env).expect("resolves");
        assert_eq!(config.spaces, home.path().join(".local/share/embark/spaces"));
        assert_eq!(config.profiles, home.path().join(".config/embark/profiles"));
        assert_eq!(config.pi, PathBuf::from("pi"));
        assert_eq!(config.claim_wait_ms, 25_000);
        assert_eq!(config.task_timeout, Duration::from_secs(3600));
        assert!(config.keep_spaces);
        assert!(!config.once);
        assert!(!config.name.is_empty());
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the secret never shows in Debug"
        );
    }

    #[test]
    fn flags_beat_the_toml_file_which_fills_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let toml_path = dir.path().join("runner.toml");
        std::fs::write(
            &toml_path,
            "broker_url = \"http://toml\"\nname = \"from-toml\"\nclaim_wait_ms = 1000\nkeep_spaces = false\n\
             enrollment_secret = \"toml-secret\"\nonce = true\n",
        )
        .expect("write toml");
        let env = env_of(&[("HOME", "/nonexistent-home")]);
        let args = [
            "--config",
            toml_path.to_str().expect("utf-8"),
            "--name",
            "from-flag",
            "--keep-spaces",
        ];
        let config = Config::resolve(cli(&args), &env).expect("resolves");
        assert_eq!(config.broker_url, "http://toml");
        assert_eq!(config.name, "from-flag");
        assert_eq!(config.claim_wait_ms, 1000);
        assert!(config.keep_spaces, "--keep-spaces beats keep_spaces = false");
        assert!(config.once);
        assert_eq!(config.enrollment_secret.expose(), "toml-secret");

        let env = env_of(&[("HOME", "/x"), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "env-secret")]);
        let args = ["--config", toml_path.to_str().expect("utf-8"), "--keep-spaces=false"];
        let config = Config::resolve(cli(&args), &env).expect("resolves");
        assert_eq!(config.enrollment_secret.expose(), "env-secret", "env beats TOML");
        assert!(!config.keep_spaces);

        // Empty values count as unset: they do not hide the file's.
        let env = env_of(&[("HOME", "/x"), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "")]);
        let args = ["--config", toml_path.to_str().expect("utf-8"), "--broker-url", ""];
        let config = Config::resolve(cli(&args), &env).expect("resolves");
        assert_eq!(config.broker_url, "http://toml");
        assert_eq!(config.enrollment_secret.expose(), "toml-secret");
    }

    #[test]
    fn relative_paths_become_absolute() {
        // Pi's cwd is the workspace, so a relative path would point elsewhere for it.
        let env = env_of(&[("HOME", "/h"), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "x")]);
        let args = [
            "--broker-url",
            "http://x",
            "--spaces",
            "./spaces",
            "--profiles",
            "p",
            "--pi",
            "bin/pi",
        ];
        let config = Config::resolve(cli(&args), &env).expect("resolves");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(config.spaces, cwd.join("spaces"));
        assert_eq!(config.profiles, cwd.join("p"));
        assert_eq!(config.pi, cwd.join("bin/pi"));
        let args = ["--broker-url", "http://x", "--pi", "pi"];
        assert_eq!(
            Config::resolve(cli(&args), &env).expect("resolves").pi,
            PathBuf::from("pi"),
            "PATH lookup"
        );
    }

    #[test]
    fn bad_input_gets_typed_errors() {
        let env = env_of(&[("HOME", "/nonexistent-home"), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "x")]);
        assert!(matches!(
            Config::resolve(cli(&[]), &env),
            Err(ConfigError::MissingBrokerUrl { .. })
        ));
        let no_secret = env_of(&[("HOME", "/nonexistent-home")]);
        assert!(matches!(
            Config::resolve(cli(&["--broker-url", "http://x"]), &no_secret),
            Err(ConfigError::MissingEnrollmentSecret { .. })
        ));
        assert!(matches!(
            Config::resolve(cli(&["--broker-url", "http://x", "--claim-wait-ms", "40000"]), &env),
            Err(ConfigError::OutOfRange {
                knob: "claim_wait_ms",
                ..
            })
        ));
        assert!(matches!(
            Config::resolve(cli(&["--broker-url", "http://x", "--task-timeout-secs", "0"]), &env),
            Err(ConfigError::OutOfRange {
                knob: "task_timeout_secs",
                ..
            })
        ));
        assert!(matches!(
            Config::resolve(
                cli(&["--broker-url", "http://x", "--config", "/nonexistent/runner.toml"]),
                &env
            ),
            Err(ConfigError::ReadFile { .. })
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        let toml_path = dir.path().join("runner.toml");
        std::fs::write(&toml_path, "brokr_url = \"typo\"\n").expect("write toml");
        let err = Config::resolve(cli(&["--config", toml_path.to_str().expect("utf-8")]), &env)
            .expect_err("unknown keys are refused");
        assert!(err.to_string().contains("brokr_url"), "{err}");
        assert!(err.to_string().contains("line 1, column 1"), "{err}");
        let no_home = env_of(&[("EMBARK_RUNNER_ENROLLMENT_SECRET", "x")]);
        assert!(matches!(
            Config::resolve(cli(&["--broker-url", "http://x"]), &no_home),
            Err(ConfigError::NoHome { flag: "--spaces", .. })
        ));
    }

    #[test]
    fn parse_errors_give_the_position_but_never_quote_the_file() {
        let env = env_of(&[("HOME", "/nonexistent-home")]);
        let dir = tempfile::tempdir().expect("temp dir");
        let toml_path = dir.path().join("runner.toml");
        // An unquoted secret: the parser's own Display would quote this line.
        std::fs::write(
            &toml_path,
            "broker_url = \"http://x\"\nenrollment_secret = hunter2-very-secret\n",
        )
        .expect("write toml");
        let err = Config::resolve(cli(&["--config", toml_path.to_str().expect("utf-8")]), &env).expect_err("not TOML");
        let text = embark_core::text::error_chain(&err);
        assert!(matches!(err, ConfigError::ParseFile { .. }), "{text}");
        assert!(text.contains("line 2, column 21"), "{text}");
        assert!(text.contains(&toml_path.display().to_string()), "{text}");
        assert!(!text.contains("hunter2"), "the secret is never quoted: {text}");
    }
}
