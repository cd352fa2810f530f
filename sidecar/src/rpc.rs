//! The JSON-RPC methods (`embark.hello`, `embark.command`,
//! `embark.session_start`, and the `embark.watch` subscription with its
//! `embark.unwatch`). The handshake
//! and its rules belong to the connection's [`Session`]: hello is the
//! session's [`Session::hello`], and the transport lets no other call through
//! before it succeeded, so the methods here never check it.
//!
//! Parameters are by name, as in [`HelloParams`](embark_core::protocol::HelloParams)
//! and [`CommandParams`](embark_core::protocol::CommandParams).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use embark_core::protocol::{
    HelloResult, PeerInfo, SessionContext, SessionStartParams, UnwatchParams, Unwatched, View, method,
};
use jsonrpsee::core::{RpcResult, SubscriptionResult};
use jsonrpsee::proc_macros::rpc;
use jsonrpsee::{PendingSubscriptionSink, RpcModule};
use tokio::sync::oneshot;

use crate::handlers::Handlers;
use crate::handlers::live;
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

    /// The session's live updates, as `embark.live` notifications. jsonrpsee's
    /// own unsubscribe takes the id by position only, so [`EmbarkRpc::module`]
    /// replaces it with one that takes `{"subscription": id}` like every method.
    #[subscription(name = "watch" => "live", unsubscribe = "unwatch", item = embark_core::protocol::LiveUpdate, param_kind = map)]
    async fn watch(&self, session: SessionContext) -> SubscriptionResult;
}

/// A subscription id as its JSON text: jsonrpsee's and the protocol's id alike.
fn watch_key(id: &impl serde::Serialize) -> String {
    serde_json::to_string(id).unwrap_or_default()
}

/// The subscriptions under way (by [`watch_key`]), each with the switch that ends it.
#[derive(Debug, Default)]
pub struct Watches {
    stops: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl Watches {
    fn add(&self, id: String) -> oneshot::Receiver<()> {
        let (stop, stopped) = oneshot::channel();
        self.lock().insert(id, stop);
        stopped
    }

    /// Ends subscription `id`; false when there was none.
    pub fn stop(&self, id: &str) -> bool {
        self.lock().remove(id).is_some_and(|stop| stop.send(()).is_ok())
    }

    fn forget(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.stops.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One connection's methods, over its session.
pub struct EmbarkRpc {
    handlers: Arc<Handlers>,
    session: Arc<Session>,
    watches: Arc<Watches>,
}

impl EmbarkRpc {
    pub fn new(handlers: Arc<Handlers>, session: Arc<Session>) -> Self {
        Self {
            handlers,
            session,
            watches: Arc::default(),
        }
    }

    /// The methods, ready for [`crate::stdio::serve`] with the same session as its gate.
    pub fn module(handlers: Arc<Handlers>, session: Arc<Session>) -> RpcModule<EmbarkRpc> {
        let rpc = EmbarkRpc::new(handlers, session);
        let watches = Arc::clone(&rpc.watches);
        let mut module = rpc.into_rpc();
        module.remove_method(method::UNWATCH);
        module
            .register_method(method::UNWATCH, move |params, _, _| {
                let UnwatchParams { subscription } = params.parse()?;
                RpcResult::Ok(Unwatched {
                    stopped: watches.stop(&watch_key(&subscription)),
                })
            })
            .expect("embark.unwatch was just removed");
        module
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

    async fn watch(&self, pending: PendingSubscriptionSink, session: SessionContext) -> SubscriptionResult {
        if let Err(error) = self.handlers.check_watch(&session) {
            pending.reject(error).await;
            return Ok(());
        }
        let sink = pending.accept().await?;
        let id = watch_key(&sink.subscription_id());
        let stopped = self.watches.add(id.clone());
        live::follow(Arc::clone(&self.handlers), session, sink, stopped).await;
        self.watches.forget(&id);
        Ok(())
    }
}
