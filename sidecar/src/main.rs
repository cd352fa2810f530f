//! `embark-sidecar --stdio`: JSON-RPC over stdin/stdout for the Pi extension.
//! Logs go to stderr; stdout is the protocol.
#![deny(clippy::print_stdout)]

use anyhow::Context;
use clap::{CommandFactory, Parser};
use embark_sidecar::config::{Config, ConfigArgs};

#[derive(Debug, Parser)]
#[command(
    name = "embark-sidecar",
    version,
    about = "embark's client brain: JSON-RPC 2.0 over NDJSON stdio"
)]
struct Cli {
    /// Serve JSON-RPC on stdin/stdout (the only mode)
    #[arg(long)]
    stdio: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.stdio {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--stdio is required: it is the only mode",
            )
            .exit();
    }
    // Logs go to stderr only: stdout is the protocol.
    embark_core::logging::init();
    let config = Config::load(cli.config).context("embark-sidecar could not load its configuration")?;
    tracing::info!(
        broker_url = config.broker_url.as_deref().unwrap_or("(unset)"),
        client_secret = if config.client_secret.is_some() { "set" } else { "unset" },
        profile = %config.profile,
        provider = config.provider.as_deref().unwrap_or("(unset)"),
        model = config.model.as_deref().unwrap_or("(unset)"),
        file = config.file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into()),
        "embark-sidecar {} serving on stdio",
        env!("CARGO_PKG_VERSION")
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let served = runtime.block_on(embark_sidecar::serve(config, tokio::io::stdin(), tokio::io::stdout()));
    // stdin is read on a blocking thread; when output failed first, that read may
    // never return, and dropping the runtime would wait for it.
    runtime.shutdown_background();
    served.context("stdio transport failed")?;
    tracing::info!("input closed; exiting");
    Ok(())
}
