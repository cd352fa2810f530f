//! embark-sidecar: the client brain behind the Pi extension.
//!
//! It speaks JSON-RPC 2.0 over NDJSON on stdin/stdout ([`stdio`]), with the
//! methods in [`rpc`] and each connection's handshake in its [`session`]. Each `/embark` line is parsed ([`command`]), checked
//! against the repository ([`repo`]) and the configuration ([`config`]), and
//! answered as a view model ([`handlers`]). stdout carries the protocol only.
#![deny(clippy::print_stdout)]

mod atomic_file;
pub mod command;
pub mod config;
pub mod defaults;
pub mod error;
pub mod handlers;
pub mod repo;
pub mod result;
pub mod rpc;
pub mod session;
pub mod stdio;
pub mod store;
pub mod sync;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Config;
use crate::handlers::Handlers;
use crate::rpc::EmbarkRpc;
use crate::session::Session;

/// Serves one client over the given streams until its input ends.
pub async fn serve<R, W>(config: Config, reader: R, writer: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let options = config.stdio;
    let session = Arc::new(Session::new());
    let module = EmbarkRpc::module(Arc::new(Handlers::new(config)), Arc::clone(&session));
    stdio::serve(module, session.as_ref(), reader, writer, options).await
}
