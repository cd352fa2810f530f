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

/// Shortest claim long-poll accepted: shorter ones would hammer the broker.
const MIN_CLAIM_WAIT_MS: u64 = 100;
const DEFAULT_CLAIM_WAIT_MS: u64 = 25_000;
const DEFAULT_TASK_TIMEOUT_SECS: u64 = 3600;
const DEFAULT_CLONE_TIMEOUT_SECS: u64 = 600;

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
pub static CLONE_TIMEOUT_SECS: Knob<u64> = Knob::new(
    "clone_timeout_secs",
    "the clone timeout",
    "a whole number of seconds, at least 1",
)
.flag("--clone-timeout-secs")
.env("EMBARK_RUNNER_CLONE_TIMEOUT_SECS");
pub static KEEP_SPACES: Knob<bool> = Knob::new(
    "keep_spaces",
    "whether task directories are kept",
    "true or false (also yes/no, on/off, 1/0)",
)
.flag("--keep-spaces")
.env("EMBARK_RUNNER_KEEP_SPACES");

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
        &CLONE_TIMEOUT_SECS.spec,
        &KEEP_SPACES.spec,
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
    /// Longest the git clone and checkout may take [env: EMBARK_RUNNER_CLONE_TIMEOUT_SECS] [TOML: clone_timeout_secs] [default: 600]
    #[arg(long, value_name = "SECS")]
    pub clone_timeout_secs: Option<String>,
    /// Keep each task directory after the task finished; `--keep-spaces=false` removes them [env: EMBARK_RUNNER_KEEP_SPACES] [TOML: keep_spaces] [default: true]
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub keep_spaces: Option<String>,
    /// Print the effective configuration, each value with its source (secrets redacted), and exit
    #[arg(long)]
    pub print_config: bool,
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
            .with(&CLONE_TIMEOUT_SECS, self.clone_timeout_secs.clone())
            .with(&KEEP_SPACES, self.keep_spaces.clone())
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
        let clone_timeout_secs = resolver.or_default(&CLONE_TIMEOUT_SECS, DEFAULT_CLONE_TIMEOUT_SECS)?;
        let keep_spaces = resolver.or_default(&KEEP_SPACES, true)?;

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
        let clone_timeout_secs = clone_timeout_secs.ensure(|secs| *secs > 0)?.value;
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
            clone_timeout: Duration::from_secs(clone_timeout_secs),
            keep_spaces: keep_spaces.value,
        })
    }
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
        assert_eq!(config.clone_timeout, Duration::from_secs(600));
        assert!(config.keep_spaces);
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
        assert!(config.keep_spaces, "--keep-spaces beats keep_spaces = false");
        assert!(config.once, "no --once leaves the file's");
        assert_eq!(config.enrollment_secret.expose(), "toml-secret");

        let env = env_of(&[("HOME", "/x"), ("EMBARK_RUNNER_ENROLLMENT_SECRET", "env-secret")]);
        let args = ["--config", file, "--keep-spaces=false", "--claim-wait-ms", "300"];
        let config = Config::load(&cli(&args), &env).expect("resolves");
        assert_eq!(config.enrollment_secret.expose(), "env-secret", "env beats TOML");
        assert!(!config.keep_spaces);
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
