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
        a flag; set one of them.\n\n\
        What a submit syncs of the working tree is bounded and shaped by EMBARK_SYNC_EXCLUDES (`sync_excludes`), \
        EMBARK_SYNC_MAX_FILES (`sync_max_files`, default 500), EMBARK_SYNC_MAX_BYTES (`sync_max_bytes`, default 2097152) \
        and EMBARK_SYNC_MAX_FILE_BYTES (`sync_max_file_bytes`, default 1048576); `embark-sidecar manifest` shows it."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Serve JSON-RPC on stdin/stdout (the only mode)
    #[arg(long)]
    stdio: bool,
    /// Print the effective configuration, each value with its source (secrets redacted), and exit; --stdio is not needed
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Print exactly what a submit from PATH would sync: the commit, the bundle of unpushed commits, each overlay
    /// entry (kind, mode, size, hash, path), the excluded paths and why, the totals and the fingerprint
    Manifest {
        /// The manifest as JSON, as it is sent
        #[arg(long)]
        json: bool,
        /// A directory inside the repository (default: the current directory)
        path: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Sub::Manifest { json, path }) = &cli.command {
        return print_manifest(&cli, *json, path.as_deref());
    }
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
    let config = Config::resolve(&mut resolver, &env);
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

/// `embark-sidecar manifest`: the scan a submit makes, printed; nothing is sent.
fn print_manifest(cli: &Cli, json: bool, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let env = dirs::process_env;
    let config = Config::load(&cli.config, &env).context("embark-sidecar could not load its configuration")?;
    embark_core::logging::init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    let dir = path.map_or_else(|| std::path::PathBuf::from("."), std::path::Path::to_path_buf);
    let scan = runtime.block_on(async {
        // The remote a submit would use, when there is one; without, the scan says what is missing.
        let remote = embark_sidecar::repo::inspect(&dir).await.ok().map(|facts| facts.remote);
        embark_sidecar::sync::scan(&dir, remote.as_deref(), &config.sync).await
    });
    let scan = scan.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let text = if json { scan.json() } else { scan.summary() };
    let mut out = std::io::stdout();
    out.write_all(text.as_bytes()).context("write the manifest to stdout")?;
    if !text.ends_with('\n') {
        out.write_all(b"\n").context("write the manifest to stdout")?;
    }
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
