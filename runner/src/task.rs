//! One claimed task, end to end: task directory, auth profile, clone, Pi,
//! events, verdict. Every failure becomes a `failed` verdict with a reason a
//! person can act on; nothing here panics or gives up silently.

use std::path::PathBuf;
use std::time::Duration;

use embark_client::BrokerClient;
use embark_core::event::{LogLevel, Phase};
use embark_core::limits::MAX_RESULT_TEXT_BYTES;
use embark_core::repo_url::without_credentials;
use embark_core::shutdown::Shutdown;
use embark_core::text::{error_chain, head};
use embark_core::wire::{Claim, CompleteTask, Task, TaskResult};
use serde_json::Value;
use tokio::time::{Instant, sleep_until};

use crate::checkout::checkout;
use crate::events::{EventMapper, lifecycle, log_event};
use crate::pi_process::{PiLaunch, PiProcess};
use crate::pi_rpc::{Interrupted, Observer, PromptRun, RpcError, run_prompt};
use crate::reporter::{ReportOptions, Reporter};
use crate::retry::{Patience, Undelivered, persist};
use crate::space::Space;
use crate::{orphans, profile};

/// After stdin EOF, how long Pi gets to exit before SIGTERM (and again before SIGKILL).
const PI_EXIT_GRACE: Duration = Duration::from_secs(5);
/// The same, once shutdown is requested (Pi has been aborted by then).
const PI_EXIT_GRACE_SHUTTING_DOWN: Duration = Duration::from_secs(2);
/// Non-JSON stdout lines reported as events; more are only counted in logs.
const MAX_GARBAGE_NOTES: u32 = 20;

pub const SHUTTING_DOWN: &str = "runner shutting down";

/// What a task needs from the runner.
#[derive(Clone, Debug)]
pub struct TaskSettings {
    pub runner_name: String,
    pub spaces: PathBuf,
    pub profiles: PathBuf,
    pub pi: PathBuf,
    pub task_timeout: Duration,
    pub clone_timeout: Duration,
    pub keep_spaces: bool,
    /// End the processes the task's tools left behind. Only for a runner
    /// that is a child subreaper and runs one task at a time (see `orphans`).
    pub stop_orphans: bool,
    /// Where the running task's credential copies are, for an abrupt exit.
    pub credentials: profile::LiveCredentials,
}

/// Runs the claimed task and reports its events and verdict; returns the
/// task as the broker took the verdict, or why it could not be delivered.
pub async fn run_task(
    client: &BrokerClient,
    settings: &TaskSettings,
    claim: &Claim,
    shutdown: Shutdown,
) -> Result<Task, Undelivered> {
    let options = ReportOptions::default();
    let reporter = Reporter::start(client.clone(), claim, options, shutdown.clone());
    let detail = format!("attempt {} on runner {}", claim.attempt, settings.runner_name);
    reporter.send(lifecycle(Phase::Claimed, Some(&detail)));

    let deadline = Instant::now() + settings.task_timeout;
    let (verdict, space) = attempt(settings, claim, &reporter, deadline, &shutdown).await;
    let reported = report(client, claim, reporter, verdict, options.patience, &shutdown).await;
    if let Some(space) = space.filter(|_| !settings.keep_spaces)
        && let Err(e) = space.remove()
    {
        tracing::warn!(task = %claim.task.id, "could not remove {}: {e}", space.root.display());
    }
    settings.credentials.clear();
    reported
}

/// Reports the end of a task: the `finishing` event and the rest of the
/// events, then the verdict, whose reason notes events that were lost. The
/// events stop in time to leave the verdict its share of the time
/// ([`Patience`]), and the verdict always gets at least one try: a broker
/// outage at the end of a task must not leave it `running`.
pub async fn report(
    client: &BrokerClient,
    claim: &Claim,
    reporter: Reporter,
    mut verdict: CompleteTask,
    patience: Patience,
    shutdown: &Shutdown,
) -> Result<Task, Undelivered> {
    let task = &claim.task;
    let summary = match (&verdict.result, &verdict.reason) {
        (TaskResult::Succeeded, _) => "succeeded".to_owned(),
        (TaskResult::Failed, Some(reason)) => format!("failed: {reason}"),
        (TaskResult::Failed, None) => "failed".to_owned(),
    };
    reporter.send(lifecycle(Phase::Finishing, Some(&summary)));
    let ended = Instant::now();
    let delivery = reporter
        .finish(patience.events_deadline(ended, shutdown.is_requested()))
        .await;
    if let Some(problem) = delivery.problem() {
        verdict.reason = Some(match verdict.reason.take() {
            Some(reason) => format!("{reason}; {problem}"),
            None => problem,
        });
    }
    verdict.final_text = verdict.final_text.map(|t| head(&t, MAX_RESULT_TEXT_BYTES).0.to_owned());
    verdict.reason = verdict.reason.map(|t| head(&t, MAX_RESULT_TEXT_BYTES).0.to_owned());
    tracing::info!(task = %task.id, result = ?verdict.result, reason = ?verdict.reason, "task finished");

    // A repeated verdict is answered unchanged, so retrying is safe.
    persist(
        patience,
        patience.verdict_deadline(ended),
        "reporting the verdict",
        shutdown,
        || client.complete(&claim.callback_token, task.id, &verdict),
    )
    .await
}

fn failed(reason: impl Into<String>) -> CompleteTask {
    CompleteTask {
        result: TaskResult::Failed,
        final_text: None,
        reason: Some(reason.into()),
    }
}

/// The task's work. Returns the verdict and the task directory it created
/// (never one that existed before).
async fn attempt(
    settings: &TaskSettings,
    claim: &Claim,
    reporter: &Reporter,
    deadline: Instant,
    shutdown: &Shutdown,
) -> (CompleteTask, Option<Space>) {
    let task = &claim.task;
    if let Err(e) = task.intent.validate() {
        return (
            failed(format!("the task's execution intent is not acceptable: {e}")),
            None,
        );
    }
    let space = match Space::create(&settings.spaces, task.id) {
        Ok(space) => space,
        Err(e) => return (failed(error_chain(&e)), None),
    };
    settings.credentials.set(&space.pi_agent);
    let verdict = prepare_and_run(settings, claim, &space, reporter, deadline, shutdown).await;
    clean_up(settings, task.id, &space, reporter, shutdown).await;
    (verdict, Some(space))
}

/// After Pi has exited, on every path: no process of the task lives on, and
/// no credential stays on disk, whether the task directory is kept or not.
async fn clean_up(
    settings: &TaskSettings,
    task: embark_core::TaskId,
    space: &Space,
    reporter: &Reporter,
    shutdown: &Shutdown,
) {
    if settings.stop_orphans {
        // A shutdown cuts the sweep short: the verdict must still go out in time.
        let swept = orphans::stop_all(orphans::GRACE, &|| shutdown.is_requested()).await;
        if swept.stopped > 0 {
            tracing::info!(%task, "stopped {} processes left behind by the task's tools", swept.stopped);
            reporter.send(log_event(
                LogLevel::Warning,
                &format!("stopped {} processes the task's tools left running", swept.stopped),
            ));
        }
        if swept.remaining > 0 {
            tracing::error!(%task, "{} processes left by the task's tools would not end", swept.remaining);
        }
    }
    // Pi and its tools are gone, so nothing rewrites these files any more.
    match profile::remove_credentials(&space.pi_agent) {
        Ok(removed) => tracing::debug!(%task, "removed the credential copies {removed:?}"),
        Err(e) => {
            let message = error_chain(&e);
            tracing::error!(%task, "{message}");
            reporter.send(log_event(LogLevel::Error, &message));
        }
    }
}

async fn prepare_and_run(
    settings: &TaskSettings,
    claim: &Claim,
    space: &Space,
    reporter: &Reporter,
    deadline: Instant,
    shutdown: &Shutdown,
) -> CompleteTask {
    let task = &claim.task;
    let intent = &task.intent;
    // Cheap checks first: an unknown profile fails before any clone.
    match profile::install(&settings.profiles, &intent.auth_profile, &space.pi_agent) {
        Ok(files) => tracing::info!(task = %task.id, "auth profile {:?}: copied {files:?}", intent.auth_profile),
        Err(e) => return failed(error_chain(&e)),
    }
    if let Err(e) = space.write_prompt(&task.prompt) {
        return failed(error_chain(&e));
    }

    reporter.send(lifecycle(
        Phase::Cloning,
        Some(&format!("{} @ {}", without_credentials(&task.repo_url), task.commit)),
    ));
    let clone_timeout = settings
        .clone_timeout
        .min(deadline.saturating_duration_since(Instant::now()));
    tokio::select! {
        result = checkout(&task.repo_url, &task.commit, &space.workspace, clone_timeout) => {
            if let Err(e) = result {
                return failed(error_chain(&e));
            }
        }
        () = shutdown.requested() => return failed(SHUTTING_DOWN),
        () = sleep_until(deadline) => return failed(timed_out(settings.task_timeout)),
    }

    reporter.send(lifecycle(
        Phase::StartingPi,
        Some(&format!("{}/{}", intent.provider, intent.model)),
    ));
    let launch = PiLaunch {
        program: settings.pi.clone(),
        provider: intent.provider.clone(),
        model: intent.model.clone(),
        cwd: space.workspace.clone(),
        session_dir: space.session.clone(),
        agent_dir: space.pi_agent.clone(),
        home: space.home.clone(),
        tmp: space.tmp.clone(),
    };
    let mut pi = match PiProcess::spawn(&launch) {
        Ok(pi) => pi,
        Err(e) => return failed(error_chain(&e)),
    };
    tracing::info!(task = %task.id, pid = ?pi.pid(), "Pi started");

    reporter.send(lifecycle(Phase::Prompting, None));
    let mut observer = ReportingObserver {
        mapper: EventMapper::new(),
        reporter,
        garbage: 0,
    };
    let run = run_prompt(&mut pi, &task.prompt, &mut observer, deadline, shutdown).await;
    observer.flush();

    let grace = if shutdown.is_requested() {
        PI_EXIT_GRACE_SHUTTING_DOWN
    } else {
        PI_EXIT_GRACE
    };
    let exit = pi.shutdown(grace).await;
    tracing::info!(task = %task.id, "Pi exited: {:?}", exit.status);
    if let Some(signal) = exit.signalled {
        reporter.send(log_event(
            LogLevel::Warning,
            &format!("Pi did not exit after its input closed; sent {signal}"),
        ));
    }
    verdict(run, settings.task_timeout)
}

fn timed_out(limit: Duration) -> String {
    format!(
        "task timed out after {} s (--task-timeout-secs); Pi was aborted",
        limit.as_secs()
    )
}

/// The task's verdict from how the prompt ran: success needs `agent_end` and
/// a last assistant message that did not end in an error or an abort.
pub fn verdict(run: Result<PromptRun, RpcError>, task_timeout: Duration) -> CompleteTask {
    let run = match run {
        Ok(run) => run,
        Err(e) => return failed(error_chain(&e)),
    };
    let final_text = run
        .last_text
        .clone()
        .or_else(|| run.last_assistant.as_ref().map(|m| m.text.clone()))
        .filter(|t| !t.is_empty());
    let reason = match (run.interrupted, run.agent_ended, &run.last_assistant) {
        (Some(Interrupted::TimedOut), ..) => Some(timed_out(task_timeout)),
        (Some(Interrupted::ShuttingDown), ..) => Some(SHUTTING_DOWN.to_owned()),
        (None, false, _) => Some("Pi stopped before the run ended".to_owned()),
        (None, true, None) => Some("Pi ended the run without an assistant message".to_owned()),
        (None, true, Some(last)) if last.failed() => Some(match (&last.error_message, last.stop_reason.as_str()) {
            (Some(error), "aborted") => format!("Pi's run was aborted: {error}"),
            (Some(error), _) => format!("the model run failed: {error}"),
            (None, stop) => format!("Pi's run ended with stop reason {stop:?}"),
        }),
        (None, true, Some(_)) => None,
    };
    CompleteTask {
        result: if reason.is_some() {
            TaskResult::Failed
        } else {
            TaskResult::Succeeded
        },
        final_text,
        reason,
    }
}

/// Maps Pi's records to events and queues them for the broker.
struct ReportingObserver<'a> {
    mapper: EventMapper,
    reporter: &'a Reporter,
    garbage: u32,
}

impl ReportingObserver<'_> {
    fn flush(&mut self) {
        if let Some(event) = self.mapper.flush() {
            self.reporter.send(event);
        }
    }
}

impl Observer for ReportingObserver<'_> {
    fn on_record(&mut self, record: &Value) {
        for event in self.mapper.map(record, std::time::Instant::now()) {
            self.reporter.send(event);
        }
    }

    fn on_tick(&mut self) {
        if let Some(event) = self.mapper.tick(std::time::Instant::now()) {
            self.reporter.send(event);
        }
    }

    fn on_garbage(&mut self, note: &str) {
        self.garbage += 1;
        if self.garbage <= MAX_GARBAGE_NOTES {
            self.reporter.send(log_event(LogLevel::Warning, note));
        } else if self.garbage == MAX_GARBAGE_NOTES + 1 {
            self.reporter.send(log_event(
                LogLevel::Warning,
                "more non-JSON lines on Pi's stdout; see the runner's log",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::events::AssistantSummary;

    use super::*;

    fn assistant(text: &str, stop: &str, error: Option<&str>) -> AssistantSummary {
        AssistantSummary {
            text: text.into(),
            stop_reason: stop.into(),
            error_message: error.map(str::to_owned),
            usage: None,
        }
    }

    fn ended(last: AssistantSummary, last_text: Option<&str>) -> PromptRun {
        PromptRun {
            agent_ended: true,
            last_assistant: Some(last),
            last_text: last_text.map(str::to_owned),
            interrupted: None,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_clean_end_succeeds_with_the_last_text() {
        let v = verdict(
            Ok(ended(assistant("done: hello", "stop", None), Some("done: hello"))),
            HOUR,
        );
        assert_eq!(v.result, TaskResult::Succeeded);
        assert_eq!(v.final_text.as_deref(), Some("done: hello"));
        assert_eq!(v.reason, None);
    }

    #[test]
    fn errors_aborts_and_interruptions_fail_with_reasons() {
        let v = verdict(Ok(ended(assistant("", "error", Some("500 boom")), None)), HOUR);
        assert_eq!(v.result, TaskResult::Failed);
        assert_eq!(v.reason.as_deref(), Some("the model run failed: 500 boom"));
        assert_eq!(v.final_text, None);

        let v = verdict(
            Ok(ended(assistant("par", "aborted", Some("Request was aborted")), None)),
            HOUR,
        );
        assert_eq!(v.reason.as_deref(), Some("Pi's run was aborted: Request was aborted"));
        assert_eq!(v.final_text.as_deref(), Some("par"), "partial text is kept");

        let mut run = ended(assistant("x", "aborted", None), None);
        run.interrupted = Some(Interrupted::TimedOut);
        let v = verdict(Ok(run.clone()), Duration::from_secs(7));
        assert_eq!(
            v.reason.as_deref(),
            Some("task timed out after 7 s (--task-timeout-secs); Pi was aborted")
        );
        run.interrupted = Some(Interrupted::ShuttingDown);
        assert_eq!(verdict(Ok(run), HOUR).reason.as_deref(), Some(SHUTTING_DOWN));

        let none = PromptRun {
            agent_ended: true,
            ..PromptRun::default()
        };
        assert_eq!(verdict(Ok(none), HOUR).result, TaskResult::Failed);

        let v = verdict(Err(RpcError::PromptRejected("No model selected".into())), HOUR);
        assert_eq!(v.reason.as_deref(), Some("Pi refused the prompt: No model selected"));
        let v = verdict(
            Err(RpcError::ExitedEarly {
                status: "exit status: 1".into(),
                stderr: "Error: Unknown provider".into(),
            }),
            HOUR,
        );
        let reason = v.reason.expect("reason");
        assert!(
            reason.contains("exit status: 1") && reason.contains("Unknown provider"),
            "{reason}"
        );
    }
}
