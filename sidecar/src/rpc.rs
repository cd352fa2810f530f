//! The JSON-RPC methods (`embark.hello`, `embark.command`) and the handshake
//! rule: nothing but `embark.hello` is answered before a successful hello.
//! The transport runs hello as a barrier (see [`crate::serve`]), so a command
//! sent right behind it sees it done.
//!
//! Parameters are by name, as in [`HelloParams`](embark_core::protocol::HelloParams)
//! and [`CommandParams`](embark_core::protocol::CommandParams).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use embark_core::protocol::{
    ErrorCode, HelloResult, PROTOCOL_VERSION, PeerInfo, SUPPORTED_PROTOCOLS, SessionContext, View,
};
use jsonrpsee::RpcModule;
use jsonrpsee::core::RpcResult;
use jsonrpsee::proc_macros::rpc;
use tracing::info;

use crate::error::RpcError;
use crate::handlers::Handlers;

/// Optional features this build offers (none yet in protocol 1).
pub const CAPABILITIES: &[&str] = &[];

#[rpc(server, namespace = "embark", namespace_separator = ".")]
pub trait Embark {
    /// The handshake: must come first.
    #[method(name = "hello", param_kind = map)]
    async fn hello(&self, protocol: u32, client: Option<PeerInfo>) -> RpcResult<HelloResult>;

    /// One `/embark …` line in a Pi session.
    #[method(name = "command", param_kind = map)]
    async fn command(&self, line: String, session: SessionContext) -> RpcResult<View>;
}

/// One connection's state: the negotiated protocol (0 until a hello succeeded).
pub struct EmbarkRpc {
    handlers: Arc<Handlers>,
    protocol: AtomicU32,
}

impl EmbarkRpc {
    pub fn new(handlers: Arc<Handlers>) -> Self {
        Self {
            handlers,
            protocol: AtomicU32::new(0),
        }
    }

    /// The methods, ready for [`crate::stdio::serve`].
    pub fn module(handlers: Arc<Handlers>) -> RpcModule<EmbarkRpc> {
        EmbarkRpc::new(handlers).into_rpc()
    }
}

#[jsonrpsee::core::async_trait]
impl EmbarkServer for EmbarkRpc {
    async fn hello(&self, protocol: u32, client: Option<PeerInfo>) -> RpcResult<HelloResult> {
        if !SUPPORTED_PROTOCOLS.contains(&protocol) {
            let supported: Vec<String> = SUPPORTED_PROTOCOLS.iter().map(u32::to_string).collect();
            return Err(RpcError::new(
                ErrorCode::UnsupportedProtocol,
                format!(
                    "protocol {protocol} is not supported: this sidecar speaks {}; update the extension or the sidecar so they match",
                    supported.join(", ")
                ),
            )
            .into());
        }
        self.protocol.store(protocol, Ordering::SeqCst);
        match &client {
            Some(peer) => info!(protocol, client = %peer.name, version = %peer.version, "hello"),
            None => info!(protocol, "hello"),
        }
        Ok(HelloResult {
            protocol,
            supported: SUPPORTED_PROTOCOLS.to_vec(),
            server: PeerInfo {
                name: "embark-sidecar".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            capabilities: CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        })
    }

    async fn command(&self, line: String, session: SessionContext) -> RpcResult<View> {
        if self.protocol.load(Ordering::SeqCst) == 0 {
            return Err(RpcError::new(
                ErrorCode::HandshakeRequired,
                format!("call embark.hello first, with {{\"protocol\": {PROTOCOL_VERSION}}}"),
            )
            .into());
        }
        Ok(self.handlers.command(&line, &session).await?)
    }
}
