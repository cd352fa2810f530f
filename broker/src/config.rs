//! The broker's knobs and checks, on top of [`embark_core::config`] (which
//! owns precedence, empty values, the file and the errors).
//!
//! Secrets come only from the environment or the TOML file, never from flags,
//! which any local user could read in the process list. There is no default
//! config file: a server's configuration is explicit.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
pub use embark_core::config::ConfigError;
use embark_core::config::{Declaration, Env, Flags, Knob, Resolver, Setting, Source};
use embark_core::repo_url::Transport;

use crate::limits::RateLimit;
use embark_core::dirs;
use embark_core::secret::Secret;

use crate::store::database::{self, Database};

/// Listen address when neither a flag, the environment nor the file names one.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8787));
/// PostgreSQL connections per broker when nothing says.
pub const DEFAULT_DB_MAX_CONNECTIONS: u32 = crate::store::postgres::DEFAULT_MAX_CONNECTIONS;
/// Shortest secret the broker accepts, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

pub static CONFIG_FILE: Knob<PathBuf> = Knob::new("config", "the config file", "a path to a TOML file")
    .flag("--config")
    .env("EMBARK_BROKER_CONFIG");
pub static LISTEN: Knob<SocketAddr> = Knob::new(
    "listen",
    "the listen address",
    "an IP address and port such as 127.0.0.1:8787 (port 0 picks a free port)",
)
.flag("--listen")
.env("EMBARK_BROKER_LISTEN");
/// A relative SQLite path in the TOML file is taken from the file's directory.
pub static DB: Knob<Database> = Knob::new("db", "the database", database::ALLOWED)
    .flag("--db")
    .env("EMBARK_BROKER_DB");
pub static DB_MAX_CONNECTIONS: Knob<u32> = Knob::new(
    "db_max_connections",
    "the PostgreSQL connections per broker",
    "a whole number from 1 to 1000",
)
.flag("--db-max-connections")
.env("EMBARK_BROKER_DB_MAX_CONNECTIONS");
pub static CLIENT_SECRET: Knob<Secret> = Knob::new(
    "client_secret",
    "the client secret",
    "a secret of at least 16 bytes, e.g. from `openssl rand -hex 32`",
)
.env("EMBARK_CLIENT_SECRET");
pub static ENROLLMENT_SECRET: Knob<Secret> = Knob::new(
    "runner_enrollment_secret",
    "the runner enrollment secret",
    "a secret of at least 16 bytes that differs from client_secret (else any client could enroll runners)",
)
.env("EMBARK_RUNNER_ENROLLMENT_SECRET");

pub static MAX_CONNECTIONS: Knob<usize> = Knob::new(
    "max_connections",
    "the connection limit",
    "a whole number of connections, at least 16",
)
.env("EMBARK_BROKER_MAX_CONNECTIONS");
pub static HEAD_TIMEOUT_MS: Knob<u64> = Knob::new(
    "head_timeout_ms",
    "the request head timeout",
    "a whole number of milliseconds, at least 100",
)
.env("EMBARK_BROKER_HEAD_TIMEOUT_MS");
pub static BODY_TIMEOUT_MS: Knob<u64> = Knob::new(
    "body_timeout_ms",
    "the request body timeout",
    "a whole number of milliseconds, at least 100",
)
.env("EMBARK_BROKER_BODY_TIMEOUT_MS");
pub static IDLE_TIMEOUT_MS: Knob<u64> = Knob::new(
    "idle_timeout_ms",
    "the idle connection timeout",
    "a whole number of milliseconds, at least 100",
)
.env("EMBARK_BROKER_IDLE_TIMEOUT_MS");
pub static SHUTDOWN_TIMEOUT_MS: Knob<u64> = Knob::new(
    "shutdown_timeout_ms",
    "the shutdown deadline",
    "a whole number of milliseconds",
)
.env("EMBARK_BROKER_SHUTDOWN_TIMEOUT_MS");
pub static LIVE_SEND_TIMEOUT_MS: Knob<u64> = Knob::new(
    "live_send_timeout_ms",
    "the live tail send timeout",
    "a whole number of milliseconds, at least 100",
)
.env("EMBARK_BROKER_LIVE_SEND_TIMEOUT_MS");
pub static RATE_LIMIT: Knob<u32> = Knob::new(
    "rate_limit",
    "the per-credential rate limit",
    "a whole number of requests per second per credential (0 turns the limit off)",
)
.env("EMBARK_BROKER_RATE_LIMIT");
pub static RATE_BURST: Knob<u32> = Knob::new(
    "rate_burst",
    "the per-credential burst",
    "a whole number of requests, at least 1",
)
.env("EMBARK_BROKER_RATE_BURST");
pub static REPO_TRANSPORTS: Knob<RepoTransports> = Knob::new(
    "repo_transports",
    "the repository transports",
    "a comma-separated list of https, ssh, git, http and local",
)
.env("EMBARK_BROKER_REPO_TRANSPORTS");

pub static HEARTBEAT_TIMEOUT: Knob<Duration> = Knob::new(
    "heartbeat_timeout",
    "the heartbeat timeout",
    "a duration with its unit (ms, s, m, h) of at least 100ms, e.g. 5m",
)
.env("EMBARK_HEARTBEAT_TIMEOUT");
pub static STALE_TIMEOUT: Knob<Duration> = Knob::new(
    "stale_timeout",
    "the stale timeout",
    "a duration with its unit (ms, s, m, h) of at least 100ms, e.g. 30m",
)
.env("EMBARK_STALE_TIMEOUT");
pub static CLIENT_SILENCE: Knob<Duration> = Knob::new(
    "client_silence",
    "the client-silence limit",
    "a duration with its unit (ms, s, m, h) from 100ms to 24h, e.g. 30m",
)
.env("EMBARK_CLIENT_SILENCE");
pub static MAX_ATTEMPTS: Knob<u32> = Knob::new(
    "max_attempts",
    "the attempts a task may have",
    "a whole number from 1 to 100 (1: a stale task is never requeued)",
)
.env("EMBARK_MAX_ATTEMPTS");

pub static ARTIFACT_RETENTION: Knob<Duration> = Knob::new(
    "artifact_retention",
    "the artifact retention",
    "a duration with its unit (ms, s, m, h) of at least 100ms, e.g. 720h",
)
.env("EMBARK_ARTIFACT_RETENTION");

pub static BLOB_RETENTION: Knob<Duration> = Knob::new(
    "blob_retention",
    "the blob retention",
    "a duration with its unit (ms, s, m, h) of at least 100ms, e.g. 720h",
)
.env("EMBARK_BLOB_RETENTION");

/// Defaults of the knobs above.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_STALE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_CLIENT_SILENCE: Duration = Duration::from_secs(30 * 60);
/// The longest client-silence limit: a day.
pub const MAX_CLIENT_SILENCE: Duration = Duration::from_secs(24 * 60 * 60);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Thirty days.
pub const DEFAULT_ARTIFACT_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Thirty days, as the artifacts': a shorter one makes each sweep read the
/// manifests of the tasks it keeps blobs for (see `Store::expire_blobs`).
pub const DEFAULT_BLOB_RETENTION: Duration = DEFAULT_ARTIFACT_RETENTION;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_HEAD_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_LIVE_SEND_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_RATE_LIMIT: u32 = 1000;
pub const DEFAULT_RATE_BURST: u32 = 2000;
/// The shortest lease and reaper timeout accepted.
const MIN_TIMEOUT: Duration = Duration::from_millis(100);
/// File descriptors kept for the database, logs and the listener when the
/// connection limit is capped by the open-files limit.
const RESERVED_FILES: u64 = 64;

/// The transports a task's repository URL may use ([`Transport`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoTransports(pub Vec<Transport>);

impl Default for RepoTransports {
    fn default() -> RepoTransports {
        RepoTransports(vec![Transport::Https, Transport::Ssh, Transport::Git])
    }
}

impl Setting for RepoTransports {
    fn from_text(text: &str) -> Option<Self> {
        let mut transports = Vec::new();
        for name in text.split(',').map(str::trim) {
            let transport: Transport = name.parse().ok()?;
            if !transports.contains(&transport) {
                transports.push(transport);
            }
        }
        Some(RepoTransports(transports))
    }

    fn to_toml(&self) -> Option<toml::Value> {
        let names: Vec<&str> = self.0.iter().map(|t| t.name()).collect();
        Some(toml::Value::String(names.join(",")))
    }
}

pub static DECLARATION: Declaration = Declaration {
    binary: "embark-broker",
    file: &CONFIG_FILE,
    default_file: None,
    knobs: &[
        &LISTEN.spec,
        &DB.spec,
        &DB_MAX_CONNECTIONS.spec,
        &CLIENT_SECRET.spec,
        &ENROLLMENT_SECRET.spec,
        &REPO_TRANSPORTS.spec,
        &MAX_CONNECTIONS.spec,
        &HEAD_TIMEOUT_MS.spec,
        &BODY_TIMEOUT_MS.spec,
        &IDLE_TIMEOUT_MS.spec,
        &SHUTDOWN_TIMEOUT_MS.spec,
        &LIVE_SEND_TIMEOUT_MS.spec,
        &RATE_LIMIT.spec,
        &RATE_BURST.spec,
        &HEARTBEAT_TIMEOUT.spec,
        &STALE_TIMEOUT.spec,
        &CLIENT_SILENCE.spec,
        &MAX_ATTEMPTS.spec,
        &ARTIFACT_RETENTION.spec,
        &BLOB_RETENTION.spec,
    ],
};

/// embark's broker: task queue, event log and credentials over HTTP.
///
/// Each option also reads the environment variable it names, and the TOML
/// file fills in what neither gives. Secrets are read only from
/// EMBARK_CLIENT_SECRET and EMBARK_RUNNER_ENROLLMENT_SECRET (or
/// `client_secret` / `runner_enrollment_secret` in the TOML file).
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "embark-broker",
    version,
    after_long_help = "Limits (environment, or the TOML key in brackets; defaults in docs/broker.md):\n  \
        EMBARK_BROKER_REPO_TRANSPORTS [repo_transports]   transports a task's repo_url may use (https,ssh,git)\n  \
        EMBARK_BROKER_MAX_CONNECTIONS [max_connections]   open connections at most (4096)\n  \
        EMBARK_BROKER_HEAD_TIMEOUT_MS [head_timeout_ms]   request line and headers must arrive within (10000)\n  \
        EMBARK_BROKER_BODY_TIMEOUT_MS [body_timeout_ms]   a request body must arrive within (30000)\n  \
        EMBARK_BROKER_IDLE_TIMEOUT_MS [idle_timeout_ms]   a connection without a request is closed after (60000)\n  \
        EMBARK_BROKER_SHUTDOWN_TIMEOUT_MS [shutdown_timeout_ms]   a shutdown cuts what is left after (10000)\n  \
        EMBARK_BROKER_LIVE_SEND_TIMEOUT_MS [live_send_timeout_ms]   a live tail reader must take a frame within (10000)\n  \
        EMBARK_BROKER_RATE_LIMIT [rate_limit]   requests per second per credential, 0 for no limit (1000)\n  \
        EMBARK_BROKER_RATE_BURST [rate_burst]   requests a credential may send at once (2000)\n\n\
        Leases and the reaper (durations take a unit: 250ms, 90s, 5m, 24h):\n  \
        EMBARK_HEARTBEAT_TIMEOUT [heartbeat_timeout]   a running task whose runner reported nothing this long becomes stale (5m)\n  \
        EMBARK_STALE_TIMEOUT [stale_timeout]   a task stale this long is requeued or failed with stale_timeout (30m)\n  \
        EMBARK_CLIENT_SILENCE [client_silence]   an unfinished task no client read this long is cancelled, at most 24h (30m)\n  \
        EMBARK_MAX_ATTEMPTS [max_attempts]   attempts a task may have; a stale one that made no progress is requeued below it (3)\n  \
        EMBARK_ARTIFACT_RETENTION [artifact_retention]   a finished task's result bundle and session are deleted this long after it ended, not while a follow-up of it is unfinished (720h)\n  \
        EMBARK_BLOB_RETENTION [blob_retention]   an uploaded sync blob (overlay file, bundle) no unfinished task, nor one whose artifacts are kept, names is deleted this long after it was last uploaded or submitted (720h)"
)]
pub struct Args {
    /// Manage client tokens or runners on the database instead of serving (see docs/operations.md)
    #[command(subcommand)]
    pub command: Option<crate::admin::Command>,
    /// Address to listen on; port 0 picks a free port [env: EMBARK_BROKER_LISTEN] [TOML: listen] [default: 127.0.0.1:8787]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The database: a SQLite file (a path or sqlite:PATH; created with its directory) or a postgres:// URL, its password not on the command line [env: EMBARK_BROKER_DB] [TOML: db] [default: $XDG_DATA_HOME/embark/broker.db]
    #[arg(long, value_name = "PATH|URL", global = true)]
    pub db: Option<String>,
    /// PostgreSQL only: the size of this broker's connection pool (one more connection listens for other replicas' tasks) [env: EMBARK_BROKER_DB_MAX_CONNECTIONS] [TOML: db_max_connections] [default: 16]
    #[arg(long, value_name = "N", global = true)]
    pub db_max_connections: Option<String>,
    /// TOML configuration file; it must exist [env: EMBARK_BROKER_CONFIG] [default: none]
    #[arg(long, value_name = "TOML", global = true)]
    pub config: Option<String>,
    /// Print the effective configuration, each value with its source (secrets redacted), and exit
    #[arg(long)]
    pub print_config: bool,
}

impl Args {
    pub fn flags(&self) -> Flags {
        Flags::default()
            .with(&CONFIG_FILE, self.config.clone())
            .with(&LISTEN, self.listen.clone())
            .with(&DB, self.db.clone())
            .with(&DB_MAX_CONNECTIONS, self.db_max_connections.clone())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: Database,
    pub db_max_connections: u32,
    pub client_secret: Secret,
    pub enrollment_secret: Secret,
    pub repo_transports: Vec<Transport>,
    /// Before it is capped by the open-files limit at start ([`Config::connection_limit`]).
    pub max_connections: usize,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub live_send_timeout: Duration,
    pub rate_limit: RateLimit,
    pub leases: crate::store::ReapPolicy,
}

impl Config {
    /// Reads the TOML file `args` or `env` name (if any) and resolves every knob.
    pub fn load(args: &Args, env: Env<'_>) -> Result<Config, ConfigError> {
        let mut resolver = Resolver::load(&DECLARATION, args.flags(), env)?;
        Config::resolve(&mut resolver, env)
    }

    /// Only the database knobs: what the token and runner commands need (no
    /// secrets). The same precedence and checks as [`Config::resolve`].
    pub fn resolve_db(resolver: &mut Resolver<'_>, env: Env<'_>) -> Result<(Database, u32), ConfigError> {
        let db = resolver.or_else(&DB, || {
            Some(Database::Sqlite(dirs::data_home(env)?.join("embark").join("broker.db")))
        })?;
        let db_max_connections = resolver.or_default(&DB_MAX_CONNECTIONS, DEFAULT_DB_MAX_CONNECTIONS)?;
        let db = db
            .ok_or_else(|| resolver.missing(&DB, ", or set HOME or XDG_DATA_HOME for the default"))?
            .ensure(Database::is_well_formed)?;
        let from_flag = matches!(db.source, Source::Flag(_));
        let db = db.ensure(|db| !(from_flag && db.has_password()))?.value;
        let db_max_connections = db_max_connections.ensure(|n| (1..=1000).contains(n))?.value;
        Ok((db, db_max_connections))
    }

    /// Every knob is looked up before any check fails, so `--print-config`
    /// shows them all.
    pub fn resolve(resolver: &mut Resolver<'_>, env: Env<'_>) -> Result<Config, ConfigError> {
        let listen = resolver.or_default(&LISTEN, DEFAULT_LISTEN)?;
        let db = resolver.or_else(&DB, || {
            Some(Database::Sqlite(dirs::data_home(env)?.join("embark").join("broker.db")))
        })?;
        let db_max_connections = resolver.or_default(&DB_MAX_CONNECTIONS, DEFAULT_DB_MAX_CONNECTIONS)?;
        let client_secret = resolver.optional(&CLIENT_SECRET)?;
        let enrollment_secret = resolver.optional(&ENROLLMENT_SECRET)?;
        let repo_transports = resolver.or_default(&REPO_TRANSPORTS, RepoTransports::default())?;
        let max_connections = resolver.or_default(&MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS)?;
        let head_timeout = resolver.or_default(&HEAD_TIMEOUT_MS, DEFAULT_HEAD_TIMEOUT_MS)?;
        let body_timeout = resolver.or_default(&BODY_TIMEOUT_MS, DEFAULT_BODY_TIMEOUT_MS)?;
        let idle_timeout = resolver.or_default(&IDLE_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS)?;
        let shutdown_timeout = resolver.or_default(&SHUTDOWN_TIMEOUT_MS, DEFAULT_SHUTDOWN_TIMEOUT_MS)?;
        let live_send_timeout = resolver.or_default(&LIVE_SEND_TIMEOUT_MS, DEFAULT_LIVE_SEND_TIMEOUT_MS)?;
        let rate_limit = resolver.or_default(&RATE_LIMIT, DEFAULT_RATE_LIMIT)?;
        let rate_burst = resolver.or_default(&RATE_BURST, DEFAULT_RATE_BURST)?;
        let heartbeat_timeout = resolver.or_default(&HEARTBEAT_TIMEOUT, DEFAULT_HEARTBEAT_TIMEOUT)?;
        let stale_timeout = resolver.or_default(&STALE_TIMEOUT, DEFAULT_STALE_TIMEOUT)?;
        let client_silence = resolver.or_default(&CLIENT_SILENCE, DEFAULT_CLIENT_SILENCE)?;
        let max_attempts = resolver.or_default(&MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS)?;
        let artifact_retention = resolver.or_default(&ARTIFACT_RETENTION, DEFAULT_ARTIFACT_RETENTION)?;
        let blob_retention = resolver.or_default(&BLOB_RETENTION, DEFAULT_BLOB_RETENTION)?;

        let long_enough = |secret: &Secret| secret.expose().len() >= MIN_SECRET_BYTES;
        let client_secret = client_secret
            .ok_or_else(|| resolver.missing(&CLIENT_SECRET, " (at least 16 bytes)"))?
            .ensure(long_enough)?
            .value;
        let enrollment_secret = enrollment_secret
            .ok_or_else(|| resolver.missing(&ENROLLMENT_SECRET, " (at least 16 bytes)"))?
            .ensure(long_enough)?
            .ensure(|secret| *secret != client_secret)?
            .value;
        let db = db
            .ok_or_else(|| resolver.missing(&DB, ", or set HOME or XDG_DATA_HOME for the default"))?
            .ensure(Database::is_well_formed)?;
        // argv is visible to every local user: a password never comes from the flag.
        let from_flag = matches!(db.source, Source::Flag(_));
        let db = db.ensure(|db| !(from_flag && db.has_password()))?.value;
        let db_max_connections = db_max_connections.ensure(|n| (1..=1000).contains(n))?.value;
        let millis = |resolved: embark_core::config::Resolved<u64>| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(resolved.ensure(|ms| *ms >= 100)?.value))
        };
        Ok(Config {
            listen: listen.value,
            db,
            db_max_connections,
            client_secret,
            enrollment_secret,
            repo_transports: repo_transports.ensure(|t| !t.0.is_empty())?.value.0,
            max_connections: max_connections.ensure(|n| *n >= 16)?.value,
            head_timeout: millis(head_timeout)?,
            body_timeout: millis(body_timeout)?,
            idle_timeout: millis(idle_timeout)?,
            shutdown_timeout: Duration::from_millis(shutdown_timeout.value),
            live_send_timeout: millis(live_send_timeout)?,
            rate_limit: RateLimit {
                per_second: rate_limit.value,
                burst: rate_burst.ensure(|n| *n >= 1)?.value,
            },
            leases: crate::store::ReapPolicy {
                heartbeat_timeout: heartbeat_timeout.ensure(|d| *d >= MIN_TIMEOUT)?.value,
                stale_timeout: stale_timeout.ensure(|d| *d >= MIN_TIMEOUT)?.value,
                client_silence: client_silence
                    .ensure(|d| (MIN_TIMEOUT..=MAX_CLIENT_SILENCE).contains(d))?
                    .value,
                max_attempts: max_attempts.ensure(|n| (1..=100).contains(n))?.value,
                artifact_retention: artifact_retention.ensure(|d| *d >= MIN_TIMEOUT)?.value,
                blob_retention: blob_retention.ensure(|d| *d >= MIN_TIMEOUT)?.value,
            },
        })
    }

    /// `max_connections`, capped so that connections cannot use up the
    /// open-files limit `open_files` (the soft limit, once raised).
    pub fn connection_limit(&self, open_files: Option<u64>) -> usize {
        let room = open_files.map_or(u64::MAX, |files| files.saturating_sub(RESERVED_FILES).max(16));
        self.max_connections.min(usize::try_from(room).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use embark_core::config::Source;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    fn args(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("embark-broker").chain(argv.iter().copied())).expect("arguments parse")
    }

    const CLIENT: &str = "client-secret-0123456789";
    const ENROLL: &str = "enroll-secret-0123456789";

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let env = env_of(&[
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", ENROLL),
            ("HOME", "/home/u"),
        ]);
        let config = Config::load(&Args::default(), &env).expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(
            config.db,
            Database::Sqlite("/home/u/.local/share/embark/broker.db".into())
        );
        assert_eq!(config.client_secret.expose(), CLIENT);
        let env = env_of(&[
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", ENROLL),
            ("HOME", "/home/u"),
            ("XDG_DATA_HOME", "/data"),
        ]);
        let config = Config::load(&Args::default(), &env).expect("valid");
        assert_eq!(config.db, Database::Sqlite("/data/embark/broker.db".into()));
    }

    #[test]
    fn flags_beat_env_which_beats_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:2\"\ndb = \"/file/broker.db\"\nclient_secret = \"file-client-secret-0123\"\n\
             runner_enrollment_secret = \"file-enroll-secret-0123\"\n",
        )
        .expect("write");
        let file = path.to_str().expect("utf-8");
        let env = env_of(&[
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_BROKER_LISTEN", "127.0.0.1:3"),
            ("EMBARK_BROKER_DB", ""),
        ]);
        let config = Config::load(&args(&["--config", file, "--listen", "127.0.0.1:1"]), &env).expect("valid");
        assert_eq!(config.listen.port(), 1, "the flag beats the env");
        assert_eq!(
            config.db,
            Database::Sqlite("/file/broker.db".into()),
            "an empty env is unset"
        );
        assert_eq!(config.client_secret.expose(), CLIENT, "the env beats the file");
        assert_eq!(config.enrollment_secret.expose(), "file-enroll-secret-0123");
        let config = Config::load(&args(&["--config", file]), &env).expect("valid");
        assert_eq!(config.listen.port(), 3, "the env beats the file");
    }

    #[test]
    fn missing_short_or_equal_secrets_are_refused_with_the_variable_to_set() {
        let db = args(&["--db", "/x.db"]);
        let err =
            Config::load(&db, &env_of(&[("EMBARK_RUNNER_ENROLLMENT_SECRET", ENROLL)])).expect_err("no client secret");
        assert!(matches!(err, ConfigError::Missing { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the client secret is not set: set EMBARK_CLIENT_SECRET or put client_secret in a config file named by --config or EMBARK_BROKER_CONFIG (at least 16 bytes)"
        );

        let env = env_of(&[
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", "short"),
        ]);
        let err = Config::load(&db, &env).expect_err("short");
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "runner_enrollment_secret",
                    origin: Source::Env(_),
                    value: None,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("at least 16 bytes"), "{err}");

        let env = env_of(&[
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", CLIENT),
        ]);
        let err = Config::load(&db, &env).expect_err("same");
        assert!(err.to_string().contains("differs from client_secret"), "{err}");
        assert!(!format!("{err} {err:?}").contains(CLIENT), "{err:?}");

        // Without a home there is no default database.
        let env = env_of(&[
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", ENROLL),
        ]);
        let err = Config::load(&Args::default(), &env).expect_err("no db");
        assert!(err.to_string().contains("pass --db, set EMBARK_BROKER_DB"), "{err}");
        assert!(
            err.to_string()
                .ends_with("or set HOME or XDG_DATA_HOME for the default"),
            "{err}"
        );
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
        let named = args(&["--config", path.to_str().expect("utf-8")]);
        let config = Config::load(&named, &env_of(&[])).expect("valid");
        assert_eq!(config.listen.port(), 9);
        assert_eq!(config.db, Database::Sqlite(dir.path().join("data/b.db")));

        std::fs::write(&path, "lisen = \"127.0.0.1:9\"\n").expect("write");
        let err = Config::load(&named, &env_of(&[])).expect_err("typo");
        assert!(matches!(err, ConfigError::UnknownKey { .. }));
        assert!(err.to_string().contains("lisen"), "{err}");
        assert!(
            err.to_string().contains(
                "`listen`, `db`, `db_max_connections`, `client_secret`, `runner_enrollment_secret`, `repo_transports`"
            ),
            "{err}"
        );

        std::fs::write(&path, "listen = \"localhost\"\n").expect("write");
        let err = Config::load(&named, &env_of(&[])).expect_err("not an address");
        assert!(
            err.to_string().starts_with("listen = \"localhost\" (from file"),
            "{err}"
        );
        assert!(err.to_string().contains("use an IP address and port"), "{err}");
    }

    #[test]
    fn db_takes_a_path_a_sqlite_url_or_a_postgres_url() {
        let secrets = [
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", ENROLL),
        ];
        let with_db = |db: &str| {
            let mut pairs = secrets.to_vec();
            pairs.push(("EMBARK_BROKER_DB", db));
            env_of(&pairs)
        };
        let load = |db: &str| Config::load(&Args::default(), &with_db(db));
        assert_eq!(
            load("sqlite:/srv/b.db").expect("valid").db,
            Database::Sqlite("/srv/b.db".into())
        );
        let url = "postgresql://embark:hunter2@127.0.0.1:5432/embark";
        assert_eq!(load(url).expect("valid").db, Database::Postgres(url.into()));
        // A password in the environment is fine, on the command line it is not.
        let err = Config::load(&args(&["--db", url]), &env_of(&secrets)).expect_err("password in argv");
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "db",
                    origin: Source::Flag("--db"),
                    ..
                }
            ),
            "{err:?}"
        );
        let shown = err.to_string();
        assert!(
            shown.contains("postgresql://embark:***@127.0.0.1:5432/embark"),
            "{shown}"
        );
        assert!(shown.contains("never in --db"), "{shown}");
        assert!(!format!("{shown} {err:?}").contains("hunter2"), "{err:?}");
        Config::load(
            &args(&["--db", "postgres://embark@127.0.0.1/embark"]),
            &env_of(&secrets),
        )
        .expect("a URL without a password may be a flag");

        for bad in ["mysql://u@h/d", "sqlite:", "postgres://u:hunter2@h:notaport/d"] {
            let err = load(bad).expect_err(bad);
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        key: "db",
                        origin: Source::Env("EMBARK_BROKER_DB"),
                        ..
                    }
                ),
                "{bad}: {err:?}"
            );
            let shown = err.to_string();
            assert!(
                shown.contains("sqlite:PATH") && shown.contains("postgres://"),
                "{shown}"
            );
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn print_config_hides_the_database_password() {
        let env = env_of(&[
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", ENROLL),
            ("EMBARK_BROKER_DB", "postgres://embark:hunter2@127.0.0.1/embark"),
        ]);
        let mut resolver = Resolver::load(&DECLARATION, Args::default().flags(), &env).expect("load");
        Config::resolve(&mut resolver, &env).expect("valid");
        let report = resolver.report().to_string();
        assert!(report.contains("postgres://embark:***@127.0.0.1/embark"), "{report}");
        assert!(!report.contains("hunter2"), "{report}");
    }

    #[test]
    fn parse_errors_never_quote_a_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.toml");
        let named = args(&["--config", path.to_str().expect("utf-8")]);
        for (text, line) in [
            ("listen = \"127.0.0.1:9\"\nclient_secret = hunter2-hunter2-hunter2\n", 2),
            ("client_secret = 98765432109876543210\n", 1),
            ("runner_enrollment_secret = \"hunter2-hunter2\nhunter2\"\n", 2),
        ] {
            std::fs::write(&path, text).expect("write");
            let err = Config::load(&named, &env_of(&[])).expect_err("not TOML");
            let shown = format!("{:#}", anyhow::Error::new(err));
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            assert!(shown.contains(&format!("line {line}, column")), "{shown}");
            for secret in ["hunter2", "98765432109876543210"] {
                assert!(!shown.contains(secret), "{text:?} leaked into {shown}");
            }
        }
    }

    #[test]
    fn a_named_file_must_exist() {
        let err = Config::load(&args(&["--config", "/nonexistent/embark/broker.toml"]), &env_of(&[]))
            .expect_err("no such file");
        assert!(matches!(err, ConfigError::NamedFileMissing { .. }), "{err:?}");
        let env = env_of(&[("EMBARK_BROKER_CONFIG", "/nonexistent/embark/broker.toml")]);
        let err = Config::load(&Args::default(), &env).expect_err("no such file");
        assert!(
            err.to_string()
                .contains("named by env EMBARK_BROKER_CONFIG does not exist"),
            "{err}"
        );
    }

    #[test]
    fn limits_have_defaults_and_are_checked() {
        let base = [
            ("EMBARK_CLIENT_SECRET", CLIENT),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", ENROLL),
            ("HOME", "/home/u"),
        ];
        let config = Config::load(&Args::default(), &env_of(&base)).expect("valid");
        assert_eq!(
            config.repo_transports,
            [Transport::Https, Transport::Ssh, Transport::Git]
        );
        assert_eq!(config.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(config.head_timeout, Duration::from_secs(10));
        assert_eq!(
            config.rate_limit,
            RateLimit {
                per_second: 1000,
                burst: 2000
            }
        );
        assert_eq!(
            config.connection_limit(Some(1024)),
            960,
            "capped by the open-files limit"
        );
        assert_eq!(config.connection_limit(None), DEFAULT_MAX_CONNECTIONS);

        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            Config::load(&Args::default(), &env_of(&pairs))
        };
        let config = with(&[("EMBARK_BROKER_REPO_TRANSPORTS", "https, local,https")]).expect("valid");
        assert_eq!(config.repo_transports, [Transport::Https, Transport::Local]);
        for (name, value, says) in [
            (
                "EMBARK_BROKER_REPO_TRANSPORTS",
                "https,ext",
                "https, ssh, git, http and local",
            ),
            ("EMBARK_BROKER_HEAD_TIMEOUT_MS", "5", "at least 100"),
            ("EMBARK_BROKER_MAX_CONNECTIONS", "3", "at least 16"),
            ("EMBARK_BROKER_RATE_BURST", "0", "at least 1"),
        ] {
            let err = with(&[(name, value)]).expect_err(name);
            assert!(
                err.to_string().contains(name) && err.to_string().contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn help_names_every_flag_and_variable() {
        let help = Args::command().render_long_help().to_string();
        assert_eq!(DECLARATION.missing_from_help(&help), Vec::<&str>::new(), "{help}");
    }
}
