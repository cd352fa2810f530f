//! The runner's knobs and checks, on top of [`embark_core::config`] (which
//! owns precedence, empty values, the file and the errors). Every knob is
//! listed in `docs/runner.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
pub use embark_core::config::ConfigError;
use embark_core::config::{Declaration, Env, Flags, Knob, Resolver, Setting};
use embark_core::dirs;
use embark_core::limits::MAX_CLAIM_WAIT_MS;
use embark_core::secret::Secret;

use crate::checkout::GitProtocols;
use crate::isolation::IsolationMode;
use crate::space::WorkspaceCleanup;

/// Shortest claim long-poll accepted: shorter ones would hammer the broker.
const MIN_CLAIM_WAIT_MS: u64 = 100;
const DEFAULT_CLAIM_WAIT_MS: u64 = 25_000;
const DEFAULT_TASK_TIMEOUT_SECS: u64 = 3600;
const DEFAULT_CLONE_TIMEOUT_SECS: u64 = 600;
const DEFAULT_CANCEL_KILL_TIMEOUT_MS: u64 = 5000;
/// The longest cancel kill timeout accepted (a minute).
const MAX_CANCEL_KILL_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_CLONE_MAX_MIB: u64 = 4096;
const DEFAULT_RESULT_MAX_CHARS: usize = 20_000;
const MAX_MAX_TASKS: usize = 64;
/// Where the task directory is mounted in a container, by default.
pub const DEFAULT_DOCKER_TASK_DIR: &str = "/embark/task";
/// The image `docker/pi-runner/Dockerfile` builds, by its documented tag.
pub const DEFAULT_DOCKER_IMAGE: &str = "embark-pi-runner:0.73.1";

pub static CONFIG_FILE: Knob<PathBuf> = Knob::new("config", "the config file", "a path to a TOML file")
    .flag("--config")
    .env("EMBARK_RUNNER_CONFIG");
pub static BROKER_URL: Knob<String> = Knob::new(
    "broker_url",
    "the broker URL",
    "the broker's root URL starting with http:// or https://, e.g. http://127.0.0.1:8787",
)
.flag("--broker-url")
.env("EMBARK_BROKER_URL");
pub static ENROLLMENT_SECRET: Knob<Secret> = Knob::new(
    "enrollment_secret",
    "the enrollment secret",
    "the broker's runner enrollment secret",
)
.env("EMBARK_RUNNER_ENROLLMENT_SECRET");
pub static NAME: Knob<String> = Knob::new("name", "the runner name", "a name shown in the broker and logs")
    .flag("--name")
    .env("EMBARK_RUNNER_NAME");
pub static SPACES: Knob<PathBuf> = Knob::new("spaces", "the spaces directory", "a directory path")
    .flag("--spaces")
    .env("EMBARK_RUNNER_SPACES");
pub static PROFILES: Knob<PathBuf> = Knob::new("profiles", "the profiles directory", "a directory path")
    .flag("--profiles")
    .env("EMBARK_RUNNER_PROFILES");
pub static PI: Knob<Program> = Knob::new(
    "pi",
    "the Pi executable",
    "a program name looked up on PATH, or a path to the program",
)
.flag("--pi")
.env("EMBARK_PI_BIN");
pub static ONCE: Knob<bool> = Knob::new("once", "run-once mode", "true or false").flag("--once");
pub static CLAIM_WAIT_MS: Knob<u64> = Knob::new(
    "claim_wait_ms",
    "the claim wait",
    "a whole number of milliseconds from 100 to 30000",
)
.flag("--claim-wait-ms")
.env("EMBARK_RUNNER_CLAIM_WAIT_MS");
pub static TASK_TIMEOUT_SECS: Knob<u64> = Knob::new(
    "task_timeout_secs",
    "the task timeout",
    "a whole number of seconds, at least 1",
)
.flag("--task-timeout-secs")
.env("EMBARK_RUNNER_TASK_TIMEOUT_SECS");
pub static CANCEL_KILL_TIMEOUT_MS: Knob<u64> = Knob::new(
    "cancel_kill_timeout_ms",
    "the cancel kill timeout",
    "a whole number of milliseconds from 1 to 60000",
)
.flag("--cancel-kill-timeout-ms")
.env("EMBARK_RUNNER_CANCEL_KILL_TIMEOUT_MS");
pub static CLONE_TIMEOUT_SECS: Knob<u64> = Knob::new(
    "clone_timeout_secs",
    "the clone timeout",
    "a whole number of seconds, at least 1",
)
.flag("--clone-timeout-secs")
.env("EMBARK_RUNNER_CLONE_TIMEOUT_SECS");
pub static CLONE_MAX_MIB: Knob<u64> = Knob::new(
    "clone_max_mib",
    "the clone size limit",
    "a whole number of MiB, at least 1",
)
.flag("--clone-max-mib")
.env("EMBARK_RUNNER_CLONE_MAX_MIB");
pub static CACHE_MAX_MIB: Knob<u64> = Knob::new(
    "cache_max_mib",
    "the cache size bound",
    "a whole number of MiB, at least 1",
)
.flag("--cache-max-mib")
.env("EMBARK_RUNNER_CACHE_MAX_MIB");
pub static GIT_PROTOCOLS: Knob<GitProtocols> = Knob::new(
    "git_protocols",
    "the git protocols allowed",
    "a list of https, ssh, git, http and file (comma-separated, or a TOML array)",
)
.flag("--git-protocols")
.env("EMBARK_RUNNER_GIT_PROTOCOLS");
pub static WORKSPACE_CLEANUP: Knob<WorkspaceCleanup> = Knob::new(
    "workspace_cleanup",
    "when task directories are removed",
    "never, success or terminal",
)
.flag("--workspace-cleanup")
.env("EMBARK_RUNNER_WORKSPACE_CLEANUP");
/// Deprecated alias of `workspace_cleanup` (true = never, false = terminal).
pub static KEEP_SPACES: Knob<bool> = Knob::new(
    "keep_spaces",
    "whether task directories are kept (deprecated: use workspace_cleanup)",
    "true or false (also yes/no, on/off, 1/0)",
)
.flag("--keep-spaces")
.env("EMBARK_RUNNER_KEEP_SPACES");
pub static MAX_TASKS: Knob<usize> = Knob::new(
    "max_tasks",
    "the number of tasks run at once",
    "a whole number from 1 to 64",
)
.flag("--max-tasks")
.env("EMBARK_RUNNER_MAX_TASKS");
pub static RESULT_MAX_CHARS: Knob<usize> = Knob::new(
    "result_max_chars",
    "the longest final text stored",
    "a whole number of characters, at least 1",
)
.flag("--result-max-chars")
.env("EMBARK_RESULT_MAX_CHARS");
pub static TASK_MAX_COST: Knob<f64> = Knob::new(
    "task_max_cost",
    "the cost budget of each task",
    "a cost of at least 0, in the provider's currency",
)
.flag("--task-max-cost")
.env("EMBARK_TASK_MAX_COST");
pub static PI_NO_EXTENSIONS: Knob<bool> = Knob::new(
    "pi_no_extensions",
    "whether Pi runs without extensions",
    "true or false (also yes/no, on/off, 1/0)",
)
.flag("--pi-no-extensions")
.env("EMBARK_PI_NO_EXTENSIONS");
pub static ISOLATION: Knob<IsolationMode> = Knob::new("isolation", "the isolation mode", "process, bwrap or docker")
    .flag("--isolation")
    .env("EMBARK_RUNNER_ISOLATION");
pub static BWRAP: Knob<Program> = Knob::new(
    "bwrap",
    "the bubblewrap executable",
    "a program name looked up on PATH, or a path to the program",
)
.flag("--bwrap")
.env("EMBARK_RUNNER_BWRAP_BIN");
pub static DOCKER: Knob<Program> = Knob::new(
    "docker",
    "the docker executable",
    "a program name looked up on PATH, or a path to the program",
)
.flag("--docker")
.env("EMBARK_RUNNER_DOCKER_BIN");
pub static DOCKER_IMAGE: Knob<String> = Knob::new(
    "docker_image",
    "the task container image",
    "an image reference, e.g. embark-pi-runner:0.73.1",
)
.flag("--docker-image")
.env("EMBARK_RUNNER_DOCKER_IMAGE");
pub static DOCKER_NETWORK: Knob<String> = Knob::new(
    "docker_network",
    "the task container network",
    "a docker network name, e.g. bridge or none",
)
.flag("--docker-network")
.env("EMBARK_RUNNER_DOCKER_NETWORK");
pub static DOCKER_USER: Knob<String> =
    Knob::new("docker_user", "the task container user", "UID or UID:GID, not root (0)")
        .flag("--docker-user")
        .env("EMBARK_RUNNER_DOCKER_USER");
pub static DOCKER_TASK_DIR: Knob<PathBuf> = Knob::new(
    "docker_task_dir",
    "where the task directory is mounted in the container",
    "an absolute path inside the container, not /",
)
.flag("--docker-task-dir")
.env("EMBARK_RUNNER_DOCKER_TASK_DIR");

pub static LABELS: Knob<Labels> = Knob::new(
    "labels",
    "the runner's labels",
    "a list of labels (letters, digits, '._-:'), comma-separated or a TOML array",
)
.flag("--labels")
.env("EMBARK_RUNNER_LABELS");
pub static APPROVED_ROOTS: Knob<Roots> = Knob::new(
    "approved_roots",
    "the approved roots of the spaces and profiles",
    "a list of absolute directory paths, comma-separated or a TOML array",
)
.flag("--approved-roots")
.env("EMBARK_RUNNER_APPROVED_ROOTS");

pub static DECLARATION: Declaration = Declaration {
    binary: "embark-runner",
    file: &CONFIG_FILE,
    default_file: Some("embark/runner.toml"),
    knobs: &[
        &BROKER_URL.spec,
        &ENROLLMENT_SECRET.spec,
        &NAME.spec,
        &SPACES.spec,
        &PROFILES.spec,
        &PI.spec,
        &ONCE.spec,
        &CLAIM_WAIT_MS.spec,
        &TASK_TIMEOUT_SECS.spec,
        &CANCEL_KILL_TIMEOUT_MS.spec,
        &CLONE_TIMEOUT_SECS.spec,
        &CLONE_MAX_MIB.spec,
        &CACHE_MAX_MIB.spec,
        &GIT_PROTOCOLS.spec,
        &WORKSPACE_CLEANUP.spec,
        &KEEP_SPACES.spec,
        &MAX_TASKS.spec,
        &RESULT_MAX_CHARS.spec,
        &TASK_MAX_COST.spec,
        &PI_NO_EXTENSIONS.spec,
        &ISOLATION.spec,
        &BWRAP.spec,
        &DOCKER.spec,
        &DOCKER_IMAGE.spec,
        &DOCKER_NETWORK.spec,
        &DOCKER_USER.spec,
        &DOCKER_TASK_DIR.spec,
        &LABELS.spec,
        &APPROVED_ROOTS.spec,
    ],
};

/// Command line. Flags are parsed as text: [`embark_core::config`] reads
/// every level's value by the same rules.
#[derive(Debug, Default, Parser)]
#[command(
    name = "embark-runner",
    version,
    about = "Claims embark tasks from a broker and runs each with Pi in its own task directory",
    long_about = "Claims embark tasks from a broker and runs each with Pi in its own task directory.\n\n\
        A flag beats its environment variable, which beats the TOML file, which beats the default; \
        an empty value counts as unset. The enrollment secret comes only from \
        EMBARK_RUNNER_ENROLLMENT_SECRET or `enrollment_secret` in the TOML file, never from a flag."
)]
pub struct Cli {
    /// Broker root URL, e.g. http://127.0.0.1:8787; required [env: EMBARK_BROKER_URL] [TOML: broker_url]
    #[arg(long, value_name = "URL")]
    pub broker_url: Option<String>,
    /// Name shown in the broker and logs [env: EMBARK_RUNNER_NAME] [TOML: name] [default: the host name]
    #[arg(long)]
    pub name: Option<String>,
    /// Directory holding one directory per task [env: EMBARK_RUNNER_SPACES] [TOML: spaces] [default: $XDG_DATA_HOME/embark/spaces or ~/.local/share/embark/spaces]
    #[arg(long, value_name = "DIR")]
    pub spaces: Option<String>,
    /// Directory holding one directory per auth profile [env: EMBARK_RUNNER_PROFILES] [TOML: profiles] [default: $XDG_CONFIG_HOME/embark/profiles or ~/.config/embark/profiles]
    #[arg(long, value_name = "DIR")]
    pub profiles: Option<String>,
    /// The Pi executable [env: EMBARK_PI_BIN] [TOML: pi] [default: `pi` on PATH]
    #[arg(long, value_name = "PATH")]
    pub pi: Option<String>,
    /// TOML config file; a named one must exist [env: EMBARK_RUNNER_CONFIG] [default: $XDG_CONFIG_HOME/embark/runner.toml or ~/.config/embark/runner.toml, which may be missing]
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,
    /// Run one task, then exit [TOML: once]
    #[arg(long)]
    pub once: bool,
    /// How long one claim request waits for a task, in ms, 100..=30000 [env: EMBARK_RUNNER_CLAIM_WAIT_MS] [TOML: claim_wait_ms] [default: 25000]
    #[arg(long, value_name = "MS")]
    pub claim_wait_ms: Option<String>,
    /// Longest a task may run, clone included; then Pi is aborted and the task fails [env: EMBARK_RUNNER_TASK_TIMEOUT_SECS] [TOML: task_timeout_secs] [default: 3600]
    #[arg(long, value_name = "SECS")]
    pub task_timeout_secs: Option<String>,
    /// After a client's cancel, how long Pi's task guard (which ends Pi and its processes) gets after SIGTERM before SIGKILL, in ms, 1..=60000 [env: EMBARK_RUNNER_CANCEL_KILL_TIMEOUT_MS] [TOML: cancel_kill_timeout_ms] [default: 5000]
    #[arg(long, value_name = "MS")]
    pub cancel_kill_timeout_ms: Option<String>,
    /// Longest the git clone and checkout may take [env: EMBARK_RUNNER_CLONE_TIMEOUT_SECS] [TOML: clone_timeout_secs] [default: 600]
    #[arg(long, value_name = "SECS")]
    pub clone_timeout_secs: Option<String>,
    /// Largest a clone (repository and checkout) may grow, in MiB [env: EMBARK_RUNNER_CLONE_MAX_MIB] [TOML: clone_max_mib] [default: 4096]
    #[arg(long, value_name = "MIB")]
    pub clone_max_mib: Option<String>,
    /// Most the runner's caches (mirrors, overlays, templates under <spaces>/.cache) may hold, in MiB; least-recently-used entries not in use are evicted past it [env: EMBARK_RUNNER_CACHE_MAX_MIB] [TOML: cache_max_mib] [default: 10240]
    #[arg(long, value_name = "MIB")]
    pub cache_max_mib: Option<String>,
    /// Git protocols a repository URL may use, comma-separated: https, ssh, git, http, file (file = local repositories) [env: EMBARK_RUNNER_GIT_PROTOCOLS] [TOML: git_protocols] [default: https,ssh,git]
    #[arg(long, value_name = "LIST")]
    pub git_protocols: Option<String>,
    /// When a task directory is removed: never, success (after a succeeded verdict) or terminal (after any verdict) [env: EMBARK_RUNNER_WORKSPACE_CLEANUP] [TOML: workspace_cleanup] [default: never]
    #[arg(long, value_name = "WHEN")]
    pub workspace_cleanup: Option<String>,
    /// Deprecated: use --workspace-cleanup (true = never, false = terminal) [env: EMBARK_RUNNER_KEEP_SPACES] [TOML: keep_spaces]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub keep_spaces: Option<String>,
    /// How many tasks run at once, each in its own sandbox, 1..=64 [env: EMBARK_RUNNER_MAX_TASKS] [TOML: max_tasks] [default: 1]
    #[arg(long, value_name = "N")]
    pub max_tasks: Option<String>,
    /// Longest final assistant text stored with the verdict, in characters; longer ones are cut and marked [env: EMBARK_RESULT_MAX_CHARS] [TOML: result_max_chars] [default: 20000]
    #[arg(long, value_name = "CHARS")]
    pub result_max_chars: Option<String>,
    /// Each task's cost budget, metered by the credential proxy from the provider's answers; a call past it is refused and the task fails budget_exceeded [env: EMBARK_TASK_MAX_COST] [TOML: task_max_cost] [default: none]
    #[arg(long, value_name = "COST")]
    pub task_max_cost: Option<String>,
    /// Run Pi with --no-extensions (no extension or package discovery) [env: EMBARK_PI_NO_EXTENSIONS] [TOML: pi_no_extensions] [default: false]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub pi_no_extensions: Option<String>,
    /// How Pi and its tools are isolated: process, bwrap or docker [env: EMBARK_RUNNER_ISOLATION] [TOML: isolation] [default: process]
    #[arg(long, value_name = "MODE")]
    pub isolation: Option<String>,
    /// The bubblewrap executable, for --isolation bwrap [env: EMBARK_RUNNER_BWRAP_BIN] [TOML: bwrap] [default: `bwrap` on PATH]
    #[arg(long, value_name = "PATH")]
    pub bwrap: Option<String>,
    /// The docker executable, for --isolation docker [env: EMBARK_RUNNER_DOCKER_BIN] [TOML: docker] [default: `docker` on PATH]
    #[arg(long, value_name = "PATH")]
    pub docker: Option<String>,
    /// The image task containers run [env: EMBARK_RUNNER_DOCKER_IMAGE] [TOML: docker_image] [default: embark-pi-runner:0.73.1]
    #[arg(long, value_name = "IMAGE")]
    pub docker_image: Option<String>,
    /// The network task containers join [env: EMBARK_RUNNER_DOCKER_NETWORK] [TOML: docker_network] [default: bridge]
    #[arg(long, value_name = "NETWORK")]
    pub docker_network: Option<String>,
    /// The user task containers run as, UID[:GID], never root [env: EMBARK_RUNNER_DOCKER_USER] [TOML: docker_user] [default: the runner's UID:GID]
    #[arg(long, value_name = "UID[:GID]")]
    pub docker_user: Option<String>,
    /// Where the task directory is mounted in the container [env: EMBARK_RUNNER_DOCKER_TASK_DIR] [TOML: docker_task_dir] [default: /embark/task]
    #[arg(long, value_name = "DIR")]
    pub docker_task_dir: Option<String>,
    /// Labels this runner carries, comma-separated; a task asking for labels runs only where all are [env: EMBARK_RUNNER_LABELS] [TOML: labels] [default: none]
    #[arg(long, value_name = "LIST")]
    pub labels: Option<String>,
    /// Absolute directories the spaces and every profile (symlinks followed) must lie in, comma-separated [env: EMBARK_RUNNER_APPROVED_ROOTS] [TOML: approved_roots] [default: none, no restriction]
    #[arg(long, value_name = "DIRS")]
    pub approved_roots: Option<String>,
    /// Print the effective configuration, each value with its source (secrets redacted), and exit
    #[arg(long)]
    pub print_config: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do instead of running.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate the configuration and every profile, print what each profile can run, and exit (non-zero when something is broken)
    Check,
}

impl Cli {
    pub fn flags(&self) -> Flags {
        Flags::default()
            .with(&CONFIG_FILE, self.config.clone())
            .with(&BROKER_URL, self.broker_url.clone())
            .with(&NAME, self.name.clone())
            .with(&SPACES, self.spaces.clone())
            .with(&PROFILES, self.profiles.clone())
            .with(&PI, self.pi.clone())
            // Absent, `--once` leaves the file's `once` in charge.
            .with(&ONCE, self.once.then_some("true"))
            .with(&CLAIM_WAIT_MS, self.claim_wait_ms.clone())
            .with(&TASK_TIMEOUT_SECS, self.task_timeout_secs.clone())
            .with(&CANCEL_KILL_TIMEOUT_MS, self.cancel_kill_timeout_ms.clone())
            .with(&CLONE_TIMEOUT_SECS, self.clone_timeout_secs.clone())
            .with(&CLONE_MAX_MIB, self.clone_max_mib.clone())
            .with(&CACHE_MAX_MIB, self.cache_max_mib.clone())
            .with(&GIT_PROTOCOLS, self.git_protocols.clone())
            .with(&WORKSPACE_CLEANUP, self.workspace_cleanup.clone())
            .with(&KEEP_SPACES, self.keep_spaces.clone())
            .with(&MAX_TASKS, self.max_tasks.clone())
            .with(&RESULT_MAX_CHARS, self.result_max_chars.clone())
            .with(&TASK_MAX_COST, self.task_max_cost.clone())
            .with(&PI_NO_EXTENSIONS, self.pi_no_extensions.clone())
            .with(&ISOLATION, self.isolation.clone())
            .with(&BWRAP, self.bwrap.clone())
            .with(&DOCKER, self.docker.clone())
            .with(&DOCKER_IMAGE, self.docker_image.clone())
            .with(&DOCKER_NETWORK, self.docker_network.clone())
            .with(&DOCKER_USER, self.docker_user.clone())
            .with(&DOCKER_TASK_DIR, self.docker_task_dir.clone())
            .with(&LABELS, self.labels.clone())
            .with(&APPROVED_ROOTS, self.approved_roots.clone())
    }
}

/// The Pi executable as configured: a bare name (`pi`) is looked up on PATH
/// at startup, anything longer is a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program(pub PathBuf);

impl Program {
    fn is_bare_name(&self) -> bool {
        self.0.components().count() == 1 && self.0.is_relative()
    }
}

impl Setting for Program {
    fn from_text(text: &str) -> Option<Self> {
        Some(Program(PathBuf::from(text)))
    }
    fn to_toml(&self) -> Option<toml::Value> {
        self.0.to_toml()
    }
    /// A bare name stays a name for the PATH lookup.
    fn anchor(self, dir: &Path) -> Self {
        if self.is_bare_name() {
            self
        } else {
            Program(self.0.anchor(dir))
        }
    }
}

impl Setting for WorkspaceCleanup {
    fn from_text(text: &str) -> Option<Self> {
        WorkspaceCleanup::ALL
            .into_iter()
            .find(|when| when.name() == text.trim())
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.name().to_owned()))
    }
}

/// `https,ssh,git` (commas or colons, like `GIT_ALLOW_PROTOCOL`), or a TOML array.
impl Setting for GitProtocols {
    fn from_text(text: &str) -> Option<Self> {
        GitProtocols::parse(text.split([',', ':']))
    }
    fn from_toml(value: &toml::Value) -> Option<Self> {
        match value {
            toml::Value::Array(items) => {
                GitProtocols::parse(items.iter().map(|item| item.as_str()).collect::<Option<Vec<_>>>()?)
            }
            other => other.as_str().and_then(Self::from_text),
        }
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Array(
            self.names().map(|name| toml::Value::String(name.to_owned())).collect(),
        ))
    }
}

/// The runner's labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(pub Vec<String>);

fn list_items(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::Array(items) => items.iter().map(|item| item.as_str().map(str::to_owned)).collect(),
        toml::Value::String(text) => Some(split_list(text)),
        _ => None,
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Setting for Labels {
    fn from_text(text: &str) -> Option<Self> {
        Labels::checked(split_list(text))
    }
    fn from_toml(value: &toml::Value) -> Option<Self> {
        Labels::checked(list_items(value)?)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Array(
            self.0.iter().cloned().map(toml::Value::String).collect(),
        ))
    }
}

impl Labels {
    fn checked(labels: Vec<String>) -> Option<Labels> {
        let ok = labels.len() <= embark_core::intent::MAX_LABELS
            && labels.iter().all(|l| embark_core::intent::check_label(l).is_ok());
        ok.then_some(Labels(labels))
    }
}

/// The approved roots: absolute directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roots(pub Vec<PathBuf>);

impl Setting for Roots {
    fn from_text(text: &str) -> Option<Self> {
        Roots::checked(split_list(text))
    }
    fn from_toml(value: &toml::Value) -> Option<Self> {
        Roots::checked(list_items(value)?)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Array(
            self.0
                .iter()
                .map(|root| toml::Value::String(root.display().to_string()))
                .collect(),
        ))
    }
}

impl Roots {
    fn checked(roots: Vec<String>) -> Option<Roots> {
        let roots: Vec<PathBuf> = roots.into_iter().map(PathBuf::from).collect();
        roots.iter().all(|root| root.is_absolute()).then_some(Roots(roots))
    }
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
    /// After a cancel: SIGTERM to Pi's task guard, then SIGKILL of the guard after this long.
    pub cancel_kill_timeout: Duration,
    pub clone_timeout: Duration,
    pub clone_max_bytes: u64,
    /// The bound of the runner's caches ([`crate::cache`]).
    pub cache_max_bytes: u64,
    pub git_protocols: GitProtocols,
    pub workspace_cleanup: WorkspaceCleanup,
    pub max_tasks: usize,
    pub result_max_chars: usize,
    /// Each task's cost budget (a profile's `max_cost` may lower it).
    pub task_max_cost: Option<f64>,
    pub pi_no_extensions: bool,
    pub isolation: IsolationMode,
    /// The bubblewrap program (looked up on PATH at startup in bwrap mode).
    pub bwrap: PathBuf,
    pub docker: DockerSettings,
    pub labels: Vec<String>,
    /// Where spaces and profiles may lie; empty: anywhere.
    pub approved_roots: Vec<PathBuf>,
}

/// The `docker_*` knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerSettings {
    /// The docker program (looked up on PATH at startup in docker mode).
    pub program: PathBuf,
    pub image: String,
    pub network: String,
    /// `UID[:GID]`, never root.
    pub user: String,
    /// Where the task directory is mounted in the container.
    pub task_dir: PathBuf,
}

impl Config {
    /// Reads the TOML file and resolves every knob; tests pass their own `env`.
    pub fn load(cli: &Cli, env: Env<'_>) -> Result<Config, ConfigError> {
        let mut resolver = Resolver::load(&DECLARATION, cli.flags(), env)?;
        Config::resolve(&mut resolver, env)
    }

    /// Every knob is looked up before any check fails, so `--print-config`
    /// shows them all.
    pub fn resolve(resolver: &mut Resolver<'_>, env: Env<'_>) -> Result<Config, ConfigError> {
        let broker_url = resolver.optional(&BROKER_URL)?;
        let enrollment_secret = resolver.optional(&ENROLLMENT_SECRET)?;
        let name = resolver.or_default(&NAME, host_name())?;
        let spaces = resolver.or_else(&SPACES, || Some(dirs::data_home(env)?.join("embark/spaces")))?;
        let profiles = resolver.or_else(&PROFILES, || Some(dirs::config_home(env)?.join("embark/profiles")))?;
        let pi = resolver.or_default(&PI, Program(PathBuf::from("pi")))?;
        let once = resolver.or_default(&ONCE, false)?;
        let claim_wait_ms = resolver.or_default(&CLAIM_WAIT_MS, DEFAULT_CLAIM_WAIT_MS)?;
        let task_timeout_secs = resolver.or_default(&TASK_TIMEOUT_SECS, DEFAULT_TASK_TIMEOUT_SECS)?;
        let cancel_kill_timeout_ms = resolver.or_default(&CANCEL_KILL_TIMEOUT_MS, DEFAULT_CANCEL_KILL_TIMEOUT_MS)?;
        let clone_timeout_secs = resolver.or_default(&CLONE_TIMEOUT_SECS, DEFAULT_CLONE_TIMEOUT_SECS)?;
        let clone_max_mib = resolver.or_default(&CLONE_MAX_MIB, DEFAULT_CLONE_MAX_MIB)?;
        let cache_max_mib = resolver.or_default(&CACHE_MAX_MIB, crate::cache::DEFAULT_MAX_MIB)?;
        let git_protocols = resolver.or_default(&GIT_PROTOCOLS, GitProtocols::default())?;
        let keep_spaces = resolver.optional(&KEEP_SPACES)?;
        let cleanup_from_alias = keep_spaces.as_ref().map(|keep| {
            if keep.value {
                WorkspaceCleanup::Never
            } else {
                WorkspaceCleanup::Terminal
            }
        });
        let workspace_cleanup = resolver.optional(&WORKSPACE_CLEANUP)?;
        let max_tasks = resolver.or_default(&MAX_TASKS, 1)?;
        let result_max_chars = resolver.or_default(&RESULT_MAX_CHARS, DEFAULT_RESULT_MAX_CHARS)?;
        let task_max_cost = resolver.optional(&TASK_MAX_COST)?;
        let pi_no_extensions = resolver.or_default(&PI_NO_EXTENSIONS, false)?;
        let isolation = resolver.or_default(&ISOLATION, IsolationMode::Process)?;
        let bwrap = resolver.or_default(&BWRAP, Program(PathBuf::from("bwrap")))?;
        let docker = resolver.or_default(&DOCKER, Program(PathBuf::from("docker")))?;
        let docker_image = resolver.or_default(&DOCKER_IMAGE, DEFAULT_DOCKER_IMAGE.to_owned())?;
        let docker_network = resolver.or_default(&DOCKER_NETWORK, "bridge".to_owned())?;
        let docker_user = resolver.or_else(&DOCKER_USER, runner_user)?;
        let docker_task_dir = resolver.or_default(&DOCKER_TASK_DIR, PathBuf::from(DEFAULT_DOCKER_TASK_DIR))?;
        let labels = resolver.or_default(&LABELS, Labels::default())?.value.0;
        let approved_roots = resolver.or_default(&APPROVED_ROOTS, Roots::default())?.value.0;

        let broker_url = broker_url
            .ok_or_else(|| resolver.missing(&BROKER_URL, ""))?
            .ensure(|url| url.starts_with("http://") || url.starts_with("https://"))?
            .value;
        let enrollment_secret = enrollment_secret
            .ok_or_else(|| resolver.missing(&ENROLLMENT_SECRET, " (it must match the broker's)"))?
            .value;
        let no_home = ", or set HOME for the default";
        // Pi runs with the workspace as its cwd: every path it gets must be absolute.
        let spaces = spaces.ok_or_else(|| resolver.missing(&SPACES, no_home))?.absolute()?;
        let profiles = profiles
            .ok_or_else(|| resolver.missing(&PROFILES, no_home))?
            .absolute()?;
        let pi = match pi.value {
            pi if pi.is_bare_name() => pi.0,
            pi => embark_core::config::absolute(PI.key, pi.0)?,
        };
        let claim_wait_ms = claim_wait_ms
            .ensure(|ms| (MIN_CLAIM_WAIT_MS..=MAX_CLAIM_WAIT_MS).contains(ms))?
            .value;
        let task_timeout_secs = task_timeout_secs.ensure(|secs| *secs > 0)?.value;
        let cancel_kill_timeout_ms = cancel_kill_timeout_ms
            .ensure(|ms| (1..=MAX_CANCEL_KILL_TIMEOUT_MS).contains(ms))?
            .value;
        let clone_timeout_secs = clone_timeout_secs.ensure(|secs| *secs > 0)?.value;
        let clone_max_mib = clone_max_mib
            .ensure(|mib| *mib > 0 && mib.checked_mul(1 << 20).is_some())?
            .value;
        let cache_max_mib = cache_max_mib
            .ensure(|mib| *mib > 0 && mib.checked_mul(1 << 20).is_some())?
            .value;
        let workspace_cleanup = match (workspace_cleanup, cleanup_from_alias) {
            (Some(cleanup), None) => cleanup.value,
            (None, Some(alias)) => {
                resolver.warn(format!(
                    "keep_spaces is deprecated: it means workspace_cleanup = \"{}\" here; set that instead",
                    alias.name()
                ));
                alias
            }
            (None, None) => WorkspaceCleanup::Never,
            (Some(_), Some(_)) => {
                let keep = keep_spaces.expect("the alias was set");
                return Err(ConfigError::Invalid {
                    key: KEEP_SPACES.key,
                    origin: keep.source,
                    value: Some(keep.value.to_string()),
                    allowed: "workspace_cleanup alone (keep_spaces is its deprecated alias, and both are set)",
                });
            }
        };
        let max_tasks = max_tasks.ensure(|n| (1..=MAX_MAX_TASKS).contains(n))?.value;
        let result_max_chars = result_max_chars.ensure(|n| *n > 0)?.value;
        let task_max_cost = task_max_cost
            .map(|cost| cost.ensure(|c| *c >= 0.0))
            .transpose()?
            .map(|cost| cost.value);
        let program = |program: Program, key| match program {
            program if program.is_bare_name() => Ok(program.0),
            program => embark_core::config::absolute(key, program.0),
        };
        let bwrap = program(bwrap.value, BWRAP.key)?;
        let docker_program = program(docker.value, DOCKER.key)?;
        let docker_task_dir = docker_task_dir
            .ensure(|dir| dir.is_absolute() && dir.parent().is_some())?
            .value;
        let docker_user = match docker_user {
            Some(user) => user.ensure(|user| is_container_user(user))?.value,
            // Only a runner that runs containers needs one.
            None if isolation.value == IsolationMode::Docker => {
                return Err(resolver.missing(
                    &DOCKER_USER,
                    " (the runner runs as root, and a task container never does)",
                ));
            }
            None => String::new(),
        };
        Ok(Config {
            broker_url,
            enrollment_secret,
            name: name.value,
            spaces,
            profiles,
            pi,
            once: once.value,
            claim_wait_ms,
            task_timeout: Duration::from_secs(task_timeout_secs),
            cancel_kill_timeout: Duration::from_millis(cancel_kill_timeout_ms),
            clone_timeout: Duration::from_secs(clone_timeout_secs),
            clone_max_bytes: clone_max_mib << 20,
            cache_max_bytes: cache_max_mib << 20,
            git_protocols: git_protocols.value,
            workspace_cleanup,
            max_tasks,
            result_max_chars,
            task_max_cost,
            pi_no_extensions: pi_no_extensions.value,
            isolation: isolation.value,
            bwrap,
            docker: DockerSettings {
                program: docker_program,
                image: docker_image.value,
                network: docker_network.value,
                user: docker_user,
                task_dir: docker_task_dir,
            },
            labels,
            approved_roots,
        })
    }
}

/// The runner's own `UID:GID`, the default container user, unless it is root.
fn runner_user() -> Option<String> {
    let uid = rustix::process::geteuid();
    let gid = rustix::process::getegid();
    (!uid.is_root()).then(|| format!("{}:{}", uid.as_raw(), gid.as_raw()))
}

/// `UID` or `UID:GID` (numbers, or names the image knows), never root.
fn is_container_user(user: &str) -> bool {
    let (uid, gid) = user.split_once(':').unwrap_or((user, ""));
    let plain = |part: &str| part.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let root = matches!(uid, "root") || (uid.bytes().all(|b| b.is_ascii_digit()) && uid.parse::<u64>() == Ok(0));
    !uid.is_empty() && plain(uid) && plain(gid) && !root && !(user.contains(':') && gid.is_empty())
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

    use clap::CommandFactory;
    use embark_core::config::Source;

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
        let config = Config::load(&cli(&["--broker-url", "http://127.0.0.1:1"]), &env).expect("resolves");
        assert_eq!(config.spaces, home.path().join(".local/share/embark/spaces"));
        assert_eq!(config.profiles, home.path().join(".config/embark/profiles"));
        assert_eq!(config.pi, PathBuf::from("pi"));
        assert_eq!(config.claim_wait_ms, 25_000);
        assert_eq!(config.task_timeout, Duration::from_secs(3600));
        assert_eq!(config.cancel_kill_timeout, Duration::from_millis(5000));
        assert_eq!(config.clone_timeout, Duration::from_secs(600));
        assert_eq!(config.workspace_cleanup, WorkspaceCleanup::Never);
        assert_eq!(config.isolation, IsolationMode::Process);
        assert_eq!(config.max_tasks, 1);
        assert_eq!(config.result_max_chars, 20_000);
        assert!(!config.pi_no_extensions);
        assert_eq!(config.git_protocols, GitProtocols::default());
        assert_eq!(config.clone_max_bytes, 4096 << 20);
        assert_eq!(config.cache_max_bytes, 10240 << 20);
        assert_eq!(config.bwrap, PathBuf::from("bwrap"));
        assert_eq!(config.docker.program, PathBuf::from("docker"));
        assert_eq!(config.docker.image, "embark-pi-runner:0.73.1");
        assert_eq!(config.docker.network, "bridge");
        assert_eq!(config.docker.task_dir, PathBuf::from("/embark/task"));
        assert!(!config.once);
        assert!(!config.name.is_empty());
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the secret never shows in Debug"
        );
    }

    #[test]
    fn flags_beat_env_which_beats_the_toml_file_which_fills_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let toml_path = dir.path().join("runner.toml");
        std::fs::write(
            &toml_path,
            "broker_url = \"http://toml\"\nname = \"from-toml\"\nclaim_wait_ms = 1000\nkeep_spaces = false\n\
             enrollment_secret = \"toml-secret\"\nonce = true\n",
        )
        .expect("write toml");
        let file = toml_path.to_str().expect("utf-8");
        let env = env_of(&[("HOME", "/nonexistent-home"), ("EMBARK_RUNNER_CLAIM_WAIT_MS", "2000")]);
        let args = ["--config", file, "--name", "from-flag", "--keep-spaces"];
        let config = Config::load(&cli(&args), &env).expect("resolves");
        assert_eq!(config.broker_url, "http://toml");
        assert_eq!(config.name, "from-flag");
        assert_eq!(config.claim_wait_ms, 2000, "env beats TOML");
        assert_eq!(
            config.workspace_cleanup,
            WorkspaceCleanup::Never,
            "--keep-spaces beats keep_spaces = false"
        );
        assert!(config.once, "no --once leaves the file's");
        assert_eq!(config.enrollment_secret.expose(), "toml-secret");

        let env = env_of(&[("HOME", "/x"), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "env-secret")]);
        let args = ["--config", file, "--keep-spaces=false", "--claim-wait-ms", "300"];
        let config = Config::load(&cli(&args), &env).expect("resolves");
        assert_eq!(config.enrollment_secret.expose(), "env-secret", "env beats TOML");
        assert_eq!(config.workspace_cleanup, WorkspaceCleanup::Terminal);
        assert_eq!(config.claim_wait_ms, 300);

        // Empty values count as unset: they do not hide the file's.
        let env = env_of(&[
            ("HOME", "/x"),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", ""),
            ("EMBARK_RUNNER_NAME", "  "),
        ]);
        let args = ["--config", file, "--broker-url", ""];
        let config = Config::load(&cli(&args), &env).expect("resolves");
        assert_eq!(config.broker_url, "http://toml");
        assert_eq!(config.enrollment_secret.expose(), "toml-secret");
        assert_eq!(config.name, "from-toml");
        // And a blank name everywhere is the host name, not an empty name.
        let config = Config::load(
            &cli(&["--broker-url", "http://x", "--name", " "]),
            &env_of(&[("HOME", "/x"), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "s")]),
        )
        .expect("resolves");
        assert_eq!(config.name, host_name());
    }

    #[test]
    fn the_default_file_is_read_and_may_be_missing_but_a_named_one_must_exist() {
        let home = tempfile::tempdir().expect("temp dir");
        let h = home.path().to_str().expect("utf-8");
        let env = env_of(&[("HOME", h), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "s")]);
        let missing = Config::load(&cli(&[]), &env).expect_err("no URL anywhere");
        let default = home.path().join(".config/embark/runner.toml");
        assert_eq!(
            missing.to_string(),
            format!(
                "the broker URL is not set: pass --broker-url, set EMBARK_BROKER_URL or put broker_url in {}",
                default.display()
            )
        );
        std::fs::create_dir_all(default.parent().expect("dir")).expect("mkdir");
        std::fs::write(&default, "broker_url = \"https://b\"\nspaces = \"s\"\npi = \"pi\"\n").expect("write");
        let config = Config::load(&cli(&[]), &env).expect("resolves");
        assert_eq!(config.broker_url, "https://b");
        assert_eq!(
            config.spaces,
            home.path().join(".config/embark/s"),
            "from the file's directory"
        );
        assert_eq!(config.pi, PathBuf::from("pi"), "a bare name stays a name");

        let env = env_of(&[("HOME", h), ("EMBARK_RUNNER_CONFIG", "/nonexistent/runner.toml")]);
        let err = Config::load(&cli(&[]), &env).expect_err("named");
        assert!(
            matches!(
                err,
                ConfigError::NamedFileMissing {
                    origin: Source::Env("EMBARK_RUNNER_CONFIG"),
                    ..
                }
            ),
            "{err:?}"
        );
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
        let config = Config::load(&cli(&args), &env).expect("resolves");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(config.spaces, cwd.join("spaces"));
        assert_eq!(config.profiles, cwd.join("p"));
        assert_eq!(config.pi, cwd.join("bin/pi"));
        let args = ["--broker-url", "http://x", "--pi", "pi"];
        assert_eq!(
            Config::load(&cli(&args), &env).expect("resolves").pi,
            PathBuf::from("pi"),
            "PATH lookup"
        );
    }

    #[test]
    fn bad_input_gets_typed_errors_naming_key_source_and_what_is_allowed() {
        let env = env_of(&[("HOME", "/nonexistent-home"), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "x")]);
        assert!(matches!(
            Config::load(&cli(&[]), &env),
            Err(ConfigError::Missing { .. })
        ));
        let no_secret = env_of(&[("HOME", "/nonexistent-home")]);
        let err = Config::load(&cli(&["--broker-url", "http://x"]), &no_secret).expect_err("no secret");
        assert!(
            err.to_string()
                .starts_with("the enrollment secret is not set: set EMBARK_RUNNER_ENROLLMENT_SECRET"),
            "{err}"
        );
        assert!(err.to_string().ends_with("(it must match the broker's)"), "{err}");
        let err =
            Config::load(&cli(&["--broker-url", "http://x", "--claim-wait-ms", "40000"]), &env).expect_err("range");
        assert_eq!(
            err.to_string(),
            "claim_wait_ms = 40000 (from flag --claim-wait-ms) is not allowed: use a whole number of milliseconds from 100 to 30000"
        );
        let err = Config::load(&cli(&["--broker-url", "http://x", "--claim-wait-ms", "soon"]), &env).expect_err("type");
        assert!(
            err.to_string()
                .starts_with("claim_wait_ms = \"soon\" (from flag --claim-wait-ms)"),
            "{err}"
        );
        assert!(matches!(
            Config::load(&cli(&["--broker-url", "http://x", "--task-timeout-secs", "0"]), &env),
            Err(ConfigError::Invalid {
                key: "task_timeout_secs",
                ..
            })
        ));
        let env_url = env_of(&[
            ("HOME", "/h"),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", "x"),
            ("EMBARK_BROKER_URL", "127.0.0.1:8787"),
        ]);
        let err = Config::load(&cli(&[]), &env_url).expect_err("no scheme");
        assert!(err.to_string().starts_with("broker_url = \"127.0.0.1:8787\" (from env EMBARK_BROKER_URL) is not allowed: use the broker's root URL starting with http://"), "{err}");
        let bad_bool = env_of(&[
            ("HOME", "/h"),
            ("EMBARK_RUNNER_ENROLLMENT_SECRET", "x"),
            ("EMBARK_RUNNER_KEEP_SPACES", "sometimes"),
        ]);
        let err = Config::load(&cli(&["--broker-url", "http://x"]), &bad_bool).expect_err("not a bool");
        assert!(err.to_string().contains("use true or false"), "{err}");
        assert!(matches!(
            Config::load(
                &cli(&["--broker-url", "http://x", "--config", "/nonexistent/runner.toml"]),
                &env
            ),
            Err(ConfigError::NamedFileMissing { .. })
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        let toml_path = dir.path().join("runner.toml");
        std::fs::write(&toml_path, "brokr_url = \"typo\"\n").expect("write toml");
        let err = Config::load(&cli(&["--config", toml_path.to_str().expect("utf-8")]), &env)
            .expect_err("unknown keys are refused");
        assert!(err.to_string().contains("unknown key `brokr_url` (line 1)"), "{err}");
        assert!(
            err.to_string().contains("`broker_url`, `enrollment_secret`, `name`"),
            "{err}"
        );
        std::fs::write(&toml_path, "claim_wait_ms = \"1000\"\n").expect("write toml");
        let err = Config::load(&cli(&["--config", toml_path.to_str().expect("utf-8")]), &env).expect_err("a string");
        assert!(
            err.to_string().starts_with("claim_wait_ms = \"1000\" (from file "),
            "{err}"
        );
        let no_home = env_of(&[("EMBARK_RUNNER_ENROLLMENT_SECRET", "x")]);
        let err = Config::load(&cli(&["--broker-url", "http://x"]), &no_home).expect_err("no home");
        assert!(
            err.to_string()
                .starts_with("the spaces directory is not set: pass --spaces"),
            "{err}"
        );
    }

    #[test]
    fn isolation_cleanup_and_git_knobs_take_their_words_and_refuse_others() {
        let env = env_of(&[("HOME", "/h"), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "x")]);
        let load = |args: &[&str]| {
            let mut argv = vec!["--broker-url", "http://x"];
            argv.extend_from_slice(args);
            Config::load(&cli(&argv), &env)
        };
        let config = load(&[
            "--isolation",
            "bwrap",
            "--workspace-cleanup",
            "success",
            "--max-tasks",
            "3",
            "--git-protocols",
            "https,file",
            "--result-max-chars",
            "50",
            "--pi-no-extensions",
            "--clone-max-mib",
            "10",
        ])
        .expect("resolves");
        assert_eq!(config.isolation, IsolationMode::Bwrap);
        assert_eq!(config.workspace_cleanup, WorkspaceCleanup::Success);
        assert_eq!(config.max_tasks, 3);
        assert_eq!(config.git_protocols.names().collect::<Vec<_>>(), ["https", "file"]);
        assert_eq!(config.result_max_chars, 50);
        assert!(config.pi_no_extensions);
        assert_eq!(config.clone_max_bytes, 10 << 20);

        for (args, starts) in [
            (
                &["--isolation", "vm"][..],
                "isolation = \"vm\" (from flag --isolation) is not allowed: use process, bwrap or docker",
            ),
            (&["--workspace-cleanup", "always"], "workspace_cleanup = \"always\""),
            (&["--max-tasks", "0"], "max_tasks = 0"),
            (&["--max-tasks", "65"], "max_tasks = 65"),
            (&["--git-protocols", "https,ext"], "git_protocols = \"https,ext\""),
            (&["--git-protocols", ","], "git_protocols = \",\""),
            (&["--result-max-chars", "0"], "result_max_chars = 0"),
            (&["--docker-task-dir", "relative"], "docker_task_dir = \"relative\""),
            (&["--docker-task-dir", "/"], "docker_task_dir = \"/\""),
            (&["--docker-user", "0"], "docker_user = \"0\""),
            (&["--docker-user", "root:1000"], "docker_user = \"root:1000\""),
            (&["--docker-user", "1000:"], "docker_user = \"1000:\""),
        ] {
            let err = load(args).expect_err(&format!("{args:?}"));
            assert!(err.to_string().starts_with(starts), "{args:?}: {err}");
        }
        let config = load(&["--isolation", "docker", "--docker-user", "1000:1000"]).expect("resolves");
        assert_eq!(config.docker.user, "1000:1000");
        assert!(is_container_user("embark") && is_container_user("1000") && is_container_user("1000:100"));

        // The TOML file may list protocols as an array.
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("runner.toml");
        std::fs::write(&file, "git_protocols = [\"ssh\", \"git\"]\n").expect("write");
        let config = load(&["--config", file.to_str().expect("utf-8")]).expect("resolves");
        assert_eq!(config.git_protocols.names().collect::<Vec<_>>(), ["ssh", "git"]);
    }

    #[test]
    fn keep_spaces_is_a_deprecated_alias_of_workspace_cleanup() {
        let env = env_of(&[("HOME", "/h"), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "x")]);
        let flags = cli(&["--broker-url", "http://x", "--keep-spaces=false"]);
        let mut resolver = Resolver::load(&DECLARATION, flags.flags(), &env).expect("loads");
        let config = Config::resolve(&mut resolver, &env).expect("resolves");
        assert_eq!(config.workspace_cleanup, WorkspaceCleanup::Terminal);
        assert_eq!(
            resolver.warnings(),
            ["keep_spaces is deprecated: it means workspace_cleanup = \"terminal\" here; set that instead"]
        );
        assert!(
            resolver
                .report()
                .to_string()
                .contains("# warning: keep_spaces is deprecated")
        );
        let both = cli(&[
            "--broker-url",
            "http://x",
            "--keep-spaces",
            "--workspace-cleanup",
            "never",
        ]);
        let err = Config::load(&both, &env).expect_err("both");
        assert_eq!(
            err.to_string(),
            "keep_spaces = true (from flag --keep-spaces) is not allowed: use workspace_cleanup alone (keep_spaces is its deprecated alias, and both are set)"
        );
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
        let err = Config::load(&cli(&["--config", toml_path.to_str().expect("utf-8")]), &env).expect_err("not TOML");
        let text = embark_core::text::error_chain(&err);
        assert!(matches!(err, ConfigError::ParseFile { .. }), "{text}");
        assert!(text.contains("line 2, column 21"), "{text}");
        assert!(text.contains(&toml_path.display().to_string()), "{text}");
        assert!(!text.contains("hunter2"), "the secret is never quoted: {text}");
    }

    #[test]
    fn help_names_every_flag_and_variable_and_the_real_claim_bound() {
        let help = Cli::command().render_long_help().to_string();
        assert_eq!(DECLARATION.missing_from_help(&help), Vec::<&str>::new(), "{help}");
        assert!(CLAIM_WAIT_MS.allowed.ends_with(&format!("to {MAX_CLAIM_WAIT_MS}")));
    }
}
