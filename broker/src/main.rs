//! `embark-broker`: see docs/broker.md.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use embark_broker::config::{Args, Config};
use embark_broker::server;
use embark_core::dirs;

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr; stdout carries only the `{"listening": …}` line.
    embark_core::logging::init();
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
    let config = Config::load(args, dirs::process_env).context("configuration")?;
    server::run(config, server::shutdown_signal()).await?;
    Ok(())
}
