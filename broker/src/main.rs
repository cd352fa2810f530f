//! `embark-broker`: see docs/broker.md.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use embark_broker::config::{Args, Config};
use embark_broker::server;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr; stdout carries only the `{"listening": …}` line.
    // The same setup in every embark binary: EMBARK_LOG, else RUST_LOG, else info.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_env("EMBARK_LOG")
                .or_else(|_| EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("embark-broker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(args, |name| std::env::var(name).ok()).context("configuration")?;
    server::run(config, server::shutdown_signal()).await?;
    Ok(())
}
