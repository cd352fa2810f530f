//! embark's shared domain.
//!
//! Every binary (sidecar, broker, runner) speaks through these types, and
//! `schemas/` is generated from them (see [`schema`]), so a change here is a
//! change to the wire contract.

#[cfg(feature = "config")]
pub mod config;
pub mod dirs;
pub mod event;
pub mod intent;
pub mod limits;
#[cfg(feature = "logging")]
pub mod logging;
pub mod manifest;
#[cfg(feature = "ndjson")]
pub mod ndjson;
pub mod protocol;
pub mod repo_url;
pub mod schema;
pub mod secret;
#[cfg(feature = "shutdown")]
pub mod shutdown;
pub mod task;
pub mod text;
pub mod wire;

pub use event::{Event, EventKind, NewEvent, Payload};
pub use intent::{ExecutionIntent, IntentError};
pub use task::{TaskId, TaskState};
