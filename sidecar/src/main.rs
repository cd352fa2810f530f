//! `embark-sidecar --stdio`: JSON-RPC over stdin/stdout for the Pi extension.
//! Logs go to stderr; stdout is the protocol (or, with `--print-config`, the
//! configuration report, and nothing else runs).
#![deny(clippy::print_stdout)]

use std::io::Write;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use embark_core::config::Resolver;
use embark_core::dirs;
use embark_sidecar::config::{Config, ConfigArgs, DECLARATION};

#[derive(Debug, Parser)]
#[command(
    name = "embark-sidecar",
    version,
    about = "embark's client brain: JSON-RPC 2.0 over NDJSON stdio",
    long_about = "embark's client brain: JSON-RPC 2.0 over NDJSON stdio.\n\n\
        A flag beats its environment variable, which beats the TOML file; an empty value counts as unset. \
        The client credential comes only from EMBARK_CLIENT_TOKEN or `client_token` (a client token from the broker's \
        operator) or EMBARK_CLIENT_SECRET or `client_secret` (the broker's client secret) in the TOML file, never from \
        a flag; set one of them."
)]
struct Cli {
    /// Serve JSON-RPC on stdin/stdout (the only mode)
    #[arg(long)]
    stdio: bool,
    /// Print the effective configuration, each value with its source (secrets redacted), and exit; --stdio is not needed
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.stdio && !cli.print_config {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--stdio is required: it is the only mode (or --print-config)",
            )
            .exit();
    }
    let env = dirs::process_env;
    let mut resolver = Resolver::load(&DECLARATION, cli.config.flags(), &env)
        .context("embark-sidecar could not load its configuration")?;
    let config = Config::resolve(&mut resolver);
    if cli.print_config {
        // The report is this mode's only output; no protocol runs.
        std::io::stdout()
            .write_all(resolver.report().to_string().as_bytes())
            .context("write the configuration to stdout")?;
        config.context("embark-sidecar could not load its configuration")?;
        return Ok(());
    }
    let config = config.context("embark-sidecar could not load its configuration")?;
    // Logs go to stderr only: stdout is the protocol.
    embark_core::logging::init();
    for warning in resolver.warnings() {
        tracing::warn!("{warning}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_flag_and_variable() {
        let help = Cli::command().render_long_help().to_string();
        assert_eq!(DECLARATION.missing_from_help(&help), Vec::<&str>::new(), "{help}");
    }
}
