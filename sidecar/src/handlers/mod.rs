//! What each `/embark` command does, answered as a [`View`].

mod apply;
mod broker_error;
mod cancel;
mod defaults;
mod diff;
mod runners;
mod status;
mod submit;
mod text;

use std::path::Path;

use embark_client::BrokerClient;
use embark_core::TaskState;
use embark_core::limits;
use embark_core::protocol::{Block, ErrorCode, SessionContext, StatusLine, Tone, View};
use embark_core::wire::Task;

use crate::command::{self, Command, USAGE};
use crate::config::Config;
use crate::defaults::SessionDefaults;
use crate::error::RpcError;

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
}

impl Handlers {
    pub fn new(config: Config) -> Self {
        let broker = config
            .broker_url
            .as_deref()
            .map(|url| BrokerClient::new(url).map_err(broker_error));
        let defaults = SessionDefaults::new(config.state_dir.as_deref());
        Self {
            config,
            broker,
            defaults,
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
                Command::Submit(args) => submit::run(self, args, session).await,
            }
        };
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
        status: None,
        message: None,
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

/// "embark: 1 task running", or a cleared line when nothing is under way.
fn status_line(tasks: &[Task]) -> StatusLine {
    let count = |state: TaskState| tasks.iter().filter(|t| t.state == state).count();
    let (running, queued) = (count(TaskState::Running), count(TaskState::Queued));
    let tasks_word = |n: usize| if n == 1 { "task" } else { "tasks" };
    let text = match (running, queued) {
        (0, 0) => None,
        (r, 0) => Some(format!("embark: {r} {} running", tasks_word(r))),
        (0, q) => Some(format!("embark: {q} {} queued", tasks_word(q))),
        (r, q) => Some(format!("embark: {r} running, {q} queued")),
    };
    StatusLine {
        key: STATUS_KEY.to_owned(),
        text,
    }
}

/// The shortest prefix (at least 8 hex digits) of `task`'s id that no other
/// session task shares. Ids are random, so 8 digits almost always suffice;
/// the loop keeps the shown id unambiguous when they do not.
fn display_id(task: &Task, tasks: &[Task]) -> String {
    let own = task.id.0.simple().to_string();
    let others: Vec<String> = tasks
        .iter()
        .filter(|t| t.id != task.id)
        .map(|t| t.id.0.simple().to_string())
        .collect();
    let mut len = task.id.short().len();
    while len < own.len() && others.iter().any(|other| other.starts_with(&own[..len])) {
        len += 1;
    }
    own[..len].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn task(id: &str, state: TaskState) -> Task {
        serde_json::from_value(serde_json::json!({
            "id": id, "state": state, "repo_url": "https://example.invalid/r.git", "commit": "c".repeat(40),
            "prompt": "fix it", "intent": {"auth_profile": "default", "provider": "fake", "model": "fake-model"},
            "session_id": "s", "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:01:00Z",
            "attempt": 0, "last_seq": 0, "outcome": null
        }))
        .expect("a task")
    }

    #[test]
    fn status_lines_count_live_tasks() {
        let a = task("01900000-0000-7000-8000-000000000001", TaskState::Queued);
        let b = task("01900000-0000-7000-8000-000000000002", TaskState::Running);
        let c = task("01900000-0000-7000-8000-000000000003", TaskState::Succeeded);
        assert_eq!(
            status_line(std::slice::from_ref(&a)).text.as_deref(),
            Some("embark: 1 task queued")
        );
        assert_eq!(
            status_line(std::slice::from_ref(&b)).text.as_deref(),
            Some("embark: 1 task running")
        );
        assert_eq!(
            status_line(&[a.clone(), b.clone(), b.clone()]).text.as_deref(),
            Some("embark: 2 running, 1 queued")
        );
        assert_eq!(status_line(std::slice::from_ref(&c)).text, None);
        assert_eq!(status_line(&[]).key, STATUS_KEY);
    }

    #[test]
    fn display_ids_grow_until_unique() {
        let a = task("01900000-0000-7000-8000-000000000001", TaskState::Queued);
        let b = task("01900000-1000-7000-8000-000000000002", TaskState::Queued);
        let c = task("01910000-0000-7000-8000-000000000003", TaskState::Queued);
        assert_eq!(display_id(&c, &[a.clone(), b.clone(), c.clone()]), "01910000");
        assert_eq!(display_id(&a, &[a.clone(), b.clone(), c.clone()]), "019000000");
        assert_eq!(display_id(&a, std::slice::from_ref(&a)), "01900000");
    }
}
