//! embark-sidecar: the client brain behind the Pi extension.
//!
//! It speaks JSON-RPC 2.0 over NDJSON on stdin/stdout ([`stdio`]), with the
//! methods in [`rpc`]. Each `/embark` line is parsed ([`command`]), checked
//! against the repository ([`repo`]) and the configuration ([`config`]), and
//! answered as a view model ([`handlers`]). stdout carries the protocol only.
#![deny(clippy::print_stdout)]

pub mod command;
pub mod config;
pub mod error;
pub mod handlers;
pub mod repo;
pub mod rpc;
pub mod stdio;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use embark_core::protocol::method;

use crate::config::Config;
use crate::handlers::Handlers;
use crate::rpc::EmbarkRpc;
use crate::stdio::StdioOptions;

/// Serves one client over the given streams until its input ends.
pub async fn serve<R, W>(config: Config, reader: R, writer: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The handshake is a barrier: a command sent right behind it sees it done.
    let options = StdioOptions {
        barriers: &[method::HELLO],
        ..config.stdio
    };
    let module = EmbarkRpc::module(Arc::new(Handlers::new(config)));
    stdio::serve(module, reader, writer, options).await
}
