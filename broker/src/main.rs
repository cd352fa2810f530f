//! `embark-broker`: see docs/broker.md.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use embark_broker::config::{Args, Config, DECLARATION};
use embark_broker::server;
use embark_core::config::Resolver;
use embark_core::dirs;
use embark_core::shutdown::{Shutdown, Signals, trigger_on_signal};

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
    let env = dirs::process_env;
    let mut resolver = Resolver::load(&DECLARATION, args.flags(), &env).context("configuration")?;
    let config = Config::resolve(&mut resolver, &env);
    if args.print_config {
        // On stdout, then the error (if any) the broker would have stopped with.
        print!("{}", resolver.report());
        config.context("configuration")?;
        return Ok(());
    }
    for warning in resolver.warnings() {
        tracing::warn!("{warning}");
    }
    let shutdown = Shutdown::new();
    // Later signals are ignored while the broker drains.
    let signals = Signals::listen().context("cannot listen for SIGINT and SIGTERM")?;
    tokio::spawn(trigger_on_signal(signals, shutdown.clone()));
    server::run(config.context("configuration")?, shutdown).await?;
    Ok(())
}
