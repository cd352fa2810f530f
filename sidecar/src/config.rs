//! The sidecar's knobs and checks, on top of [`embark_core::config`] (which
//! owns precedence, empty values, the file and the errors).
//!
//! | setting          | flag               | env                      | TOML             | default |
//! |------------------|--------------------|--------------------------|------------------|---------|
//! | config file      | `--config`         | `EMBARK_CONFIG`          | –                | `$XDG_CONFIG_HOME/embark/config.toml` or `~/.config/embark/config.toml`; only this default may be missing |
//! | broker URL       | `--broker-url`     | `EMBARK_BROKER_URL`      | `broker_url`     | none: `submit`/`status` answer a Config error |
//! | client token     | –                  | `EMBARK_CLIENT_TOKEN`    | `client_token`   | none: the client secret is used |
//! | client secret    | –                  | `EMBARK_CLIENT_SECRET`   | `client_secret`  | none: as above |
//! | auth profile     | `--profile`        | `EMBARK_PROFILE`         | `profile`        | none: the runner default, `default` |
//! | provider         | `--provider`       | `EMBARK_PROVIDER`        | `provider`       | none: a submit must name one |
//! | model            | `--model`          | `EMBARK_MODEL`           | `model`          | none: a submit must name one |
//! | isolation        | `--isolation`      | `EMBARK_ISOLATION`       | `isolation`      | none: any mode a runner has |
//! | labels           | –                  | `EMBARK_LABELS`          | `labels`         | none (comma-separated names a runner must carry) |
//! | max line bytes   | `--max-line-bytes` | `EMBARK_MAX_LINE_BYTES`  | `max_line_bytes` | 1048576 |
//! | max in-flight    | `--max-in-flight`  | `EMBARK_MAX_IN_FLIGHT`   | `max_in_flight`  | 16 |
//! | sync excludes    | –                  | `EMBARK_SYNC_EXCLUDES`   | `sync_excludes`  | none (patterns, comma- or newline-separated, on top of the built-in list) |
//! | state directory  | `--state-dir`      | `EMBARK_STATE_DIR`       | `state_dir`      | `$XDG_STATE_HOME/embark`, else `~/.local/state/embark` (task records, cursors and `/embark defaults`, per Pi session); none without a home: commands that track tasks answer a Config error |
//! | sync max files   | –                  | `EMBARK_SYNC_MAX_FILES`  | `sync_max_files` | 500 |
//! | sync max bytes   | –                  | `EMBARK_SYNC_MAX_BYTES`  | `sync_max_bytes` | 2097152 (overlay + bundle) |
//! | sync max file bytes | –               | `EMBARK_SYNC_MAX_FILE_BYTES` | `sync_max_file_bytes` | 1048576 |
//!
//! The sidecar calls the broker with one client credential: a client token
//! (`embark-broker tokens add NAME`; it sees only its own tasks) or the
//! broker's client secret (the operator's, which sees every task), not both.
//! Neither has a flag (argv is visible to every user of the machine) and
//! neither is ever logged. A missing broker URL or credential is not a
//! start-up error: `/embark help` works without them, and the commands
//! that need them say what to set.

use std::path::PathBuf;

pub use embark_core::config::ConfigError;
use embark_core::config::{Declaration, Env, Flags, Knob, Resolver};
use embark_core::dirs;
use embark_core::intent::{IntentLayer, IsolationMode};
pub use embark_core::secret::Secret;

use crate::stdio::{DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_LINE_BYTES, StdioOptions};

/// Bounds of the transport knobs.
pub const MIN_LINE_BYTES: usize = 1024;
pub const MAX_IN_FLIGHT_LIMIT: usize = 1024;

pub static CONFIG_FILE: Knob<PathBuf> = Knob::new("config", "the config file", "a path to a TOML file")
    .flag("--config")
    .env("EMBARK_CONFIG");
pub static BROKER_URL: Knob<String> = Knob::new(
    "broker_url",
    "the broker URL",
    "the broker's root URL, e.g. http://127.0.0.1:8787",
)
.flag("--broker-url")
.env("EMBARK_BROKER_URL");
pub static CLIENT_TOKEN: Knob<Secret> = Knob::new(
    "client_token",
    "the client token",
    "a client token from the broker's operator (`embark-broker tokens add NAME`, `embark_ct_…`)",
)
.env("EMBARK_CLIENT_TOKEN");
pub static CLIENT_SECRET: Knob<Secret> =
    Knob::new("client_secret", "the client secret", "the broker's client secret").env("EMBARK_CLIENT_SECRET");
pub static PROFILE: Knob<String> = Knob::new("profile", "the auth profile", "the name of a runner auth profile")
    .flag("--profile")
    .env("EMBARK_PROFILE");
pub static PROVIDER: Knob<String> = Knob::new("provider", "the provider", "a Pi provider name")
    .flag("--provider")
    .env("EMBARK_PROVIDER");
pub static MODEL: Knob<String> = Knob::new("model", "the model", "a model id of the provider")
    .flag("--model")
    .env("EMBARK_MODEL");
pub static ISOLATION: Knob<IsolationMode> = Knob::new("isolation", "the isolation mode", "process, bwrap or docker")
    .flag("--isolation")
    .env("EMBARK_ISOLATION");
pub static LABELS: Knob<String> = Knob::new(
    "labels",
    "the runner labels",
    "label names separated by commas, e.g. gpu,eu-west",
)
.env("EMBARK_LABELS");
pub static MAX_LINE_BYTES: Knob<usize> = Knob::new(
    "max_line_bytes",
    "the longest request line",
    "a whole number of bytes, at least 1024",
)
.flag("--max-line-bytes")
.env("EMBARK_MAX_LINE_BYTES");
pub static MAX_IN_FLIGHT: Knob<usize> = Knob::new(
    "max_in_flight",
    "the number of calls answered at once",
    "a whole number from 1 to 1024",
)
.flag("--max-in-flight")
.env("EMBARK_MAX_IN_FLIGHT");

pub static STATE_DIR: Knob<PathBuf> = Knob::new(
    "state_dir",
    "the state directory",
    "a directory path (the sidecar keeps each Pi session's task records and cursors there)",
)
.flag("--state-dir")
.env("EMBARK_STATE_DIR");

pub static SYNC_EXCLUDES: Knob<String> = Knob::new(
    "sync_excludes",
    "the sync excludes",
    "gitignore patterns separated by commas or newlines",
)
.env("EMBARK_SYNC_EXCLUDES");
pub static SYNC_MAX_FILES: Knob<u64> = Knob::new(
    "sync_max_files",
    "the most changed paths one hand-off carries",
    "a whole number, at least 1",
)
.env("EMBARK_SYNC_MAX_FILES");
pub static SYNC_MAX_BYTES: Knob<u64> = Knob::new(
    "sync_max_bytes",
    "the most bytes of uncommitted work and unpushed commits one hand-off carries",
    "a whole number of bytes, at least 1",
)
.env("EMBARK_SYNC_MAX_BYTES");
pub static SYNC_MAX_FILE_BYTES: Knob<u64> = Knob::new(
    "sync_max_file_bytes",
    "the largest file one hand-off carries",
    "a whole number of bytes, at least 1",
)
.env("EMBARK_SYNC_MAX_FILE_BYTES");

pub static DECLARATION: Declaration = Declaration {
    binary: "embark-sidecar",
    file: &CONFIG_FILE,
    default_file: Some("embark/config.toml"),
    knobs: &[
        &BROKER_URL.spec,
        &CLIENT_TOKEN.spec,
        &CLIENT_SECRET.spec,
        &PROFILE.spec,
        &PROVIDER.spec,
        &MODEL.spec,
        &ISOLATION.spec,
        &LABELS.spec,
        &MAX_LINE_BYTES.spec,
        &MAX_IN_FLIGHT.spec,
        &STATE_DIR.spec,
        &SYNC_EXCLUDES.spec,
        &SYNC_MAX_FILES.spec,
        &SYNC_MAX_BYTES.spec,
        &SYNC_MAX_FILE_BYTES.spec,
    ],
};

/// What a submit sends of the working tree, and how much at most.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncSettings {
    /// Extra excludes on top of the built-in list (`EMBARK_SYNC_EXCLUDES`).
    pub excludes: Vec<String>,
    pub bounds: embark_manifest::Bounds,
}

impl SyncSettings {
    /// The scan's configuration for a repository whose runner-visible remote is `remote`.
    pub fn scan_config(&self, remote: Option<&str>) -> embark_manifest::SyncConfig {
        embark_manifest::SyncConfig {
            extra_excludes: self.excludes.clone(),
            bounds: self.bounds,
            remote: remote.map(str::to_owned),
            ..embark_manifest::SyncConfig::default()
        }
    }
}

/// The settings that come from flags (parsed as text: every level's value
/// is read by the same rules).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML config file; a named one must exist [env: EMBARK_CONFIG] [default: $XDG_CONFIG_HOME/embark/config.toml or ~/.config/embark/config.toml, which may be missing]
    #[arg(long, value_name = "PATH")]
    pub config: Option<String>,
    /// Broker base URL, e.g. http://127.0.0.1:8787 [env: EMBARK_BROKER_URL] [TOML: broker_url]
    #[arg(long, value_name = "URL")]
    pub broker_url: Option<String>,
    /// Auth profile tasks run with unless `/embark --profile` or the session's defaults say otherwise [env: EMBARK_PROFILE] [TOML: profile] (no default: the runner default profile, `default`)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Provider tasks run with unless `/embark --provider` or the session's defaults say otherwise [env: EMBARK_PROVIDER] [TOML: provider] (no default)
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Model tasks run with unless `/embark --model` or the session's defaults say otherwise [env: EMBARK_MODEL] [TOML: model] (no default)
    #[arg(long, value_name = "ID")]
    pub model: Option<String>,
    /// Isolation mode (process, bwrap or docker) tasks ask for unless `/embark --isolation` or the session's defaults say otherwise; labels a runner must carry come from EMBARK_LABELS (`labels`, comma-separated) [env: EMBARK_ISOLATION] [TOML: isolation] (no default: any mode)
    #[arg(long, value_name = "MODE")]
    pub isolation: Option<String>,
    /// Longest request line accepted, in bytes [env: EMBARK_MAX_LINE_BYTES] [TOML: max_line_bytes] [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_line_bytes: Option<String>,
    /// Requests answered concurrently; more wait [env: EMBARK_MAX_IN_FLIGHT] [TOML: max_in_flight] [default: 16]
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<String>,
    /// Where task records, cursors and `/embark defaults` are kept, per Pi session [env: EMBARK_STATE_DIR] [TOML: state_dir] [default: $XDG_STATE_HOME/embark or ~/.local/state/embark]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<String>,
}

impl ConfigArgs {
    pub fn flags(&self) -> Flags {
        Flags::default()
            .with(&CONFIG_FILE, self.config.clone())
            .with(&BROKER_URL, self.broker_url.clone())
            .with(&PROFILE, self.profile.clone())
            .with(&PROVIDER, self.provider.clone())
            .with(&MODEL, self.model.clone())
            .with(&ISOLATION, self.isolation.clone())
            .with(&MAX_LINE_BYTES, self.max_line_bytes.clone())
            .with(&MAX_IN_FLIGHT, self.max_in_flight.clone())
            .with(&STATE_DIR, self.state_dir.clone())
    }
}

/// The resolved settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub broker_url: Option<String>,
    pub client_token: Option<Secret>,
    pub client_secret: Option<Secret>,
    /// The sidecar config layer of the intent (`profile`, `provider`, `model`, `isolation`, `labels`).
    pub intent: IntentLayer,
    pub stdio: StdioOptions,
    pub sync: SyncSettings,
    /// Where the task records, cursors and session defaults live; `None` without a home directory.
    pub state_dir: Option<PathBuf>,
    /// The TOML file that was read, if any.
    pub file: Option<PathBuf>,
}

impl Config {
    /// Reads the TOML file and resolves every knob; tests pass their own `env`.
    pub fn load(args: &ConfigArgs, env: Env<'_>) -> Result<Config, ConfigError> {
        let mut resolver = Resolver::load(&DECLARATION, args.flags(), env)?;
        Config::resolve(&mut resolver, env)
    }

    /// Every knob is looked up before any check fails, so `--print-config`
    /// shows them all.
    pub fn resolve(resolver: &mut Resolver<'_>, env: Env<'_>) -> Result<Config, ConfigError> {
        let broker_url = resolver.optional(&BROKER_URL)?;
        let client_token = resolver.optional(&CLIENT_TOKEN)?;
        let client_secret = resolver.optional(&CLIENT_SECRET)?;
        let profile = resolver.optional(&PROFILE)?;
        let provider = resolver.optional(&PROVIDER)?;
        let model = resolver.optional(&MODEL)?;
        let isolation = resolver.optional(&ISOLATION)?;
        let labels = resolver.optional(&LABELS)?;
        let max_line_bytes = resolver.or_default(&MAX_LINE_BYTES, DEFAULT_MAX_LINE_BYTES)?;
        let max_in_flight = resolver.or_default(&MAX_IN_FLIGHT, DEFAULT_MAX_IN_FLIGHT)?;
        let state_dir = resolver.or_else(&STATE_DIR, || Some(dirs::state_home(env)?.join("embark")))?;
        let bounds = embark_manifest::Bounds::default();
        let excludes = resolver.optional(&SYNC_EXCLUDES)?;
        let max_files = resolver.or_default(&SYNC_MAX_FILES, bounds.max_files)?;
        let max_bytes = resolver.or_default(&SYNC_MAX_BYTES, bounds.max_bytes)?;
        let max_file_bytes = resolver.or_default(&SYNC_MAX_FILE_BYTES, bounds.max_file_bytes)?;
        Ok(Config {
            broker_url: broker_url.map(|r| r.value),
            client_token: client_token.map(|r| r.value),
            client_secret: client_secret.map(|r| r.value),
            intent: IntentLayer {
                auth_profile: profile.map(|r| r.value),
                provider: provider.map(|r| r.value),
                model: model.map(|r| r.value),
                isolation: isolation.map(|r| r.value),
                labels: labels.map(|r| split_labels(&r.value)),
            },
            stdio: StdioOptions {
                max_line_bytes: max_line_bytes.ensure(|bytes| *bytes >= MIN_LINE_BYTES)?.value,
                max_in_flight: max_in_flight.ensure(|n| (1..=MAX_IN_FLIGHT_LIMIT).contains(n))?.value,
            },
            sync: SyncSettings {
                excludes: excludes.map_or_else(Vec::new, |r| embark_manifest::parse_excludes(&r.value)),
                bounds: embark_manifest::Bounds {
                    max_files: max_files.ensure(|n| *n >= 1)?.value,
                    max_bytes: max_bytes.ensure(|n| *n >= 1)?.value,
                    max_file_bytes: max_file_bytes.ensure(|n| *n >= 1)?.value,
                },
            },
            state_dir: state_dir.map(|r| r.absolute()).transpose()?,
            file: resolver.file().map(PathBuf::from),
        })
    }
}

/// `gpu, eu-west` → `["gpu", "eu-west"]`; empty items are dropped.
fn split_labels(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|label| !label.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use clap::Parser;
    use embark_core::config::Source;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: ConfigArgs,
    }

    fn args(argv: &[&str]) -> ConfigArgs {
        Cli::try_parse_from(std::iter::once("embark-sidecar").chain(argv.iter().copied()))
            .expect("arguments parse")
            .config
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |key| map.get(key).cloned()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn flags_beat_env_which_beats_the_file_and_defaults_fill_in() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(
            dir.path(),
            "broker_url = \"http://file\"\nclient_secret = \"file-secret\"\nprovider = \"file-p\"\nmodel = \"file-m\"\nmax_in_flight = 4\n",
        );
        let file = path.to_str().expect("utf-8");
        let env = env_of(&[
            ("EMBARK_CLIENT_SECRET", "env-secret"),
            ("EMBARK_BROKER_URL", "http://env"),
            ("EMBARK_MODEL", "env-m"),
        ]);
        let config = Config::load(&args(&["--config", file, "--broker-url", "http://flag"]), &env).expect("resolves");
        assert_eq!(config.broker_url.as_deref(), Some("http://flag"));
        assert_eq!(config.client_secret, Some(Secret::new("env-secret")));
        assert_eq!(config.intent.provider.as_deref(), Some("file-p"));
        assert_eq!(config.intent.model.as_deref(), Some("env-m"));
        assert_eq!(
            config.intent.auth_profile, None,
            "the runner default is not the config's"
        );
        assert_eq!(
            config.stdio,
            StdioOptions {
                max_line_bytes: DEFAULT_MAX_LINE_BYTES,
                max_in_flight: 4,
            }
        );
        assert_eq!(config.file, Some(path.clone()));

        // Empty values are unset: the file's show through.
        let env = env_of(&[("EMBARK_CLIENT_SECRET", ""), ("EMBARK_PROVIDER", " ")]);
        let from_file = Config::load(&args(&["--config", file, "--model", ""]), &env).expect("resolves");
        assert_eq!(from_file.client_secret, Some(Secret::new("file-secret")));
        assert_eq!(from_file.intent.provider.as_deref(), Some("file-p"));
        assert_eq!(from_file.intent.model.as_deref(), Some("file-m"));
    }

    #[test]
    fn a_missing_default_file_is_fine_but_a_missing_named_file_is_not() {
        let home = tempfile::tempdir().expect("temp dir");
        let env = env_of(&[("HOME", home.path().to_str().expect("utf-8"))]);
        let state_dir = Some(home.path().join(".local/state/embark"));
        assert_eq!(
            Config::load(&ConfigArgs::default(), &env).expect("resolves"),
            Config {
                state_dir: state_dir.clone(),
                ..Config::default()
            }
        );

        let default = home.path().join(".config/embark/config.toml");
        std::fs::create_dir_all(default.parent().expect("dir")).expect("mkdir");
        std::fs::write(&default, "provider = \"from-default-file\"\n").expect("write");
        let config = Config::load(&ConfigArgs::default(), &env).expect("resolves");
        assert_eq!(config.intent.provider.as_deref(), Some("from-default-file"));
        assert_eq!(config.file, Some(default));

        // Naming an empty file is how a script rules the user's file out.
        let empty = write(home.path(), "");
        let named = args(&["--config", empty.to_str().expect("utf-8")]);
        assert_eq!(
            Config::load(&named, &env).expect("resolves"),
            Config {
                file: Some(empty),
                state_dir,
                ..Config::default()
            }
        );

        let absent = home.path().join("nope.toml");
        let env = env_of(&[
            ("HOME", home.path().to_str().expect("utf-8")),
            ("EMBARK_CONFIG", absent.to_str().expect("utf-8")),
        ]);
        let err = Config::load(&ConfigArgs::default(), &env).expect_err("named and missing");
        assert!(
            matches!(
                &err,
                ConfigError::NamedFileMissing {
                    origin: Source::Env("EMBARK_CONFIG"),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(absent.to_str().expect("utf-8")), "{err}");
    }

    #[test]
    fn typos_and_bad_bounds_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "brokr_url = \"x\"\n");
        let named = args(&["--config", path.to_str().expect("utf-8")]);
        let error = Config::load(&named, &env_of(&[])).expect_err("typo");
        assert!(error.to_string().contains("unknown key `brokr_url`"), "{error}");
        let error = Config::load(&args(&["--max-line-bytes", "10"]), &env_of(&[])).expect_err("too small");
        assert_eq!(
            error.to_string(),
            "max_line_bytes = 10 (from flag --max-line-bytes) is not allowed: use a whole number of bytes, at least 1024"
        );
        let error = Config::load(&ConfigArgs::default(), &env_of(&[("EMBARK_MAX_IN_FLIGHT", "0")])).expect_err("zero");
        assert!(
            error
                .to_string()
                .starts_with("max_in_flight = 0 (from env EMBARK_MAX_IN_FLIGHT)"),
            "{error}"
        );
        let path = write(dir.path(), "max_in_flight = \"many\"\n");
        let named = args(&["--config", path.to_str().expect("utf-8")]);
        let error = Config::load(&named, &env_of(&[])).expect_err("a string");
        assert!(
            error.to_string().contains("use a whole number from 1 to 1024"),
            "{error}"
        );
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
            let named = args(&["--config", path.to_str().expect("utf-8")]);
            let error = Config::load(&named, &env_of(&[])).expect_err("not TOML");
            assert!(matches!(error, ConfigError::ParseFile { .. }), "{error}");
            let shown = format!("{:#}", anyhow::Error::new(error));
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            assert!(shown.contains(&format!("line {line}, column")), "{shown}");
            for secret in ["hunter2", "98765432109876543210"] {
                assert!(!shown.contains(secret), "{text:?} leaked into {shown}");
            }
        }
    }

    #[test]
    fn the_secret_never_prints() {
        let config = Config {
            client_secret: Some(Secret::new("hunter2-hunter2-hunter2")),
            client_token: Some(Secret::new("embark_ct_hunter3")),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("hunter"));
    }

    #[test]
    fn the_client_token_comes_from_the_env_or_the_file_and_is_redacted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = write(dir.path(), "client_token = \"embark_ct_from_file\"\n");
        let named = args(&["--config", path.to_str().expect("utf-8")]);
        let config = Config::load(&named, &env_of(&[])).expect("resolves");
        assert_eq!(config.client_token, Some(Secret::new("embark_ct_from_file")));
        let env = env_of(&[("EMBARK_CLIENT_TOKEN", "embark_ct_from_env")]);
        let mut resolver = Resolver::load(&DECLARATION, named.flags(), &env).expect("load");
        let config = Config::resolve(&mut resolver, &env).expect("resolves");
        assert_eq!(config.client_token, Some(Secret::new("embark_ct_from_env")));
        let report = resolver.report().to_string();
        assert!(report.contains("client_token is set (secret, not shown)"), "{report}");
        assert!(!report.contains("embark_ct_from"), "{report}");
    }

    #[test]
    fn isolation_labels_and_the_state_dir_are_config_too() {
        let env = env_of(&[
            ("EMBARK_ISOLATION", "bwrap"),
            ("EMBARK_LABELS", "gpu, eu-west,,"),
            ("HOME", "/home/u"),
        ]);
        let config = Config::load(&args(&[]), &env).expect("resolves");
        assert_eq!(config.intent.isolation, Some(IsolationMode::Bwrap));
        assert_eq!(config.intent.labels, Some(vec!["gpu".to_owned(), "eu-west".to_owned()]));
        assert_eq!(config.state_dir, Some(PathBuf::from("/home/u/.local/state/embark")));
        let config =
            Config::load(&args(&["--state-dir", "/var/embark", "--isolation", "docker"]), &env).expect("flags");
        assert_eq!(config.state_dir, Some(PathBuf::from("/var/embark")));
        assert_eq!(config.intent.isolation, Some(IsolationMode::Docker));
        let error = Config::load(&args(&["--isolation", "vm"]), &env_of(&[])).expect_err("not a mode");
        assert!(error.to_string().contains("process, bwrap or docker"), "{error}");
        assert_eq!(Config::load(&args(&[]), &env_of(&[])).expect("no home").state_dir, None);
    }
}
