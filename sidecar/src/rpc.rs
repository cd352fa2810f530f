//! The JSON-RPC methods (`embark.hello`, `embark.command`). The handshake
//! and its rules belong to the connection's [`Session`]: hello is the
//! session's [`Session::hello`], and the transport lets no other call through
//! before it succeeded, so the methods here never check it.
//!
//! Parameters are by name, as in [`HelloParams`](embark_core::protocol::HelloParams)
//! and [`CommandParams`](embark_core::protocol::CommandParams).

use std::sync::Arc;

use embark_core::protocol::{HelloResult, PeerInfo, SessionContext, SessionStartParams, View};
use jsonrpsee::RpcModule;
use jsonrpsee::core::RpcResult;
use jsonrpsee::proc_macros::rpc;

use crate::handlers::Handlers;
use crate::session::Session;

#[rpc(server, namespace = "embark", namespace_separator = ".")]
pub trait Embark {
    /// The handshake: must come first.
    #[method(name = "hello", param_kind = map)]
    async fn hello(&self, protocol: u32, client: Option<PeerInfo>) -> RpcResult<HelloResult>;

    /// One `/embark …` line in a Pi session.
    #[method(name = "command", param_kind = map)]
    async fn command(&self, line: String, session: SessionContext) -> RpcResult<View>;

    /// A Pi session started: adopt, import and sync its tasks.
    #[method(name = "session_start", param_kind = map)]
    async fn session_start(
        &self,
        session: SessionContext,
        known_tasks: Option<Vec<String>>,
        reason: Option<String>,
    ) -> RpcResult<View>;
}

/// One connection's methods, over its session.
pub struct EmbarkRpc {
    handlers: Arc<Handlers>,
    session: Arc<Session>,
}

impl EmbarkRpc {
    pub fn new(handlers: Arc<Handlers>, session: Arc<Session>) -> Self {
        Self { handlers, session }
    }

    /// The methods, ready for [`crate::stdio::serve`] with the same session as its gate.
    pub fn module(handlers: Arc<Handlers>, session: Arc<Session>) -> RpcModule<EmbarkRpc> {
        EmbarkRpc::new(handlers, session).into_rpc()
    }
}

#[jsonrpsee::core::async_trait]
impl EmbarkServer for EmbarkRpc {
    async fn hello(&self, protocol: u32, client: Option<PeerInfo>) -> RpcResult<HelloResult> {
        Ok(self.session.hello(protocol, client.as_ref())?)
    }

    async fn command(&self, line: String, session: SessionContext) -> RpcResult<View> {
        Ok(self.handlers.command(&line, &session).await?)
    }

    async fn session_start(
        &self,
        session: SessionContext,
        known_tasks: Option<Vec<String>>,
        reason: Option<String>,
    ) -> RpcResult<View> {
        let params = SessionStartParams {
            session,
            reason,
            known_tasks: known_tasks.unwrap_or_default(),
        };
        Ok(self.handlers.session_start(&params).await?)
    }
}
