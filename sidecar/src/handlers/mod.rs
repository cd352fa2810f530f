//! What each `/embark` command does, answered as a [`View`].

mod apply;
mod attach;
mod board;
mod broker_error;
mod cancel;
mod defaults;
mod diff;
mod follow;
pub mod live;
mod reconcile;
mod runners;
mod status;
mod submit;
mod sync;
mod text;
mod tracked;

use std::path::Path;

use embark_client::BrokerClient;
use embark_core::limits;
use embark_core::protocol::{Block, ErrorCode, SessionContext, SessionStartParams, Tone, View};

use crate::command::{self, Command, USAGE};
use crate::config::Config;
use crate::defaults::SessionDefaults;
use crate::error::RpcError;
use crate::store::{SessionRecord, Store};

pub use broker_error::broker_error;

/// The key of the footer status line embark owns.
pub const STATUS_KEY: &str = "embark";
/// Every command answers within this long: below the shim's 60 s call
/// timeout, so the user hears why instead of a bare "no answer".
pub const COMMAND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(45);

/// Runs commands with one configuration and one broker client.
#[derive(Debug)]
pub struct Handlers {
    config: Config,
    /// `Err` says why the configured URL is unusable.
    broker: Option<Result<BrokerClient, RpcError>>,
    /// Each Pi session's `/embark defaults`.
    defaults: SessionDefaults,
    /// `None` without a state directory.
    store: Option<Store>,
}

impl Handlers {
    pub fn new(config: Config) -> Self {
        let broker = config
            .broker_url
            .as_deref()
            .map(|url| BrokerClient::new(url).map_err(broker_error));
        let defaults = SessionDefaults::new(config.state_dir.as_deref());
        let store = config.state_dir.as_deref().map(Store::new);
        Self {
            config,
            broker,
            defaults,
            store,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One `/embark` line in one Pi session, answered within [`COMMAND_DEADLINE`].
    pub async fn command(&self, line: &str, session: &SessionContext) -> Result<View, RpcError> {
        check_session(session)?;
        let command = command::parse(line).map_err(|e| RpcError::usage(e.0))?;
        let run = async {
            match command {
                Command::Help => Ok(help()),
                Command::Status(ref selector) => status::run(self, selector, session).await,
                Command::Cancel(ref selector) => cancel::run(self, selector, session).await,
                Command::Runners => runners::run(self).await,
                Command::Defaults(args) => defaults::run(self, args, session),
                Command::Diff(ref args) => diff::run(self, args, session).await,
                Command::Apply(ref args) => apply::run(self, args, session).await,
                Command::Follow(args) => follow::run(self, args, session).await,
                Command::Submit(args) => submit::run(self, args, session).await,
                Command::List { all } => board::list(self, session, all).await,
                Command::Tasks => board::tasks(self, session).await,
                Command::Sync(ref target) => sync::run(self, target, session).await,
                Command::Reconcile => reconcile::reconcile(self, session).await,
                Command::Cleanup => reconcile::cleanup(self, session).await,
                Command::Attach(ref selector) => attach::attach(self, selector, session).await,
                Command::Detach => attach::detach(self, session).await,
            }
        };
        within_deadline(run).await
    }

    /// A Pi session started: adopt, import and sync (see [`reconcile::session_start`]).
    pub async fn session_start(&self, params: &SessionStartParams) -> Result<View, RpcError> {
        check_session(&params.session)?;
        within_deadline(reconcile::session_start(self, params)).await
    }

    /// The task store, or a Config error saying how to give it a directory.
    fn store(&self) -> Result<&Store, RpcError> {
        self.store.as_ref().ok_or_else(|| {
            RpcError::config(
                "There is no state directory for task records: set EMBARK_STATE_DIR (or state_dir in config.toml, or HOME) to a directory the sidecar may write.",
            )
        })
    }

    /// The session's record changed by `change` and written back durably.
    async fn record<T>(
        &self,
        session: &SessionContext,
        change: impl FnOnce(&mut SessionRecord) -> T,
    ) -> Result<(SessionRecord, T), RpcError> {
        let file = session.session_file.clone();
        self.store()?
            .update(&session.session_id, &session.cwd, |record| {
                if file.is_some() {
                    record.session_file = file;
                }
                change(record)
            })
            .await
            .map_err(store_error)
    }
}

/// A store failure as an Internal error that names the file.
fn store_error(error: crate::store::StoreError) -> RpcError {
    tracing::error!("task store: {error}");
    RpcError::new(
        ErrorCode::Internal,
        format!("The task records could not be kept: {error}."),
    )
}

/// `run`, or a Timeout error once [`COMMAND_DEADLINE`] passed.
async fn within_deadline(run: impl Future<Output = Result<View, RpcError>>) -> Result<View, RpcError> {
    {
        tokio::time::timeout(COMMAND_DEADLINE, run).await.unwrap_or_else(|_| {
            Err(RpcError::new(
                ErrorCode::Timeout,
                format!(
                    "the command did not finish within {} s (git or the broker was too slow); \
                     if it was a submit, check /embark status before submitting again",
                    COMMAND_DEADLINE.as_secs()
                ),
            ))
        })
    }
}

impl Handlers {
    /// The broker client and the client credential (token or secret), or a Config error saying what to set.
    fn broker(&self) -> Result<(&BrokerClient, &str), RpcError> {
        let client = match &self.broker {
            None => {
                return Err(RpcError::config(
                    "no broker URL: set EMBARK_BROKER_URL (or broker_url in config.toml) to the broker's address, e.g. http://127.0.0.1:8787",
                ));
            }
            Some(Err(unusable)) => return Err(unusable.clone()),
            Some(Ok(client)) => client,
        };
        let credential = match (&self.config.client_token, &self.config.client_secret) {
            (Some(token), None) => token,
            (None, Some(secret)) => secret,
            (Some(_), Some(_)) => {
                return Err(RpcError::config(
                    "both a client token (EMBARK_CLIENT_TOKEN or client_token) and the client secret \
                     (EMBARK_CLIENT_SECRET or client_secret) are set: keep only the one the broker's operator gave you",
                ));
            }
            (None, None) => {
                return Err(RpcError::config(
                    "no client credential: set EMBARK_CLIENT_TOKEN (or client_token in config.toml) to the token the \
                     broker's operator made for you (`embark-broker tokens add NAME`), or EMBARK_CLIENT_SECRET to the \
                     broker's client secret",
                ));
            }
        };
        Ok((client, credential.expose()))
    }
}

fn help() -> View {
    View {
        blocks: vec![Block::Text {
            text: USAGE.to_owned(),
            tone: Tone::Info,
        }],
        ..View::default()
    }
}

/// The session fields are the shim's to fill in; bad ones are invalid params.
fn check_session(session: &SessionContext) -> Result<(), RpcError> {
    let id = &session.session_id;
    if !embark_core::wire::is_session_id(id) {
        return Err(RpcError::new(
            ErrorCode::InvalidParams,
            format!(
                "session.session_id must have 1 to {} printable bytes",
                limits::MAX_SESSION_ID_BYTES
            ),
        ));
    }
    if !Path::new(&session.cwd).is_absolute() {
        return Err(RpcError::new(
            ErrorCode::InvalidParams,
            format!("session.cwd must be an absolute path, got {:?}", session.cwd),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use embark_core::TaskState;
    use embark_core::wire::Task;

    pub(super) fn task(id: &str, state: TaskState) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": id, "state": state, "repo_url": "https://example.invalid/r.git", "commit": "c".repeat(40),
            "prompt": "fix it", "intent": {"auth_profile": "default", "provider": "fake", "model": "fake-model"},
            "session_id": "s", "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:01:00Z",
            "attempt": 0, "last_seq": 0, "outcome": null
        }))
        .expect("a task")
    }
}
