//! embark's broker: the task queue, the per-task event logs and the
//! credentials, over HTTP, on SQLite or PostgreSQL.
//!
//! `store` holds the state behind the [`store::Store`] trait, `api` is the
//! HTTP transport (its extractors check every request against its rules,
//! `embark_core::wire::rules`), `claim` the long-poll, `routing` the submit-time capability check, `auth` the
//! credentials, `access` who sees which task, `admin` the token and runner
//! commands, `config` the flags, environment and TOML file, and `server`
//! binds, serves and shuts down.

pub mod access;
pub mod admin;
pub mod api;
pub mod auth;
pub mod claim;
pub mod clock;
pub mod config;
pub mod connections;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod reaper;
pub mod routing;
pub mod seen;
pub mod server;
pub mod store;
