//! The Pi driver against real Pi 0.73.1 and the scripted fake model: a full
//! run, a dialog that must be cancelled, Pi failing at startup, a deadline
//! and a shutdown request mid-stream. (The driver's every branch, under
//! paused time and without a process, is in `tests/pi_driver.rs`.)

mod common;

use std::path::Path;
use std::time::Duration;

use embark_core::event::{Log, LogLevel};
use embark_core::shutdown::Shutdown;
use embark_core::{EventKind, NewEvent, Payload, TaskId};
use embark_runner::bundle::Bundle;
use embark_runner::config::DockerSettings;
use embark_runner::events::EventMapper;
use embark_runner::guard::Guard;
use embark_runner::isolation::bwrap::Runtime;
use embark_runner::isolation::{IsolationMode, Network, Sandbox};
use embark_runner::pi_connection::{PiPeer, Record};
use embark_runner::pi_process::{PiLaunch, PiPaths, PiProcess};
use embark_runner::pi_rpc::{Interrupted, Observer, PromptRun, RpcError, run_prompt};
use embark_runner::profile;
use embark_runner::space::Space;
use embark_testkit::FakeModel;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Keeps what the driver passed on, mapped the way the runner maps it.
#[derive(Default)]
struct Collect {
    records: Vec<Value>,
    events: Vec<NewEvent>,
    mapper: EventMapper,
    /// Requests shutdown once this many text deltas have come: mid-stream, whatever the machine's speed.
    stop_after_deltas: Option<(usize, Shutdown)>,
}

impl Observer for Collect {
    fn on_record(&mut self, record: &Value) {
        self.records.push(record.clone());
        self.events.extend(self.mapper.map(record, std::time::Instant::now()));
        if let Some((after, stop)) = &self.stop_after_deltas
            && self.count_records("message_update", Some("text_delta")) == *after
        {
            stop.trigger();
        }
    }
    fn on_tick(&mut self) {
        self.events.extend(self.mapper.tick(std::time::Instant::now()));
    }
    fn on_garbage(&mut self, note: &str) {
        panic!("unexpected non-JSON line from Pi: {note}");
    }
}

impl Collect {
    fn count_records(&self, kind: &str, update: Option<&str>) -> usize {
        self.records
            .iter()
            .filter(|r| r["type"] == kind)
            .filter(|r| update.is_none_or(|u| r["assistantMessageEvent"]["type"] == u))
            .count()
    }
    fn count_events(&self, kind: EventKind) -> usize {
        self.events.iter().filter(|e| e.payload.kind() == Some(kind)).count()
    }
}

/// A task directory with the fake profile materialised and an empty
/// workspace, and Pi's launch in it (process isolation, under its guard).
struct Setup {
    space: Space,
    launch: PiLaunch,
    bundle: Bundle,
    sandbox: Sandbox,
}

impl Setup {
    fn spawn(&self) -> PiProcess {
        let prepared = self
            .sandbox
            .prepare(&self.launch, &self.space, &self.bundle, Network::On)
            .expect("a command");
        PiProcess::spawn(prepared.command, &self.launch.program).expect("Pi starts")
    }
}

fn setup(root: &Path, model: &FakeModel, provider: &str) -> Setup {
    let space = Space::create(&root.join("spaces"), TaskId::new()).expect("task dir");
    let profiles = root.join("profiles");
    embark_testkit::write_fake_profile(&profiles, "default", &model.base_url());
    let profile = profile::find(&profiles, "default").expect("profile");
    let bundle = Bundle::materialise(&profile, provider, "fake-model", &space.bundle, None).expect("bundle");
    std::fs::create_dir_all(&space.workspace).expect("workspace");
    let launch = PiLaunch {
        program: embark_testkit::pi_path(),
        provider: provider.into(),
        model: "fake-model".into(),
        no_extensions: false,
        paths: PiPaths::of(&space, &bundle.agent_dir),
        task_id: space
            .root
            .file_name()
            .expect("a task id")
            .to_string_lossy()
            .into_owned(),
        profile_env: bundle.env.clone(),
    };
    let sandbox = Sandbox {
        mode: IsolationMode::Process,
        guard: Guard::at(embark_testkit::bin_path("embark-runner")),
        bwrap: "bwrap".into(),
        docker: DockerSettings {
            program: "docker".into(),
            image: "unused".into(),
            network: "bridge".into(),
            user: "1000".into(),
            task_dir: "/embark/task".into(),
        },
        hidden: Vec::new(),
        runtime: Runtime::default(),
    };
    Setup {
        space,
        launch,
        bundle,
        sandbox,
    }
}

/// Waits until Pi answers a first command, so a deadline counts the run and
/// not Pi's start-up (1.5 s here, several on a loaded machine).
async fn ready(pi: &mut PiProcess) {
    pi.connection()
        .send(&json!({"id": "ready", "type": "get_state"}))
        .await
        .expect("Pi reads its stdin");
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match pi.connection().recv().await {
                Some(Record::Json(record)) if record["id"] == "ready" => return true,
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await
    .expect("Pi answers get_state within 60 s");
    assert!(answered, "Pi exited before it was ready: {}", pi.stderr_tail());
}

async fn drive(
    launch: &Setup,
    prompt: &str,
    within: Duration,
    shutdown: &Shutdown,
) -> (Result<PromptRun, RpcError>, Collect, PiProcess) {
    drive_with(launch, prompt, within, shutdown, Collect::default()).await
}

/// Starts Pi, waits until it is ready, then runs `prompt` with `within` to go.
async fn drive_with(
    launch: &Setup,
    prompt: &str,
    within: Duration,
    shutdown: &Shutdown,
    mut seen: Collect,
) -> (Result<PromptRun, RpcError>, Collect, PiProcess) {
    let mut pi = launch.spawn();
    ready(&mut pi).await;
    let run = run_prompt(&mut pi, prompt, &mut seen, Instant::now() + within, shutdown).await;
    seen.events.extend(seen.mapper.flush());
    (run, seen, pi)
}

/// Starts Pi and runs `prompt` right away, as the runner does (for a Pi that fails at start).
async fn drive_unready(
    launch: &Setup,
    prompt: &str,
    shutdown: &Shutdown,
) -> (Result<PromptRun, RpcError>, Collect, PiProcess) {
    let mut pi = launch.spawn();
    let mut seen = Collect::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = run_prompt(&mut pi, prompt, &mut seen, deadline, shutdown).await;
    (run, seen, pi)
}

#[tokio::test]
async fn a_bash_then_done_run_ends_cleanly() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let model = FakeModel::start(&json!({"turns": [
        {"tool_calls": [{"name": "bash", "arguments": {"command": "echo hello > hello.txt"}}]},
        {"text": "done: hello"}
    ]}));
    let launch = setup(tmp.path(), &model, "fake");
    let space = &launch.space;
    let shutdown = Shutdown::new();
    let (run, seen, pi) = drive(&launch, "create hello.txt", Duration::from_secs(60), &shutdown).await;
    let run = run.unwrap_or_else(|e| panic!("run failed: {e}; model log:\n{}", model.log()));

    assert!(run.agent_ended);
    assert_eq!(run.interrupted, None);
    assert_eq!(run.last_text.as_deref(), Some("done: hello"));
    let stats = run.stats.clone().expect("Pi's session stats");
    assert_eq!(
        (stats.tool_calls, stats.assistant_messages, stats.user_messages),
        (1, 2, 1)
    );
    assert!(
        stats.tokens.total > 0 && stats.tokens.total == stats.tokens.input + stats.tokens.output,
        "{stats:?}"
    );
    let last = run.last_assistant.expect("an assistant message");
    assert_eq!(last.stop_reason, "stop");
    assert_eq!(
        std::fs::read_to_string(space.workspace.join("hello.txt")).expect("hello.txt"),
        "hello\n"
    );
    assert_eq!(seen.count_events(EventKind::ToolStart), 1);
    assert_eq!(seen.count_events(EventKind::ToolEnd), 1);
    assert_eq!(
        seen.events.last().and_then(|e| e.payload.kind()),
        Some(EventKind::AgentEnd)
    );

    let exit = pi.shutdown(Duration::from_secs(5)).await;
    assert!(exit.status.expect("exited").success(), "Pi exits 0 on stdin EOF");
    assert_eq!(exit.signalled, None);
    let sessions = std::fs::read_dir(&space.session).expect("session dir").count();
    assert_eq!(sessions, 1, "the session file is kept in session/");
}

#[tokio::test]
async fn extension_dialogs_are_cancelled() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let model = FakeModel::start(&json!({"turns": [{"text": "done: hello"}]}));
    let launch = setup(tmp.path(), &model, "fake");
    // A project extension that blocks the run on a confirm dialog until someone answers.
    let extensions = launch.launch.paths.cwd.join(".pi/extensions");
    std::fs::create_dir_all(&extensions).expect("extensions dir");
    std::fs::write(
        extensions.join("ask.ts"),
        r#"export default function (pi: any) {
  pi.on("before_agent_start", async (_event: any, ctx: any) => {
    const ok = await ctx.ui.confirm("Proceed?", "the runner must answer");
    ctx.ui.notify(`confirm answered ${ok}`, "info");
  });
}
"#,
    )
    .expect("write extension");
    let shutdown = Shutdown::new();
    let (run, seen, pi) = drive(&launch, "hi", Duration::from_secs(30), &shutdown).await;
    let run = run.expect("run ends");
    assert_eq!(run.interrupted, None, "the dialog did not block the run");
    assert_eq!(run.last_text.as_deref(), Some("done: hello"));
    let logs: Vec<&Payload> = seen
        .events
        .iter()
        .map(|e| &e.payload)
        .filter(|p| p.kind() == Some(EventKind::Log))
        .collect();
    assert_eq!(
        logs,
        [
            &Log::new(
                LogLevel::Warning,
                "cancelled a Pi extension's confirm dialog \"Proceed?\": nobody can answer dialogs on a runner"
            )
            .into(),
            &Log::new(LogLevel::Info, "confirm answered false").into()
        ]
    );
    pi.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn pi_failing_at_startup_reports_its_stderr() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let model = FakeModel::start(&json!({"turns": [{"text": "unused"}]}));
    let launch = setup(tmp.path(), &model, "no-such-provider");
    let shutdown = Shutdown::new();
    let (run, _seen, _pi) = drive_unready(&launch, "hi", &shutdown).await;
    match run {
        Err(RpcError::ExitedEarly { status, stderr }) => {
            assert!(status.contains('1'), "{status}");
            assert!(stderr.contains("Unknown provider \"no-such-provider\""), "{stderr}");
        }
        other => panic!("expected an early exit, got {other:?}"),
    }
}

#[tokio::test]
async fn pi_gone_before_the_prompt_is_written_still_reports_its_stderr() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let model = FakeModel::start(&json!({"turns": [{"text": "unused"}]}));
    let launch = setup(tmp.path(), &model, "no-such-provider");
    let mut pi = launch.spawn();
    // Pi fails at startup and is gone before anything is written to it.
    let status = pi
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("Pi exits on its own");
    assert!(!status.success());
    let shutdown = Shutdown::new();
    let mut seen = Collect::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    match run_prompt(&mut pi, "hi", &mut seen, deadline, &shutdown).await {
        Err(RpcError::ExitedEarly { status, stderr }) => {
            assert!(status.contains('1'), "{status}");
            assert!(stderr.contains("Unknown provider \"no-such-provider\""), "{stderr}");
        }
        other => panic!("expected an early exit with Pi's stderr, got {other:?}"),
    }
}

#[tokio::test]
async fn a_deadline_aborts_the_run_and_deltas_stay_coalesced() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let model = FakeModel::start(&common::slow_stream());
    let launch = setup(tmp.path(), &model, "fake");
    let shutdown = Shutdown::new();
    let started = Instant::now();
    // The stream (200 deltas, 30 ms apart) is cut about 2 s in.
    let (run, seen, pi) = drive(&launch, "talk", Duration::from_millis(2500), &shutdown).await;
    let run = run.expect("run ends");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the run ended soon after the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(run.interrupted, Some(Interrupted::TimedOut));
    assert!(run.agent_ended, "Pi ends the run after abort");
    assert_eq!(run.last_assistant.expect("assistant message").stop_reason, "aborted");

    let deltas = seen.count_records("message_update", Some("text_delta"));
    let chunks = seen.count_events(EventKind::AssistantDelta);
    assert!(deltas >= 10, "the stream was under way when aborted ({deltas} deltas)");
    assert!(
        chunks >= 1 && chunks * 3 <= deltas,
        "{deltas} deltas became {chunks} chunks"
    );
    pi.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_shutdown_request_aborts_the_run() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let model = FakeModel::start(&common::slow_stream());
    let launch = setup(tmp.path(), &model, "fake");
    let shutdown = Shutdown::new();
    let seen = Collect {
        stop_after_deltas: Some((10, shutdown.clone())),
        ..Collect::default()
    };
    let (run, seen, pi) = drive_with(&launch, "talk", Duration::from_secs(60), &shutdown, seen).await;
    let run = run.expect("run ends");
    assert_eq!(run.interrupted, Some(Interrupted::ShuttingDown));
    assert!(run.agent_ended);
    let last = run.last_assistant.expect("assistant message");
    assert_eq!(last.stop_reason, "aborted", "the stream was cut, not run to its end");
    assert!(
        last.text.len() < common::long_text(200).len(),
        "only part of the text came: {} bytes",
        last.text.len()
    );
    assert!(seen.count_records("message_update", Some("text_delta")) >= 10);
    let exit = pi.shutdown(Duration::from_secs(5)).await;
    assert!(exit.status.expect("exited").success());
}
