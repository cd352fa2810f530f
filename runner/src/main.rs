//! `embark-runner`: see `docs/runner.md`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use embark_core::config::Resolver;
use embark_core::dirs;
use embark_core::shutdown::{Shutdown, Signals, trigger_on_signal};
use embark_core::text::error_chain;
use embark_runner::config::{Cli, Config, DECLARATION};
use embark_runner::pi_process::resolve_program;
use embark_runner::profile::{LiveCredentials, sweep_credentials};
use embark_runner::{orphans, space};

#[tokio::main]
async fn main() -> ExitCode {
    embark_core::logging::init();
    match run().await {
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
    config.pi = resolve_program(&config.pi, std::env::var_os("PATH").as_deref())?;
    std::fs::create_dir_all(&config.spaces)
        .with_context(|| format!("cannot create the spaces directory {}", config.spaces.display()))?;
    // Held until the runner exits: no other runner's task is in these spaces.
    let _spaces_lock = space::lock_spaces(&config.spaces)?;
    tracing::info!(
        pi = %config.pi.display(),
        spaces = %config.spaces.display(),
        profiles = %config.profiles.display(),
        "starting"
    );
    sweep_stale_credentials(&config.spaces);

    // Orphans of the task's tools come to us instead of init, so they can be ended.
    let stop_orphans = match orphans::become_subreaper() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot become a child subreaper, so processes a task leaves behind are not ended: {e}");
            false
        }
    };

    let credentials = LiveCredentials::default();
    remove_credentials_on_panic(credentials.clone());
    let on_exit = credentials.clone();

    let shutdown = Shutdown::new();
    let signals = Signals::listen().context("cannot listen for SIGINT and SIGTERM")?;
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut signals = trigger_on_signal(signals, shutdown).await;
            tracing::warn!("shutdown requested: no more claims; a running task is aborted and reported as failed");
            signals.next().await;
            // Pi sits in its own process group; it exits when its stdin closes with us.
            // Its leftover processes stay; the task's credential copies do not.
            tracing::error!("second signal: exiting now");
            remove_live_credentials(&on_exit);
            std::process::exit(130);
        }
    });

    embark_runner::runner::run(&config, stop_orphans, credentials, shutdown).await?;
    Ok(())
}

/// A runner that died abruptly (SIGKILL, a crash) left its task's
/// credential copies behind; nothing runs in these spaces now.
fn sweep_stale_credentials(spaces: &std::path::Path) {
    match sweep_credentials(spaces) {
        Ok(swept) => {
            if !swept.removed.is_empty() {
                tracing::warn!(
                    "removed {} credential copies a previous runner left in {}",
                    swept.removed.len(),
                    spaces.display()
                );
            }
            for failure in &swept.failed {
                tracing::error!("{}", error_chain(failure));
            }
        }
        Err(e) => tracing::error!("cannot look for stale credential copies in {}: {e}", spaces.display()),
    }
}

/// Best effort on an exit that skips the task's own clean-up.
fn remove_live_credentials(credentials: &LiveCredentials) {
    match credentials.remove_now() {
        Some((dir, Ok(removed))) => tracing::info!("removed the credential copies {removed:?} in {}", dir.display()),
        Some((_, Err(e))) => tracing::error!("{}", error_chain(&e)),
        None => {}
    }
}

/// A panic ends the runner without the task's clean-up: the credential
/// copies go first, then the usual panic report.
fn remove_credentials_on_panic(credentials: LiveCredentials) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = credentials.remove_now();
        report(info);
    }));
}
