//! `embark-runner`: see `docs/runner.md`. The same binary is each task's
//! guard (`embark-runner __task-guard …`, see `guard`) and, inside a
//! sandbox with a network of its own, the credential proxy's relay
//! (`embark-runner __proxy-relay …`, see `proxy::relay`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use embark_core::config::Resolver;
use embark_core::dirs;
use embark_core::shutdown::{Shutdown, Signals, trigger_on_signal};
use embark_core::text::error_chain;
use embark_runner::bundle::LiveBundles;
use embark_runner::capabilities;
use embark_runner::config::{Cli, Command, Config, DECLARATION};
use embark_runner::guard::{self, Guard};
use embark_runner::isolation::{IsolationMode, Sandbox, bwrap};
use embark_runner::pi_process::resolve_program;
use embark_runner::{leftovers, space};

fn main() -> ExitCode {
    // A guard runs before anything else: no logging, no runtime of ours.
    if let Some(code) = guard::run_if_guard() {
        return code;
    }
    // So does the credential proxy's relay inside a sandbox.
    if let Some(code) = embark_runner::proxy::relay::run_if_relay() {
        return code;
    }
    embark_core::logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("embark-runner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain once, like `{:#}`, without repeating a cause a message already quotes.
            eprintln!("embark-runner: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let env = dirs::process_env;
    let mut resolver = Resolver::load(&DECLARATION, cli.flags(), &env)?;
    let config = Config::resolve(&mut resolver, &env);
    if cli.print_config {
        // On stdout, then the error (if any) the runner would have stopped with.
        print!("{}", resolver.report());
        config?;
        return Ok(());
    }
    for warning in resolver.warnings() {
        tracing::warn!("{warning}");
    }
    let mut config = config?;
    let path_var = std::env::var_os("PATH");
    config.pi = resolve_program(&config.pi, path_var.as_deref())?;
    // Every profile is read before anything starts: a broken one stops the
    // runner here, naming its file and key, before any task is claimed.
    let inspection = capabilities::inspect(&config)?;
    if matches!(cli.command, Some(Command::Check)) {
        print!("{}", capabilities::render(&config, &inspection));
        return Ok(());
    }
    match config.isolation {
        IsolationMode::Process => {}
        IsolationMode::Bwrap => {
            config.bwrap = resolve_program(&config.bwrap, path_var.as_deref()).context(
                "--isolation bwrap needs bubblewrap: install it (apt-get install bubblewrap) or pass --bwrap",
            )?;
            bwrap::probe(&config.bwrap).await.map_err(|why| {
                anyhow::anyhow!(
                    "bubblewrap ({}) cannot create a sandbox on this machine ({why}): allow unprivileged user namespaces, or use another --isolation",
                    config.bwrap.display()
                )
            })?;
        }
        IsolationMode::Docker => {
            config.docker.program = resolve_program(&config.docker.program, path_var.as_deref())
                .context("--isolation docker needs the docker CLI: install it or pass --docker")?;
        }
    }
    std::fs::create_dir_all(&config.spaces)
        .with_context(|| format!("cannot create the spaces directory {}", config.spaces.display()))?;
    // Held until the runner exits: no other runner's task is in these spaces.
    let _spaces_lock = space::lock_spaces(&config.spaces)?;
    tracing::info!(
        pi = %config.pi.display(),
        spaces = %config.spaces.display(),
        profiles = %config.profiles.display(),
        isolation = %config.isolation,
        max_tasks = config.max_tasks,
        "starting"
    );
    // Signals are heard from here on: a SIGTERM during the sweep below is a
    // graceful stop, not the default death.
    let bundles = LiveBundles::default();
    remove_bundles_on_panic(bundles.clone());
    let on_exit = bundles.clone();

    let shutdown = Shutdown::new();
    let signals = Signals::listen().context("cannot listen for SIGINT and SIGTERM")?;
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut signals = trigger_on_signal(signals, shutdown).await;
            tracing::warn!("shutdown requested: no more claims; running tasks are aborted and reported as failed");
            signals.next().await;
            // Each task's guard sees us go (its death signal) and ends its
            // processes; the bundles go now.
            tracing::error!("second signal: exiting now");
            remove_live_bundles(&on_exit);
            std::process::exit(130);
        }
    });

    sweep_leftovers(&config).await;

    let sandbox = Sandbox {
        mode: config.isolation,
        guard: Guard::this_binary(),
        bwrap: config.bwrap.clone(),
        docker: config.docker.clone(),
        // What a sandbox must never see, even inside a system directory.
        hidden: [
            std::env::var_os("HOME").map(PathBuf::from),
            Some(config.profiles.clone()),
            Some(config.spaces.clone()),
            resolver.file().map(Path::to_owned),
        ]
        .into_iter()
        .flatten()
        .filter(|path| path.is_absolute())
        .collect(),
        runtime: match config.isolation {
            IsolationMode::Bwrap => bwrap::Runtime::find(&config.pi, path_var.as_deref()),
            _ => bwrap::Runtime::default(),
        },
    };
    tracing::debug!(?sandbox, "sandbox");

    embark_runner::runner::run(&config, inspection.capabilities, sandbox, bundles, shutdown).await?;
    Ok(())
}

/// A runner that died abruptly (SIGKILL, a crash) left its tasks'
/// bundles, processes and containers behind; nothing runs in these spaces now.
async fn sweep_leftovers(config: &Config) {
    let swept = leftovers::sweep(&config.spaces, config.workspace_cleanup, &config.docker.program).await;
    if swept.bundles > 0 {
        tracing::warn!(
            "removed {} task bundles (credential copies) a previous runner left in {}",
            swept.bundles,
            config.spaces.display()
        );
    }
    if !swept.abandoned.is_empty() {
        tracing::warn!(
            tasks = ?swept.abandoned.iter().map(ToString::to_string).collect::<Vec<_>>(),
            processes = swept.processes,
            containers = swept.containers,
            removed_dirs = swept.removed_dirs,
            "{} tasks a previous runner left running were cleaned up (they stay `running` at the broker until leases reclaim them)",
            swept.abandoned.len()
        );
    }
    for failure in &swept.failures {
        tracing::error!("{failure}");
    }
}

/// Best effort on an exit that skips the tasks' own clean-up.
fn remove_live_bundles(bundles: &LiveBundles) {
    for (dir, removed) in bundles.remove_now() {
        match removed {
            Ok(()) => tracing::info!("removed the task bundle {}", dir.display()),
            Err(e) => tracing::error!("{}", error_chain(&e)),
        }
    }
}

/// A panic ends the runner without the tasks' clean-up: the bundles go
/// first, then the usual panic report.
fn remove_bundles_on_panic(bundles: LiveBundles) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = bundles.remove_now();
        report(info);
    }));
}
