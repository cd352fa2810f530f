//! Test support shared by the crates' integration tests: the real binaries
//! (a broker here, a runner in [`runner`]), the scripted fake model server
//! and Pi's configuration for it, fixture git repositories, TCP fault proxies
//! ([`proxy`]), real I/O under tokio's paused clock ([`clock`]) and bounded
//! waits for real processes ([`poll`]). Nothing here stands in for an embark
//! component; it only starts them, or gets in their way. The fake model's Pi
//! configuration and the fixture repository are `testkit/fixtures/*.json`,
//! which the smoke scripts and the demo read too.

pub mod clock;
pub mod git;
pub mod poll;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod runner;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use embark_client::BrokerClient;
use serde_json::Value;
use tempfile::TempDir;

pub use process::Spawned;

/// The workspace root (where `Cargo.toml` with `[workspace]` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit sits in the workspace")
        .to_path_buf()
}

/// Path of a workspace binary built next to the running test.
///
/// `cargo test --workspace` builds every binary before it runs a test; a
/// single-crate run may not, so a missing binary says how to build it.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// The JSON line a started `who` prints on stdout once it listens.
fn ready_line(process: &mut Spawned, who: &str) -> serde_json::Value {
    let line = process.read_stdout_line(Duration::from_secs(30));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{who}'s first stdout line is not JSON ({e}): {line:?}"))
}

/// The log filter of the brokers tests start: `info`, and the long-poll's
/// `debug` lines, which say when a claim waits ([`Broker::claims_waiting`]).
pub const BROKER_LOG_FILTER: &str = "info,embark_broker::claim=debug";

/// What the broker logs when a claim finds no task and starts to wait.
pub const CLAIM_WAITING: &str = "claim waiting for a task";

/// Which database a test broker keeps its state in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on the server `EMBARK_TEST_DATABASE_URL` names
    /// ([`postgres::TestDatabase`]).
    Postgres,
}

/// What the brokers of one test share: the database, and a directory for
/// their logs (and the SQLite file). Dropped with the last of them.
struct Storage {
    /// `--db`: the SQLite path or the PostgreSQL URL.
    db: String,
    /// Kept for PostgreSQL: dropping it drops the database.
    _database: Option<postgres::TestDatabase>,
    dir: TempDir,
    started: AtomicUsize,
    /// Set for every start, after the defaults.
    env: Vec<(String, String)>,
}

/// A real `embark-broker` on 127.0.0.1 with a fresh database, stopped
/// (by its PID) on drop. [`Broker::replica`] starts another on the same
/// database; [`Broker::kill`] and [`Broker::restart`] crash and restart it.
pub struct Broker {
    pub url: String,
    pub client_secret: String,
    pub enrollment_secret: String,
    pub backend: Backend,
    /// Declared before `storage`: the process stops before its database goes.
    process: Spawned,
    storage: Arc<Storage>,
}

impl Broker {
    /// A broker on SQLite.
    pub fn start() -> Broker {
        Broker::start_with(Backend::Sqlite)
    }

    /// A broker on SQLite with these environment variables set too (its
    /// knobs, e.g. `EMBARK_BROKER_HEAD_TIMEOUT_MS`); its replicas get them too.
    pub fn start_with_env(env: &[(&str, &str)]) -> Broker {
        Broker::launch(Backend::Sqlite, env)
    }

    /// A broker on a fresh database of `backend` with these environment variables set too.
    pub fn start_on_with_env(backend: Backend, env: &[(&str, &str)]) -> Broker {
        Broker::launch(backend, env)
    }

    /// A broker on a fresh database of `backend`.
    pub fn start_with(backend: Backend) -> Broker {
        Broker::launch(backend, &[])
    }

    fn launch(backend: Backend, env: &[(&str, &str)]) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir for the broker");
        let (db, database) = match backend {
            Backend::Sqlite => (dir.path().join("broker.db").display().to_string(), None),
            Backend::Postgres => {
                let database = postgres::TestDatabase::create();
                (database.url.clone(), Some(database))
            }
        };
        let storage = Arc::new(Storage {
            db,
            _database: database,
            dir,
            started: AtomicUsize::new(0),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        });
        let client_secret = "test-client-secret-0123456789".to_owned();
        let enrollment_secret = "test-enrollment-secret-0123456789".to_owned();
        let (process, url) = spawn_broker(&storage, &client_secret, &enrollment_secret);
        Broker {
            url,
            client_secret,
            enrollment_secret,
            backend,
            process,
            storage,
        }
    }

    /// Another broker process on the same database, with the same secrets:
    /// a second replica behind the same load balancer.
    pub fn replica(&self) -> Broker {
        self.replica_with_env(&[])
    }

    /// [`Broker::replica`] with these environment variables set too (after
    /// the first broker's): e.g. a replica whose leases are short, whose
    /// reaper requeues a task the others would keep.
    pub fn replica_with_env(&self, env: &[(&str, &str)]) -> Broker {
        let (process, url) = spawn_broker_with(&self.storage, &self.client_secret, &self.enrollment_secret, env);
        Broker {
            url,
            client_secret: self.client_secret.clone(),
            enrollment_secret: self.enrollment_secret.clone(),
            backend: self.backend,
            process,
            storage: Arc::clone(&self.storage),
        }
    }

    /// Kills the broker with SIGKILL (no chance to finish anything) and reaps it.
    pub fn kill(&mut self) {
        let child = self.process.child_mut();
        child.kill().expect("SIGKILL the broker");
        child.wait().expect("reap the broker");
    }

    /// Starts the broker again on its database (after [`Broker::kill`]; a
    /// running one is killed first). It listens on a new port: `url` changes.
    pub fn restart(&mut self) {
        if self.process.child_mut().try_wait().expect("poll the broker").is_none() {
            self.kill();
        }
        let (process, url) = spawn_broker(&self.storage, &self.client_secret, &self.enrollment_secret);
        self.process = process;
        self.url = url;
    }

    /// What `--db` names: the SQLite path or the PostgreSQL URL.
    pub fn db(&self) -> &str {
        &self.storage.db
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The broker's exit status once it has exited; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.process.child_mut().try_wait().expect("poll the broker")
    }

    pub fn client(&self) -> BrokerClient {
        BrokerClient::new(&self.url).expect("broker URL is valid")
    }

    /// Everything this broker process logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `host:port`, for raw sockets.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Its exit status, if it exits within `within`.
    pub fn exit_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        poll::exit_within(self.process.child_mut(), within)
    }

    /// Runs `embark-broker ARGS --db <this broker's db>` (a token or runner
    /// command) to its end: its exit status and output.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin_path("embark-broker"))
            .args(args)
            .arg("--db")
            .arg(&self.storage.db)
            .env_remove("EMBARK_BROKER_CONFIG")
            .env_remove("EMBARK_BROKER_DB")
            .env("EMBARK_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run embark-broker")
    }

    /// A new client token named `name` (`embark-broker tokens add`).
    pub fn add_client_token(&self, name: &str) -> String {
        let output = self.admin(&["tokens", "add", name]);
        assert!(
            output.status.success(),
            "tokens add {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("the token is UTF-8")
            .trim()
            .to_owned()
    }

    /// How many claims have started waiting for a task so far (from its log).
    pub fn claims_waiting(&self) -> usize {
        self.log().matches(CLAIM_WAITING).count()
    }
}

/// Runs each named `async fn(Backend)` on both backends, as the tests
/// `sqlite::NAME` and `postgres::NAME`. The PostgreSQL ones are ignored
/// (reported as skipped) unless the invoking crate's build script set
/// `cfg(embark_pg_tests)` because `EMBARK_TEST_DATABASE_URL` was set (see
/// [`postgres`]).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[cfg_attr(
                    not(embark_pg_tests),
                    ignore = "PostgreSQL case: set EMBARK_TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it"
                )]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// Starts a broker on `storage` and waits for its `{"listening": …}` line.
fn spawn_broker(storage: &Storage, client_secret: &str, enrollment_secret: &str) -> (Spawned, String) {
    spawn_broker_with(storage, client_secret, enrollment_secret, &[])
}

fn spawn_broker_with(
    storage: &Storage,
    client_secret: &str,
    enrollment_secret: &str,
    extra: &[(&str, &str)],
) -> (Spawned, String) {
    let n = storage.started.fetch_add(1, Ordering::Relaxed);
    let mut command = Command::new(bin_path("embark-broker"));
    command
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--db")
        .arg(&storage.db)
        // A developer's own broker config must not leak into tests.
        .env_remove("EMBARK_BROKER_CONFIG")
        .env("EMBARK_CLIENT_SECRET", client_secret)
        .env("EMBARK_RUNNER_ENROLLMENT_SECRET", enrollment_secret)
        // Fixture repositories are local paths, and some tests serve one over plain http.
        .env("EMBARK_BROKER_REPO_TRANSPORTS", "https,ssh,git,http,local")
        // Debug from the long-poll: tests read when a claim is waiting.
        .env("EMBARK_LOG", BROKER_LOG_FILTER);
    command.envs(storage.env.iter().map(|(k, v)| (k, v)));
    command.envs(extra.iter().copied());
    // One log per start: a restart must not truncate what the crashed one wrote.
    let mut process = Spawned::start(command, &storage.dir.path().join(format!("broker-{n}.log")));
    let ready = ready_line(&mut process, "broker");
    let addr = ready["listening"]
        .as_str()
        .unwrap_or_else(|| panic!("no `listening` in {ready}"));
    (process, format!("http://{addr}"))
}

/// The scripted fake model server (`smoke/fake-model/server.mjs`) on
/// 127.0.0.1, stopped on drop. Needs `node` on PATH.
pub struct FakeModel {
    pub port: u16,
    process: Spawned,
    _dir: TempDir,
}

impl FakeModel {
    /// `script` is the JSON script (see `smoke/fake-model/README.md`).
    pub fn start(script: &Value) -> FakeModel {
        let dir = tempfile::tempdir().expect("temp dir for the fake model");
        let script_path = dir.path().join("script.json");
        std::fs::write(&script_path, script.to_string()).expect("write fake model script");
        let mut command = Command::new("node");
        command
            .arg(workspace_root().join("smoke/fake-model/server.mjs"))
            .arg("--script")
            .arg(&script_path)
            .arg("--port")
            .arg("0")
            .stdin(Stdio::null());
        let mut process = Spawned::start(command, &dir.path().join("fake-model.log"));
        let ready = ready_line(&mut process, "fake model");
        let port = ready["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("fake model reports its port");
        FakeModel {
            port,
            process,
            _dir: dir,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Pi's `models.json` for this server (see [`fake_models`]).
    pub fn models(&self) -> Value {
        fake_models(&self.base_url())
    }

    /// Every request the server received, as it logged them (one JSON per line).
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Pi's `models.json` for the fake model at `base_url` (`…/v1`), from
/// `testkit/fixtures/fake-models.json`: provider `fake`, model `fake-model`.
pub fn fake_models(base_url: &str) -> Value {
    let mut models: Value = serde_json::from_str(include_str!("../fixtures/fake-models.json"))
        .expect("testkit/fixtures/fake-models.json is JSON");
    let url = models
        .pointer_mut("/providers/fake/baseUrl")
        .expect("fake-models.json has providers.fake.baseUrl");
    *url = Value::String(base_url.to_owned());
    models
}

/// Pi's `settings.json` with retries off, so a scripted model error ends the
/// run at once: `testkit/fixtures/pi-settings.json`.
pub fn pi_settings() -> Value {
    serde_json::from_str(include_str!("../fixtures/pi-settings.json"))
        .expect("testkit/fixtures/pi-settings.json is JSON")
}

/// Writes the runner auth profile `<profiles>/<name>/` for the fake model at
/// `base_url`: its `models.json` and `settings.json`.
pub fn write_fake_profile(profiles: &Path, name: &str, base_url: &str) -> PathBuf {
    let dir = profiles.join(name);
    std::fs::create_dir_all(&dir).expect("create profile dir");
    std::fs::write(dir.join("models.json"), fake_models(base_url).to_string()).expect("write models.json");
    std::fs::write(dir.join("settings.json"), pi_settings().to_string()).expect("write settings.json");
    dir
}

/// The Pi binary the smoke package pins (`node_modules/.bin/pi` after `npm ci`).
pub fn pi_path() -> PathBuf {
    let path = workspace_root().join("node_modules/.bin/pi");
    assert!(
        path.exists(),
        "{} is missing: run `npm ci` in the workspace root",
        path.display()
    );
    path
}
