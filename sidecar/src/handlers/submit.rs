//! `/embark "prompt" [flags]`: hand a task to the broker.

use std::path::Path;

use embark_core::intent::{ExecutionIntent, IntentLayer, resolve};
use embark_core::limits;
use embark_core::protocol::{Block, ErrorCode, SessionContext, Tone, View};
use embark_core::text;
use std::time::Duration;

use embark_client::{BrokerClient, ClientError};
use embark_core::wire::{ApiErrorCode, CreateTask, CreateTaskError, Task};
use tracing::{info, warn};

use embark_core::manifest::{Base, Manifest};
use embark_manifest::render::human_bytes;

use super::tracked::{display_id, status_line, task_entry};
use super::{Handlers, broker_error};
use crate::command::SubmitArgs;
use crate::error::RpcError;
use crate::repo::{self, RepoError};
use crate::sync;

pub async fn run(handlers: &Handlers, args: SubmitArgs, session: &SessionContext) -> Result<View, RpcError> {
    let config = handlers.config();
    let session_defaults = handlers
        .defaults
        .get(&session.session_id)
        .map_err(|e| RpcError::config(e.to_string()))?;
    let intent = resolve_intent(&args.intent, &session_defaults, &config.intent)?;
    let facts = repo::inspect(Path::new(&session.cwd)).await.map_err(repo_error)?;
    // Everything is checked before anything is sent: bounds, and that a runner can fetch the commit.
    let scan = sync::scan(&facts.root, Some(&facts.remote), &config.sync).await?;
    sync::check_sendable(&scan, &facts.remote)?;
    if scan.manifest.commit.as_ref().map(|c| c.as_str()) != Some(facts.head.as_str()) {
        return Err(RpcError::repository(
            "HEAD moved while the working tree was scanned: submit again. Nothing was sent.",
        ));
    }
    let warnings = facts.warnings.into_iter().map(|text| Block::Text {
        text,
        tone: Tone::Warning,
    });
    if args.dry_run {
        let mut blocks = vec![Block::Text {
            text: format!(
                "Dry run: nothing was sent. A submit would hand {} this working tree:\n{}",
                facts.remote_url,
                scan.summary().trim_end()
            ),
            tone: Tone::Info,
        }];
        blocks.extend(warnings);
        return Ok(View {
            blocks,
            ..View::default()
        });
    }

    let (client, secret) = handlers.broker()?;
    let request = CreateTask {
        parent: None,
        repo_url: facts.remote_url,
        commit: facts.head,
        prompt: args.prompt,
        intent,
        session_id: session.session_id.clone(),
        // One id per submit, the same on every retry: the broker makes one task of them.
        client_request_id: Some(uuid::Uuid::new_v4().to_string()),
        manifest: Some(scan.manifest.clone()),
    };
    request.validate().map_err(create_error)?;
    let uploaded = sync::upload(client, secret, &scan).await?;
    let task = create_with_retries(client, secret, &request).await?;
    info!(
        task = %task.id,
        commit = %task.commit,
        fingerprint = %scan.manifest.fingerprint,
        uploaded_blobs = uploaded.blobs,
        uploaded_bytes = uploaded.bytes,
        "submitted"
    );

    // Recorded before the answer: an acknowledged task is never lost. The
    // session's other broker-known tasks come along (for numbering and the footer).
    let listed = match client
        .list_session_tasks(secret, &session.session_id, limits::MAX_TASKS_PER_LIST)
        .await
    {
        Ok(list) => list.tasks,
        Err(e) => {
            warn!(
                "listing the session's tasks after a submit failed: {}",
                text::error_chain(&e)
            );
            Vec::new()
        }
    };
    let (record, ()) = handlers
        .record(session, |record| {
            for other in listed.iter().filter(|t| t.id != task.id) {
                record.upsert(other);
            }
            record.upsert(&task);
        })
        .await?;
    let shown = display_id(task.id, &record.tasks);
    let commit_short = repo::short_commit(&task.commit);
    let intent = &task.intent;
    let mut blocks = vec![Block::Text {
        text: format!(
            "Embarked task {shown} on {}/{} (profile {}{}) at {commit_short} from {}\n{}\nTask id {}: follow it with `/embark status {shown}`.",
            intent.provider,
            intent.model,
            intent.auth_profile,
            requirements(intent),
            task.repo_url,
            synced_line(&scan.manifest, uploaded),
            task.id
        ),
        tone: Tone::Info,
    }];
    blocks.extend(warnings);
    Ok(View {
        blocks,
        status: Some(status_line(&record.tasks)),
        entries: vec![task_entry(&task)],
        ..View::default()
    })
}

/// Waits before the retries of a create whose answer did not come.
const CREATE_RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(250), Duration::from_secs(1)];

/// Creates the task, retrying when the broker could not be reached or could
/// not answer: the request's `client_request_id` makes a retry of a create
/// the broker did store answer that task, not a second one.
pub(super) async fn create_with_retries(
    client: &BrokerClient,
    secret: &str,
    request: &CreateTask,
) -> Result<Task, RpcError> {
    let mut delays = CREATE_RETRY_DELAYS.iter();
    loop {
        match client.create_task(secret, request).await {
            Ok(task) => return Ok(task),
            Err(error) if retryable(&error) => match delays.next() {
                Some(delay) => {
                    warn!("submitting failed, retrying: {}", text::error_chain(&error));
                    tokio::time::sleep(*delay).await;
                }
                None => return Err(broker_error(error)),
            },
            Err(error) => return Err(broker_error(error)),
        }
    }
}

/// Whether a failed create may have reached the broker, or may work a moment later.
fn retryable(error: &ClientError) -> bool {
    match error {
        ClientError::Unreachable { .. } | ClientError::Decode { .. } => true,
        ClientError::Api { code, .. } => matches!(
            code,
            ApiErrorCode::Timeout | ApiErrorCode::Unavailable | ApiErrorCode::Internal | ApiErrorCode::RateLimited
        ),
        _ => false,
    }
}

/// `Synced fingerprint <short>: N file(s), B bytes (…)`: what the runner will reproduce.
fn synced_line(manifest: &Manifest, uploaded: sync::Uploaded) -> String {
    let totals = &manifest.totals;
    let mut line = format!(
        "Synced fingerprint {}: {} file(s), {} deleted, {} of uncommitted work",
        manifest.fingerprint.0.short(),
        totals.files,
        totals.deleted,
        human_bytes(totals.overlay_bytes)
    );
    if let Base::Unpushed { bundle } = &manifest.base {
        line.push_str(&format!(
            ", {} unpushed commit(s) as a {} bundle",
            bundle.commits,
            human_bytes(bundle.size)
        ));
    }
    line.push_str(&format!(
        "; uploaded {} new blob(s), {}.",
        uploaded.blobs,
        human_bytes(uploaded.bytes)
    ));
    line
}

/// The intent by the one precedence rule (`embark_core::intent::resolve`):
/// flags, then this Pi session's defaults (`/embark defaults`), then the
/// config (`EMBARK_*` over `config.toml`), then the runner default profile.
fn resolve_intent(
    explicit: &IntentLayer,
    session: &IntentLayer,
    config: &IntentLayer,
) -> Result<ExecutionIntent, RpcError> {
    let resolved = resolve(explicit, session, config, &IntentLayer::runner_default())
        .map_err(|e| RpcError::usage(e.to_string()))?;
    Ok(resolved.intent)
}

/// `, isolation bwrap, labels gpu`: what the task asks of its runner beyond the profile.
fn requirements(intent: &ExecutionIntent) -> String {
    let mut text = String::new();
    if let Some(mode) = intent.isolation {
        text.push_str(&format!(", isolation {mode}"));
    }
    if !intent.labels.is_empty() {
        text.push_str(&format!(", labels {}", intent.labels.join(", ")));
    }
    text
}

fn repo_error(error: RepoError) -> RpcError {
    match error {
        RepoError::Spawn(_) => RpcError::new(ErrorCode::Internal, error.to_string()),
        other => RpcError::repository(other.to_string()),
    }
}

fn create_error(error: CreateTaskError) -> RpcError {
    let message = error.to_string();
    match error {
        CreateTaskError::EmptyPrompt | CreateTaskError::PromptTooLong { .. } | CreateTaskError::Intent(_) => {
            RpcError::usage(message)
        }
        CreateTaskError::BadCommit(_)
        | CreateTaskError::EmptyRepoUrl
        | CreateTaskError::BadRepoUrl(_)
        | CreateTaskError::CredentialInRepoUrl(_)
        | CreateTaskError::RepoTransport(..) => RpcError::repository(message),
        CreateTaskError::BadSessionId | CreateTaskError::BadClientRequestId => {
            RpcError::new(ErrorCode::InvalidParams, message)
        }
        CreateTaskError::Manifest(_)
        | CreateTaskError::ManifestCommit { .. }
        | CreateTaskError::ManifestBase(_)
        | CreateTaskError::ManifestSize(_) => RpcError::repository(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(provider: Option<&str>, model: Option<&str>, profile: Option<&str>) -> IntentLayer {
        IntentLayer {
            provider: provider.map(Into::into),
            model: model.map(Into::into),
            auth_profile: profile.map(Into::into),
            ..IntentLayer::default()
        }
    }

    fn config(profile: &str, provider: Option<&str>, model: Option<&str>) -> IntentLayer {
        layer(provider, model, Some(profile))
    }

    fn none() -> IntentLayer {
        IntentLayer::default()
    }

    #[test]
    fn flags_beat_session_defaults_which_beat_the_config() {
        let cfg = config("cfg", Some("cfg-p"), Some("cfg-m"));
        let intent = resolve_intent(&layer(Some("flag-p"), None, None), &none(), &cfg).expect("resolves");
        assert_eq!(intent, ExecutionIntent::new("cfg", "flag-p", "cfg-m"));
        let intent = resolve_intent(
            &layer(None, Some("m"), Some("team")),
            &none(),
            &config("cfg", Some("p"), None),
        )
        .expect("resolves");
        assert_eq!((intent.auth_profile.as_str(), intent.model.as_str()), ("team", "m"));
        let session = IntentLayer {
            isolation: Some(embark_core::intent::IsolationMode::Bwrap),
            ..layer(None, Some("session-m"), Some("session-profile"))
        };
        let intent = resolve_intent(&layer(None, None, Some("flag-profile")), &session, &cfg).expect("resolves");
        assert_eq!(
            (
                intent.auth_profile.as_str(),
                intent.provider.as_str(),
                intent.model.as_str()
            ),
            ("flag-profile", "cfg-p", "session-m")
        );
        assert_eq!(intent.isolation, session.isolation);
        let intent = resolve_intent(&none(), &none(), &layer(Some("p"), Some("m"), None)).expect("resolves");
        assert_eq!(
            intent.auth_profile, "default",
            "the runner default profile is the last resort"
        );
        assert_eq!(requirements(&intent), "");
    }

    #[test]
    fn missing_or_bad_names_are_usage_errors() {
        let error = resolve_intent(&layer(None, Some("m"), None), &none(), &none()).expect_err("no provider");
        assert_eq!(error.code, ErrorCode::Usage);
        assert!(error.message.contains("--provider"), "{}", error.message);
        let error = resolve_intent(&layer(Some("p"), None, None), &none(), &none()).expect_err("no model");
        assert!(error.message.contains("--model"), "{}", error.message);
        let error = resolve_intent(&layer(Some("p"), Some(""), None), &none(), &none()).expect_err("empty");
        assert_eq!(error.code, ErrorCode::Usage);
        let error = resolve_intent(&layer(Some("-x"), Some("m"), None), &none(), &none()).expect_err("flag-like");
        assert!(error.message.contains("provider"), "{}", error.message);
    }
}
