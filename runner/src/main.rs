//! `embark-runner`: see `docs/runner.md`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use embark_core::text::error_chain;
use embark_runner::config::{Cli, Config};
use embark_runner::orphans;
use embark_runner::pi_process::resolve_program;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

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
    let mut config = Config::resolve(cli, &|key| std::env::var(key).ok())?;
    config.pi = resolve_program(&config.pi, std::env::var_os("PATH").as_deref())?;
    std::fs::create_dir_all(&config.spaces)
        .with_context(|| format!("cannot create the spaces directory {}", config.spaces.display()))?;
    tracing::info!(
        pi = %config.pi.display(),
        spaces = %config.spaces.display(),
        profiles = %config.profiles.display(),
        "starting"
    );

    // Orphans of the task's tools come to us instead of init, so they can be ended.
    let stop_orphans = match orphans::become_subreaper() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot become a child subreaper, so processes a task leaves behind are not ended: {e}");
            false
        }
    };

    let (stop, shutdown) = watch::channel(false);
    let mut sigint = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        tracing::warn!("shutdown requested: no more claims; a running task is aborted and reported as failed");
        let _ = stop.send(true);
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        // Pi sits in its own process group; it exits when its stdin closes with us.
        // Its leftovers and the task's credential copies are not cleaned up.
        tracing::error!("second signal: exiting now");
        std::process::exit(130);
    });

    embark_runner::runner::run(&config, stop_orphans, shutdown).await?;
    Ok(())
}
