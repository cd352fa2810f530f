//! The one logging setup of every embark binary: to stderr (stdout belongs
//! to each binary's protocol or ready line), filtered by `EMBARK_LOG`, else
//! `RUST_LOG`, else `info`, coloured only on a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("EMBARK_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}
