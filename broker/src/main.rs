//! `embark-broker`: see docs/broker.md.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use embark_broker::config::{Args, Config, DECLARATION};
use embark_broker::server;
use embark_broker::store::{Database, PgStore, SqliteStore, Store};
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
    if let Some(command) = &args.command {
        let (db, max_connections) = Config::resolve_db(&mut resolver, &env).context("configuration")?;
        return admin(&db, max_connections, command).await;
    }
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

/// A token or runner command on the database `db` (an existing one: a wrong
/// path must not quietly make a new, empty database).
async fn admin(db: &Database, max_connections: u32, command: &embark_broker::admin::Command) -> anyhow::Result<()> {
    match db {
        Database::Sqlite(path) => {
            if !path.is_file() {
                anyhow::bail!(
                    "there is no broker database at {}: pass the --db (or EMBARK_BROKER_DB) the broker uses",
                    path.display()
                );
            }
            let store = SqliteStore::open(path)
                .await
                .with_context(|| format!("could not open the database {db}"))?;
            admin_on(&store, command).await
        }
        Database::Postgres(url) => {
            let store = PgStore::connect(url, max_connections.min(2))
                .await
                .with_context(|| format!("could not open the database {db}"))?;
            admin_on(&store, command).await
        }
    }
}

async fn admin_on<S: Store>(store: &S, command: &embark_broker::admin::Command) -> anyhow::Result<()> {
    let outcome = embark_broker::admin::run(store, command, &mut std::io::stdout(), &mut std::io::stderr()).await;
    store.close().await;
    Ok(outcome?)
}
