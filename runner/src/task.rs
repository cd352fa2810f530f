//! One claimed task, end to end: profile, task directory, bundle, clone,
//! Pi in its sandbox, events, verdict, clean-up. Every failure becomes a
//! `failed` verdict with a reason a person can act on; nothing here panics
//! or gives up silently.

use std::path::PathBuf;
use std::time::Duration;

use embark_client::BrokerClient;
use embark_core::NewEvent;
use embark_core::event::{LogLevel, Phase, SessionStats};
use embark_core::limits::MAX_RESULT_TEXT_BYTES;
use embark_core::repo_url::without_credentials;
use embark_core::shutdown::Shutdown;
use embark_core::task::ReasonCode;
use embark_core::text::{error_chain, head, tail};
use embark_core::wire::{Claim, CompleteTask, Task, TaskResult};
use serde_json::Value;
use tokio::time::{Instant, sleep_until};

use crate::bundle::{self, Bundle, LiveBundles};
use crate::checkout::CloneLimits;
use crate::events::{EventMapper, lifecycle, log_event};
use crate::follow::{self, FollowStart};
use crate::guard::GuardReport;
use crate::hydrate::{BlobSource, Cache, Target, hydrate};
use crate::isolation::{IsolationMode, Sandbox, docker};
use crate::lease::{LeaseKeeper, Lost};
use crate::pi_process::{PiLaunch, PiPaths, PiProcess};
use crate::pi_rpc::{Interrupted, Observer, PromptRun, RpcError, run_prompt_cancellable};
use crate::profile;
use crate::proxy::{Listen, TaskCredentials};
use crate::redact::Redactor;
use crate::reporter::{ReportOptions, Reporter};
use crate::result::{self, ResultRepo};
use crate::retry::{Patience, Undelivered, persist};
use crate::session_file;
use crate::space::{RecordState, Space, TaskRecord, WorkspaceCleanup};

/// After stdin EOF, how long Pi gets to exit before SIGTERM (and again before SIGKILL).
const PI_EXIT_GRACE: Duration = Duration::from_secs(5);
/// The same, once shutdown is requested (Pi has been aborted by then).
const PI_EXIT_GRACE_SHUTTING_DOWN: Duration = Duration::from_secs(2);
/// Non-JSON stdout lines reported as events; more are only counted in logs.
const MAX_GARBAGE_NOTES: u32 = 20;
/// How much of Pi's stderr the `log` event at the end quotes.
const STDERR_EVENT_BYTES: usize = 4 * 1024;

pub const SHUTTING_DOWN: &str = "runner shutting down";

/// What a task needs from the runner.
#[derive(Clone, Debug)]
pub struct TaskSettings {
    pub runner_name: String,
    /// The runner's labels, which a task's intent may ask for.
    pub labels: Vec<String>,
    pub spaces: PathBuf,
    pub profiles: PathBuf,
    pub pi: PathBuf,
    pub pi_no_extensions: bool,
    pub task_timeout: Duration,
    /// After a client's cancel: SIGTERM to Pi's task guard, then SIGKILL of the guard after this long.
    pub cancel_kill_timeout: Duration,
    pub clone: CloneLimits,
    /// The bound of the caches under `<spaces>/.cache` (`cache_max_mib`).
    pub cache_max_bytes: u64,
    pub cleanup: WorkspaceCleanup,
    /// The longest final text a verdict carries, in characters.
    pub result_max_chars: usize,
    /// Each task's cost budget, held by the credential proxy.
    pub task_max_cost: Option<f64>,
    pub sandbox: Sandbox,
    /// Where the running tasks' bundles are, for an abrupt exit.
    pub bundles: LiveBundles,
    /// The broker client and the runner's token, for the blobs a task's manifest names.
    pub client: BrokerClient,
    pub runner_token: String,
}

/// How the task's work ended, before it is reported.
struct Outcome {
    verdict: CompleteTask,
    /// Pi's session stats, when Pi gave them (for the broker to keep, a later issue).
    stats: Option<SessionStats>,
}

impl Outcome {
    fn failed(code: ReasonCode, reason: impl Into<String>) -> Outcome {
        Outcome {
            verdict: failed(code, reason),
            stats: None,
        }
    }

    /// A client cancelled the task before Pi ran.
    fn cancelled() -> Outcome {
        Outcome {
            verdict: cancelled(None),
            stats: None,
        }
    }
}

/// Runs the claimed task and reports its events and verdict; returns the
/// task as the broker took the verdict, or why it could not be delivered.
/// `cancel` turns true when a client cancels the task: Pi is stopped and
/// the verdict is `cancelled`, the last thing reported.
pub async fn run_task(
    client: &BrokerClient,
    settings: &TaskSettings,
    claim: &Claim,
    shutdown: Shutdown,
    cancel: Shutdown,
) -> Result<Task, Undelivered> {
    let options = ReportOptions::default();
    let lease = LeaseKeeper::start(client.clone(), claim);
    // The task stops on the runner's shutdown, and when its attempt lost the task.
    let stop = Shutdown::new();
    let stopping = tokio::spawn({
        let (stop, lost) = (stop.clone(), lease.lost().clone());
        async move {
            tokio::select! {
                () = shutdown.requested() => {}
                () = lost.requested() => {}
            }
            stop.trigger();
        }
    });
    let reporter = Reporter::start(client.clone(), claim, options, stop.clone());
    let detail = format!("attempt {} on runner {}", claim.attempt, settings.runner_name);
    reporter.send(lifecycle(Phase::Claimed, Some(&detail)));

    let claimed_at = std::time::Instant::now();
    let deadline = Instant::now() + settings.task_timeout;
    let (outcome, space) = attempt(settings, claim, &reporter, claimed_at, deadline, &stop, &cancel).await;
    stopping.abort();
    if let Some(Lost(why)) = lease.why() {
        // Another attempt (or nobody) holds the task now: nothing more is published.
        reporter.abort();
        lease.stop();
        if let Some((space, mut record)) = space {
            if settings.cleanup.removes(None) {
                if let Err(e) = space.remove() {
                    tracing::warn!(task = %claim.task.id, "could not remove {}: {e}", space.root.display());
                }
            } else {
                // Finished as far as this runner goes: not a leftover for the next one's sweep.
                record.state = RecordState::Finished;
                record.result = Some("lost".to_owned());
                if let Err(e) = space.write_record(&record) {
                    tracing::warn!(task = %claim.task.id, "{}", error_chain(&e));
                }
            }
        }
        return Err(Undelivered::Superseded(why));
    }
    let succeeded = outcome.verdict.result == TaskResult::Succeeded;
    let result_name = outcome.verdict.result.state().as_str();
    if let Some(stats) = &outcome.stats {
        tracing::info!(
            task = %claim.task.id,
            tokens_in = stats.tokens.input,
            tokens_out = stats.tokens.output,
            cache_read = stats.tokens.cache_read,
            cache_write = stats.tokens.cache_write,
            cost = stats.cost,
            "Pi's session stats"
        );
    }
    let mut verdict = outcome.verdict;
    verdict.final_text = verdict
        .final_text
        .map(|text| cap_text(&text, settings.result_max_chars));
    let reported = report(client, claim, reporter, verdict, options.patience, &stop).await;
    // The lease is kept until the verdict is in: a slow report must not let the task go stale.
    lease.stop();
    if let Some((space, mut record)) = space {
        record.state = RecordState::Finished;
        record.result = Some(result_name.to_owned());
        record.stats = outcome.stats;
        if settings.cleanup.removes(Some(succeeded)) {
            if let Err(e) = space.remove() {
                tracing::warn!(task = %claim.task.id, "could not remove {}: {e}", space.root.display());
            }
        } else if let Err(e) = space.write_record(&record) {
            tracing::warn!(task = %claim.task.id, "{}", error_chain(&e));
        }
    }
    reported
}

/// The final text cut to `max_chars` characters, marked when cut.
pub fn cap_text(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some((cut, _)) => {
            let total = text.chars().count();
            format!(
                "{}\n\n[embark: the final text was cut to its first {max_chars} of {total} characters (result_max_chars)]",
                &text[..cut]
            )
        }
    }
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
        (TaskResult::Cancelled, _) => "cancelled: Pi was stopped at the client's request".to_owned(),
    };
    reporter.send(lifecycle(Phase::Finishing, Some(&summary)));
    let ended = Instant::now();
    let hurry = shutdown.is_requested();
    let delivery = reporter.finish(patience.events_deadline(ended, hurry)).await;
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

/// The verdict after a client's cancel, keeping Pi's partial text.
fn cancelled(final_text: Option<String>) -> CompleteTask {
    CompleteTask {
        result: TaskResult::Cancelled,
        final_text,
        reason: Some("Pi was stopped at the client's request".to_owned()),
        code: Some(ReasonCode::CancelledByUser),
        changes: None,
        artifacts: Vec::new(),
    }
}

fn failed(code: ReasonCode, reason: impl Into<String>) -> CompleteTask {
    CompleteTask {
        result: TaskResult::Failed,
        final_text: None,
        reason: Some(reason.into()),
        code: Some(code),
        changes: None,
        artifacts: Vec::new(),
    }
}

/// The code of a failure before Pi ran, naming the step.
fn pre_launch(step: &str) -> ReasonCode {
    ReasonCode::PreLaunch(step.to_owned())
}

/// The task's work. Returns the outcome and the task directory it created
/// (never one that existed before) with its record.
async fn attempt(
    settings: &TaskSettings,
    claim: &Claim,
    reporter: &Reporter,
    claimed_at: std::time::Instant,
    deadline: Instant,
    shutdown: &Shutdown,
    cancel: &Shutdown,
) -> (Outcome, Option<(Space, TaskRecord)>) {
    let task = &claim.task;
    let intent = &task.intent;
    if let Err(e) = task.intent.validate() {
        return (
            Outcome::failed(
                pre_launch("intent"),
                format!("the task's execution intent is not acceptable: {e}"),
            ),
            None,
        );
    }
    // Cheap checks first: an unknown profile, one this runner's mode may
    // not run, or a provider, model, isolation or label it does not allow
    // fails before anything is created or cloned, and before Pi starts. The
    // intent is binding: nothing is substituted.
    let profile = match profile::find(&settings.profiles, &intent.auth_profile)
        .and_then(|profile| profile.check_mode(settings.sandbox.mode).map(|()| profile))
    {
        Ok(profile) => profile,
        Err(e) if e.is_intent_unsupported() => {
            return (
                Outcome::failed(
                    pre_launch("intent_unsupported"),
                    profile::intent_unsupported(&error_chain(&e)),
                ),
                None,
            );
        }
        Err(e) => return (Outcome::failed(pre_launch("profile"), error_chain(&e)), None),
    };
    if let Some(why) = profile.refuses(intent, settings.sandbox.mode, &settings.labels) {
        return (
            Outcome::failed(pre_launch("intent_unsupported"), profile::intent_unsupported(&why)),
            None,
        );
    }
    let space = match Space::create(&settings.spaces, task.id) {
        Ok(space) => space,
        Err(e) => return (Outcome::failed(pre_launch("space"), error_chain(&e)), None),
    };
    let mut record = TaskRecord {
        task: task.id.to_string(),
        attempt: claim.attempt,
        isolation: settings.sandbox.mode.name().to_owned(),
        state: RecordState::Running,
        result: None,
        container: (settings.sandbox.mode == IsolationMode::Docker)
            .then(|| docker::container_name(&task.id.to_string())),
        bundle: None,
        stats: None,
        fingerprint: None,
    };
    if let Err(e) = space.write_record(&record) {
        return (
            Outcome::failed(pre_launch("space"), error_chain(&e)),
            Some((space, record)),
        );
    }
    settings.bundles.add(&space.bundle);
    // The credential proxy first: the bundle points Pi at it.
    // On a socket where the sandbox has a network of its own.
    let listen = match settings.sandbox.proxy_socket(profile.policy.network, &space) {
        Some(socket) => Listen::Socket(socket),
        None => Listen::Loopback,
    };
    let credentials = match TaskCredentials::set_up(
        &profile,
        (&intent.provider, &intent.model),
        settings.task_max_cost,
        &listen,
        reporter.sender(),
    )
    .await
    {
        Ok(credentials) => credentials,
        Err(e) => {
            settings.bundles.forget(&space.bundle);
            return (
                Outcome::failed(pre_launch(e.step()), error_chain(&e)),
                Some((space, record)),
            );
        }
    };
    reporter.redact_with(credentials.redactor.clone());
    let materialised = Bundle::materialise(
        &profile,
        &intent.provider,
        &intent.model,
        &space.bundle,
        credentials.pi.as_ref(),
    );
    let mut outcome = match materialised {
        Ok(bundle) => {
            tracing::info!(
                task = %task.id,
                profile = %profile.name,
                files = ?bundle.metadata.files.iter().map(|f| format!("{} {}", f.path, f.hash)).collect::<Vec<_>>(),
                env = ?bundle.metadata.env,
                "task bundle materialised"
            );
            record.bundle = Some(bundle.metadata.clone());
            if let Err(e) = space.write_record(&record) {
                tracing::warn!(task = %task.id, "{}", error_chain(&e));
            }
            let outcome = prepare_and_run(
                settings,
                claim,
                (&space, &mut record),
                &bundle,
                &profile,
                reporter,
                claimed_at,
                deadline,
                shutdown,
                cancel,
            )
            .await;
            clean_up(
                settings,
                task.id,
                &space,
                record.container.as_deref(),
                &outcome,
                reporter,
            )
            .await;
            outcome.outcome
        }
        Err(e) => Outcome::failed(pre_launch("bundle"), error_chain(&e)),
    };
    if let Some(reason) = credentials.budget_refusal() {
        outcome.verdict = CompleteTask {
            final_text: outcome.verdict.final_text.take(),
            changes: outcome.verdict.changes.take(),
            artifacts: std::mem::take(&mut outcome.verdict.artifacts),
            ..failed(ReasonCode::BudgetExceeded, reason)
        };
    }
    // The token dies with the attempt; what leaves the runner is redacted.
    drop(credentials.proxy);
    redact_outcome(&credentials.redactor, &mut outcome, &space);
    // Pi's session, redacted, for a follow-up to continue (any outcome).
    match session_file::keep(&settings.client, claim, &space.session).await {
        Ok(Some(artifact)) => outcome.verdict.artifacts.push(artifact),
        Ok(None) => {}
        Err(e) => reporter.send(log_event(
            LogLevel::Warning,
            &format!("Pi's session was not kept: {}", error_chain(&e)),
        )),
    }
    // Pi and its tools are gone, so nothing rewrites the bundle any more.
    if let Err(e) = bundle::remove(&space.bundle) {
        let message = error_chain(&e);
        tracing::error!(task = %task.id, "{message}");
        reporter.send(log_event(LogLevel::Error, &message));
    }
    settings.bundles.forget(&space.bundle);
    (outcome, Some((space, record)))
}

/// The task's credentials out of the verdict's texts and Pi's session files.
fn redact_outcome(redactor: &Redactor, outcome: &mut Outcome, space: &Space) {
    let verdict = &mut outcome.verdict;
    for text in [&mut verdict.final_text, &mut verdict.reason].into_iter().flatten() {
        *text = redactor.text(text).into_owned();
    }
    match redactor.files_under(&space.session) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "redacted credentials in {n} session file(s) of {}",
            space.root.display()
        ),
        Err(e) => tracing::warn!("could not redact the session files of {}: {e}", space.root.display()),
    }
}

/// What the run left to clean up.
struct Ran {
    outcome: Outcome,
    /// Pi ran and did not end cleanly on its own (interrupted, signalled,
    /// a failure exit): its container may still be there.
    unclean: bool,
}

/// After Pi has exited, on every path: what its guard ended is reported,
/// and a container that may have outlived it is removed.
async fn clean_up(
    settings: &TaskSettings,
    task: embark_core::TaskId,
    space: &Space,
    container: Option<&str>,
    ran: &Ran,
    reporter: &Reporter,
) {
    if let Some(report) = GuardReport::take(&space.guard_report) {
        if report.stopped > 0 {
            tracing::info!(%task, "stopped {} processes left behind by the task's tools", report.stopped);
            reporter.send(log_event(
                LogLevel::Warning,
                &format!("stopped {} processes the task's tools left running", report.stopped),
            ));
        }
        if report.remaining > 0 {
            tracing::error!(%task, "{} processes left by the task's tools would not end", report.remaining);
        }
    }
    if let Some(name) = container.filter(|_| ran.unclean) {
        match docker::remove(&settings.sandbox.docker.program, name).await {
            Ok(true) => tracing::info!(%task, "removed container {name}"),
            Ok(false) => {}
            Err(e) => {
                let message = error_chain(&e);
                tracing::error!(%task, "{message}");
                reporter.send(log_event(LogLevel::Error, &message));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn prepare_and_run(
    settings: &TaskSettings,
    claim: &Claim,
    (space, record): (&Space, &mut TaskRecord),
    bundle: &Bundle,
    profile: &profile::Profile,
    reporter: &Reporter,
    claimed_at: std::time::Instant,
    deadline: Instant,
    shutdown: &Shutdown,
    cancel: &Shutdown,
) -> Ran {
    let task = &claim.task;
    let intent = &task.intent;
    let clean = |outcome: Outcome| Ran {
        outcome,
        unclean: false,
    };
    if let Err(e) = space.write_prompt(&task.prompt) {
        return clean(Outcome::failed(pre_launch("space"), error_chain(&e)));
    }

    reporter.send(lifecycle(
        Phase::Cloning,
        Some(&format!("{} @ {}", without_credentials(&task.repo_url), task.commit)),
    ));
    let limits = CloneLimits {
        timeout: settings
            .clone
            .timeout
            .min(deadline.saturating_duration_since(Instant::now())),
        ..settings.clone.clone()
    };
    let task_id = task.id.to_string();
    let cache = Cache::under(&settings.spaces).with_max_bytes(settings.cache_max_bytes);
    let target = Target {
        task_dir: &space.root,
        workspace: &space.workspace,
        cache: &cache,
        limits: &limits,
        guard: &settings.sandbox.guard,
    };
    let blobs = BlobSource {
        client: &settings.client,
        runner_token: &settings.runner_token,
    };
    tokio::select! {
        result = hydrate(task, target, blobs) => match result {
            Err(e) => return clean(Outcome::failed(pre_launch("clone"), error_chain(&e))),
            Ok(Some(synced)) => {
                tracing::info!(task = %task.id, fingerprint = %synced.fingerprint, cached = synced.cached, "workspace synced");
                reporter.send(lifecycle(Phase::Synced, Some(&synced.detail())));
                record.fingerprint = Some(synced.fingerprint.to_string());
                if let Err(e) = space.write_record(record) {
                    tracing::warn!(task = %task.id, "{}", error_chain(&e));
                }
            }
            Ok(None) => {}
        },
        () = shutdown.requested() => return clean(Outcome::failed(ReasonCode::RunnerLost, SHUTTING_DOWN)),
        () = cancel.requested() => return clean(Outcome::cancelled()),
        () = sleep_until(deadline) => return clean(Outcome::failed(ReasonCode::Timeout, timed_out(settings.task_timeout))),
    }
    if cancel.is_requested() {
        return clean(Outcome::cancelled());
    }
    let result_repo = ResultRepo::new(&space.root, &space.workspace, &settings.sandbox.guard, &task_id);
    // A follow-up starts from its parent's result, in its parent's session.
    let follow = match &claim.parent {
        None => FollowStart::default(),
        Some(parent) => {
            let cwd = settings.sandbox.seen_by_pi(space, &space.workspace);
            let blobs = (&settings.client, settings.runner_token.as_str());
            match follow::start(parent, &result_repo, blobs, &space.root, (&space.session, &cwd)).await {
                Ok(start) => {
                    let detail = format!(
                        "follows task {}: from {}, {}",
                        parent.task,
                        start.commit.as_deref().unwrap_or("its base (it changed nothing)"),
                        if start.session.is_some() {
                            "its session resumed"
                        } else {
                            "no session to resume"
                        }
                    );
                    reporter.send(log_event(LogLevel::Info, &detail));
                    start
                }
                Err(e) => return clean(Outcome::failed(pre_launch("follow"), error_chain(&e))),
            }
        }
    };
    // The base of the result, before Pi can change anything; a task without one still runs.
    let rules = task.manifest.as_ref().map(|m| &m.rules);
    let start_commit = follow.commit.as_deref().unwrap_or(&task.commit);
    let base = match result::snapshot_base(&result_repo, start_commit, rules).await {
        Ok(base) => Some(base),
        Err(e) => {
            reporter.send(log_event(
                LogLevel::Warning,
                &format!("no result will be recorded: {}", error_chain(&e)),
            ));
            None
        }
    };

    reporter.send(lifecycle(
        Phase::StartingPi,
        Some(&format!("{}/{}", intent.provider, intent.model)),
    ));
    let launch = PiLaunch {
        program: settings.pi.clone(),
        provider: intent.provider.clone(),
        model: intent.model.clone(),
        no_extensions: settings.pi_no_extensions,
        paths: PiPaths {
            session_file: follow.session.clone(),
            ..PiPaths::of(space, &bundle.agent_dir)
        },
        task_id,
        profile_env: bundle.env.clone(),
    };
    let prepared = match settings.sandbox.prepare(&launch, space, bundle, profile.policy.network) {
        Ok(prepared) => prepared,
        Err(e) => return clean(Outcome::failed(pre_launch("sandbox"), error_chain(&e))),
    };
    tracing::debug!(task = %task.id, argv = ?prepared.argv, "starting Pi");
    let mut pi = match PiProcess::spawn(prepared.command, &launch.program) {
        Ok(pi) => pi,
        Err(e) => return clean(Outcome::failed(pre_launch("spawn"), error_chain(&e))),
    };
    tracing::info!(task = %task.id, pid = ?pi.pid(), isolation = %settings.sandbox.mode, "Pi started");

    reporter.send(lifecycle(Phase::Prompting, None));
    let mut observer = ReportingObserver {
        mapper: EventMapper::new(),
        reporter,
        garbage: 0,
        first_line: Some((task.id, claimed_at)),
    };
    let run = run_prompt_cancellable(&mut pi, &task.prompt, &mut observer, deadline, shutdown, cancel).await;
    observer.flush();

    let was_cancelled = cancel.is_requested();
    let exit = if was_cancelled {
        // A client cancelled: abort was sent; now the process tree goes, at once.
        let stopping = std::time::Instant::now();
        let exit = pi.stop(settings.cancel_kill_timeout).await;
        tracing::info!(
            task = %task.id,
            stop_ms = stopping.elapsed().as_millis() as u64,
            signal = ?exit.signalled,
            "Pi stopped after a cancel"
        );
        exit
    } else {
        let grace = if shutdown.is_requested() {
            PI_EXIT_GRACE_SHUTTING_DOWN
        } else {
            PI_EXIT_GRACE
        };
        pi.shutdown(grace).await
    };
    tracing::info!(task = %task.id, "Pi exited: {:?}", exit.status);
    if was_cancelled {
        reporter.send(log_event(
            LogLevel::Info,
            &format!(
                "cancelled by a client: Pi was aborted and its processes stopped ({})",
                exit.signalled.unwrap_or("exited on abort")
            ),
        ));
    } else if let Some(signal) = exit.signalled {
        reporter.send(log_event(
            LogLevel::Warning,
            &format!("Pi did not exit after its input closed; sent {signal}"),
        ));
    }
    let unclean = was_cancelled
        || exit.signalled.is_some()
        || !exit.status.is_some_and(|s| s.success())
        || run.as_ref().is_ok_and(|r| r.interrupted.is_some());
    let stats = run.as_ref().ok().and_then(|r| r.stats.clone());
    let mut verdict = if was_cancelled {
        let partial = run
            .as_ref()
            .ok()
            .and_then(|r| r.last_assistant.as_ref().map(|m| m.text.clone()));
        cancelled(partial.filter(|t| !t.is_empty()))
    } else {
        verdict(run, settings.task_timeout)
    };
    // Pi's last words on stderr, whatever the outcome: the reason quotes
    // them only when Pi exited early.
    let stderr_tail = exit.stderr_tail;
    if !stderr_tail.is_empty() {
        let level = if verdict.result == TaskResult::Succeeded {
            LogLevel::Info
        } else {
            LogLevel::Warning
        };
        reporter.send(log_event(
            level,
            &format!("Pi's stderr ended with: {}", tail(&stderr_tail, STDERR_EVENT_BYTES)),
        ));
    }
    if let Some(stats) = &stats {
        reporter.send(NewEvent::new(stats.clone()));
    }
    if let Some(base) = &base {
        match result::record(&result_repo, base, &settings.client, claim).await {
            Ok((changes, artifacts)) => {
                reporter.send(log_event(LogLevel::Info, &format!("result: {}", changes.summary())));
                verdict.changes = Some(changes);
                verdict.artifacts = artifacts;
            }
            // Code too big to hand in fails the task, so nobody takes it for done.
            Err(e @ result::RecordError::TooLarge { .. }) => {
                verdict = CompleteTask {
                    final_text: verdict.final_text.take(),
                    ..failed(ReasonCode::ResultTooLarge, error_chain(&e))
                };
            }
            Err(e) => reporter.send(log_event(
                LogLevel::Error,
                &format!("the task's result was not recorded: {}", error_chain(&e)),
            )),
        }
    }
    Ran {
        outcome: Outcome { verdict, stats },
        unclean,
    }
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
        Err(e) => return failed(ReasonCode::PiFailed, error_chain(&e)),
    };
    let final_text = run
        .last_text
        .clone()
        .or_else(|| run.last_assistant.as_ref().map(|m| m.text.clone()))
        .filter(|t| !t.is_empty());
    let code = match run.interrupted {
        Some(Interrupted::TimedOut) => ReasonCode::Timeout,
        Some(Interrupted::ShuttingDown) => ReasonCode::RunnerLost,
        Some(Interrupted::Cancelled) => ReasonCode::CancelledByUser,
        None => ReasonCode::PiFailed,
    };
    let reason = match (run.interrupted, run.agent_ended, &run.last_assistant) {
        (Some(Interrupted::TimedOut), ..) => Some(timed_out(task_timeout)),
        (Some(Interrupted::ShuttingDown), ..) => Some(SHUTTING_DOWN.to_owned()),
        (Some(Interrupted::Cancelled), ..) => return cancelled(final_text),
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
        code: reason.is_some().then_some(code),
        final_text,
        reason,
        changes: None,
        artifacts: Vec::new(),
    }
}

/// Maps Pi's records to events and queues them for the broker.
struct ReportingObserver<'a> {
    mapper: EventMapper,
    reporter: &'a Reporter,
    garbage: u32,
    /// The task and when it was claimed, until Pi's first line came: the
    /// task start overhead (`npm run bench:task-start` reads this log line).
    first_line: Option<(embark_core::TaskId, std::time::Instant)>,
}

impl ReportingObserver<'_> {
    fn saw_a_line(&mut self) {
        if let Some((task, claimed_at)) = self.first_line.take() {
            tracing::info!(%task, since_claim_ms = claimed_at.elapsed().as_millis() as u64, "Pi's first RPC line");
        }
    }

    fn flush(&mut self) {
        if let Some(event) = self.mapper.flush() {
            self.reporter.send(event);
        }
    }
}

impl Observer for ReportingObserver<'_> {
    fn on_record(&mut self, record: &Value) {
        self.saw_a_line();
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
        self.saw_a_line();
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
            stats: None,
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
    fn a_long_final_text_is_cut_by_characters_and_marked() {
        assert_eq!(cap_text("short", 10), "short");
        assert_eq!(cap_text("exactly10!", 10), "exactly10!");
        let cut = cap_text("héllo wörld", 5);
        assert_eq!(
            cut,
            "héllo\n\n[embark: the final text was cut to its first 5 of 11 characters (result_max_chars)]"
        );
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
        assert!(none.stats.is_none());
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
