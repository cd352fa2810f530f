//! embark's runner: claims tasks from the broker, prepares a task directory
//! (auth profile bundle, git checkout), runs `pi --mode rpc` in it under a
//! task guard and the configured isolation, streams Pi's events back and
//! reports the verdict. See `docs/runner.md`.

pub mod bundle;
pub mod cache;
pub mod cancels;
pub mod capabilities;
pub mod checkout;
pub mod config;
pub mod events;
pub mod follow;
pub mod guard;
pub mod hydrate;
pub mod isolation;
pub mod lease;
pub mod leftovers;
pub mod orphans;
pub mod overlay;
pub mod pi_connection;
pub mod pi_process;
pub mod pi_rpc;
pub mod profile;
pub mod profile_toml;
pub mod proxy;
pub mod redact;
pub mod repo_check;
pub mod reporter;
pub mod result;
pub mod retry;
pub mod runner;
pub mod session_file;
pub mod space;
pub mod task;
pub mod template;
