//! The real `embark-runner` binary end to end: real broker (SQLite), real
//! git fixture, real Pi, the scripted fake model on 127.0.0.1.

mod common;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use embark_client::BrokerClient;
use embark_core::event::{AssistantMessage, Log};
use embark_core::wire::{ArtifactKind, CreateTask, Task, TaskResult};
use embark_core::{Event, EventKind, ExecutionIntent, Payload, TaskState};
use embark_testkit::poll::{eventually, eventually_blocking};
use embark_testkit::proxy::HangingServer;
use embark_testkit::runner::{RunnerHome, RunnerProcess};
use embark_testkit::{Broker, FakeModel, git};
use serde_json::{Value, json};

/// One test's world: broker, fake model, fixture repo, and a home for runners.
struct World {
    broker: Broker,
    model: FakeModel,
    client: BrokerClient,
    repo: git::FixtureRepo,
    runners: RunnerHome,
    _dir: tempfile::TempDir,
}

impl World {
    fn new(script: Value) -> World {
        World::with_broker_env(script, &[])
    }

    /// A world whose broker has these knobs set (e.g. short lease timeouts).
    fn with_broker_env(script: Value, env: &[(&str, &str)]) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Broker::start_with_env(env);
        let model = FakeModel::start(&script);
        let repo = git::fixture(&dir.path().join("repo"));
        let runners = RunnerHome::new(dir.path(), &model);
        // A credential the fake model does not need: its copy must not outlive the task either.
        std::fs::write(
            runners.profiles().join("default/auth.json"),
            r#"{"anthropic":{"type":"api_key","key":"sk-unused"}}"#,
        )
        .expect("write auth.json");
        let client = broker.client();
        World {
            broker,
            model,
            client,
            repo,
            runners,
            _dir: dir,
        }
    }

    fn spaces(&self) -> PathBuf {
        self.runners.spaces()
    }

    async fn submit(&self, prompt: &str, profile: &str) -> Task {
        self.submit_repo(self.repo.origin.to_str().expect("utf-8 path"), prompt, profile)
            .await
    }

    async fn submit_repo(&self, repo_url: &str, prompt: &str, profile: &str) -> Task {
        let task = CreateTask {
            parent: None,
            repo_url: repo_url.to_owned(),
            commit: self.repo.head.clone(),
            prompt: prompt.to_owned(),
            intent: ExecutionIntent::new(profile.to_owned(), "fake".to_owned(), "fake-model".to_owned()),
            session_id: "runner-test".to_owned(),
            client_request_id: None,
            manifest: None,
        };
        self.client
            .create_task(&self.broker.client_secret, &task)
            .await
            .expect("task created")
    }

    /// Starts the real runner binary (its log goes to the runner home's log).
    fn start_runner(&self, extra: &[&str]) -> RunnerProcess {
        self.runners.start(&self.broker, extra)
    }

    /// Waits (bounded) until the task has an event that `done` accepts.
    async fn wait_for_event(&self, id: embark_core::TaskId, what: &str, done: impl Fn(&Event) -> bool) {
        let seen = eventually(Duration::from_secs(60), async || {
            self.events(id).await.iter().any(&done).then_some(())
        })
        .await;
        assert!(seen.is_some(), "no {what} seen; {}", self.diagnostics());
    }

    /// Waits (bounded) for the runner to exit.
    fn wait(&self, runner: &mut RunnerProcess, within: Duration) -> ExitStatus {
        tokio::task::block_in_place(|| runner.exit_within(within))
            .unwrap_or_else(|| panic!("runner did not exit within {within:?}; {}", self.diagnostics()))
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- runner log\n{}\n--- fake model log\n{}\n--- broker log\n{}",
            self.runners.log(),
            self.model.log(),
            self.broker.log()
        )
    }

    async fn task(&self, id: embark_core::TaskId) -> Task {
        self.client
            .get_task(&self.broker.client_secret, id)
            .await
            .expect("task readable")
    }

    async fn events(&self, id: embark_core::TaskId) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let after = events.last().map_or(0, |e: &Event| e.seq);
            let page = self
                .client
                .task_events(&self.broker.client_secret, id, after, 1000)
                .await
                .expect("events readable");
            if page.events.is_empty() {
                return events;
            }
            events.extend(page.events);
        }
    }

    /// Runs `--once` to completion and returns the finished task and its events.
    async fn run_once(&self, task: &Task, extra: &[&str]) -> (Task, Vec<Event>) {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        let mut runner = self.start_runner(&args);
        let status = self.wait(&mut runner, Duration::from_secs(90));
        assert!(status.success(), "runner exit {status}; {}", self.diagnostics());
        (self.task(task.id).await, self.events(task.id).await)
    }
}

fn of_kind(events: &[Event], kind: EventKind) -> Vec<&Event> {
    events.iter().filter(|e| e.payload.kind() == Some(kind)).collect()
}

fn phases(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Lifecycle(step) => Some(step.phase.name().into_owned()),
            _ => None,
        })
        .collect()
}

fn assistant_messages(events: &[Event]) -> Vec<&AssistantMessage> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::AssistantMessage(message) => Some(message),
            _ => None,
        })
        .collect()
}

fn logs(events: &[Event]) -> Vec<&Log> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Log(log) => Some(log),
            _ => None,
        })
        .collect()
}

fn assert_gapless(task: &Task, events: &[Event]) {
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs are gapless from 1");
    assert_eq!(task.last_seq, events.len() as u64);
}

/// The task directory is kept, but its bundle is not; the record names what
/// the bundle held, by hash (never the profile's key, which the proxy holds).
fn assert_no_credentials(world: &World, task: &Task) {
    let space = world.spaces().join(task.id.to_string());
    assert!(
        !space.join("bundle").exists(),
        "the bundle was removed after Pi exited; {}",
        world.diagnostics()
    );
    let record: Value = serde_json::from_slice(&std::fs::read(space.join("task.json")).expect("task.json"))
        .expect("the record is JSON");
    assert_eq!(record["state"], "finished", "{record}");
    let files: Vec<&str> = record["bundle"]["files"]
        .as_array()
        .expect("the bundle's files")
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    // The proxy's models.json in place of the profile's, and no auth.json: the keys stayed with the proxy.
    assert_eq!(
        files,
        ["pi-agent/models.json", "pi-agent/settings.json"],
        "the profile was materialised for the credential proxy"
    );
    assert!(
        !record.to_string().contains("sk-unused"),
        "no secret in the record: {record}"
    );
}

fn delta_text(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::AssistantDelta(delta) => Some(delta.text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_runs_end_to_end_and_streams_its_events() {
    let world = World::new(json!({"turns": [
        {"tool_calls": [{"name": "bash", "arguments": {"command": "echo hello > hello.txt"}}]},
        {"text": "done: hello"}
    ]}));
    let task = world.submit("create hello.txt saying hello", "default").await;
    let (done, events) = world.run_once(&task, &[]).await;
    let diag = || world.diagnostics();

    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{}", diag());
    let outcome = done.outcome.as_ref().expect("outcome");
    assert_eq!(outcome.result, TaskResult::Succeeded);
    assert_eq!(outcome.final_text.as_deref(), Some("done: hello"));
    assert_eq!(outcome.reason, None);

    let space = world.spaces().join(task.id.to_string());
    assert_eq!(
        std::fs::read_to_string(space.join("workspace/hello.txt")).expect("hello.txt"),
        "hello\n"
    );
    assert_eq!(
        git::git(&space.join("workspace"), &["rev-parse", "HEAD"]),
        world.repo.head
    );
    assert_eq!(
        std::fs::read_to_string(space.join("prompt.txt")).expect("prompt"),
        "create hello.txt saying hello"
    );
    assert_eq!(
        std::fs::read_dir(space.join("session")).expect("session dir").count(),
        1,
        "session file kept"
    );
    assert_no_credentials(&world, &task);

    assert_gapless(&done, &events);
    assert_eq!(
        phases(&events),
        ["claimed", "cloning", "starting_pi", "prompting", "finishing"]
    );
    let tool_start = of_kind(&events, EventKind::ToolStart);
    assert_eq!(tool_start.len(), 1);
    let Payload::ToolStart(tool_start) = &tool_start[0].payload else {
        unreachable!("of_kind")
    };
    assert_eq!(tool_start.tool_name, "bash");
    assert_eq!(tool_start.args["command"], "echo hello > hello.txt");
    let tool_end = of_kind(&events, EventKind::ToolEnd);
    assert_eq!(tool_end.len(), 1);
    assert!(matches!(&tool_end[0].payload, Payload::ToolEnd(end) if !end.is_error));
    let messages = assistant_messages(&events);
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].text, "done: hello");
    assert_eq!(messages[1].stop_reason, "stop");
    assert!(
        messages[1].usage.as_ref().is_some_and(|u| u.total_tokens > 0),
        "Pi's usage came through: {:?}",
        messages[1].usage
    );
    let unread: Vec<&Event> = events.iter().filter(|e| e.payload.kind().is_none()).collect();
    assert!(unread.is_empty(), "every event fits its kind: {unread:?}");
    assert_eq!(of_kind(&events, EventKind::AgentStart).len(), 1);
    assert_eq!(of_kind(&events, EventKind::AgentEnd).len(), 1);
    // The fake model streamed "done: hello" as two pieces: one chunk, not a row per token.
    assert_eq!(delta_text(&events), "done: hello");
    assert!(of_kind(&events, EventKind::AssistantDelta).len() <= 2);
    // Order: the tool ran before the final message, which came before agent_end.
    let pos = |kind| {
        events
            .iter()
            .position(|e| e.payload.kind() == Some(kind))
            .expect("present")
    };
    assert!(pos(EventKind::ToolEnd) < pos(EventKind::AgentEnd));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_error_fails_the_task_with_its_message() {
    let world = World::new(json!({"turns": [{"error": {"status": 500, "message": "boom"}}]}));
    let task = world.submit("anything", "default").await;
    let (done, events) = world.run_once(&task, &[]).await;
    assert_eq!(done.state, TaskState::Failed, "{}", world.diagnostics());
    let reason = done.outcome.as_ref().and_then(|o| o.reason.clone()).expect("reason");
    assert!(reason.contains("boom"), "{reason}");
    assert_gapless(&done, &events);
    let messages = assistant_messages(&events);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].stop_reason, "error");
    assert!(messages[0].error_message.as_deref().is_some_and(|m| m.contains("boom")));
    assert_no_credentials(&world, &task);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_profile_fails_naming_it_before_any_clone() {
    let world = World::new(json!({"turns": [{"text": "unused"}]}));
    // Advertised at enrollment, gone by the time the task comes: the runner
    // refuses it before Pi starts rather than run something else.
    let gone = world.runners.profiles().join("gone");
    std::fs::create_dir_all(&gone).expect("mkdir");
    let mut runner = world.start_runner(&["--once"]);
    let enrolled = eventually(Duration::from_secs(60), async || {
        world.runners.log().contains("enrolled").then_some(())
    })
    .await;
    assert!(enrolled.is_some(), "{}", world.diagnostics());
    std::fs::remove_dir(&gone).expect("rmdir");
    let task = world.submit("anything", "gone").await;
    let status = world.wait(&mut runner, Duration::from_secs(90));
    assert!(status.success(), "runner exit {status}; {}", world.diagnostics());
    let (done, events) = (world.task(task.id).await, world.events(task.id).await);
    assert_eq!(done.state, TaskState::Failed);
    let reason = done.outcome.as_ref().and_then(|o| o.reason.clone()).expect("reason");
    assert!(reason.starts_with("pre_launch:intent_unsupported: "), "{reason}");
    assert!(reason.contains("\"gone\""), "{reason}");
    assert!(
        reason.contains(&world.runners.profiles().display().to_string()),
        "{reason}"
    );
    assert_eq!(phases(&events), ["claimed", "finishing"]);
    assert!(
        !world.spaces().join(task.id.to_string()).join("workspace").exists(),
        "no clone was made"
    );
    assert!(world.model.log().trim().is_empty(), "the model was never asked");

    // A profile no enrolled runner advertises is refused at submit.
    let mut unknown = CreateTask {
        parent: None,
        repo_url: world.repo.origin.to_str().expect("utf-8 path").to_owned(),
        commit: world.repo.head.clone(),
        prompt: "anything".into(),
        intent: ExecutionIntent::new("nonexistent-profile", "fake", "fake-model"),
        session_id: "runner-test".into(),
        client_request_id: None,
        manifest: None,
    };
    let refused = world
        .client
        .create_task(&world.broker.client_secret, &unknown)
        .await
        .expect_err("refused");
    let text = refused.to_string();
    assert!(text.contains("no enrolled runner can run"), "{text}");
    assert!(text.contains("it has default"), "{text}");
    unknown.intent = ExecutionIntent::new("default", "fake", "fake-model");
    world
        .client
        .create_task(&world.broker.client_secret, &unknown)
        .await
        .expect("the advertised profile is accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_past_its_timeout_is_aborted_and_fails() {
    // The timeout covers clone and Pi's start-up (seconds on a loaded machine), so the
    // stream is long (about 10 s) and the timeout lands in it even when Pi starts late.
    let world = World::new(json!({"turns": [{"text": common::long_text(400), "chunk_delay_ms": 30}]}));
    let task = world.submit("talk", "default").await;
    let (done, events) = world
        .run_once(&task, &["--task-timeout-secs", "8", "--keep-spaces=false"])
        .await;
    assert_eq!(done.state, TaskState::Failed, "{}", world.diagnostics());
    let reason = done.outcome.as_ref().and_then(|o| o.reason.clone()).expect("reason");
    assert!(reason.contains("timed out after 8 s"), "{reason}");
    assert_gapless(&done, &events);
    let messages = assistant_messages(&events);
    assert_eq!(messages.last().expect("a message").stop_reason, "aborted");
    // Coalescing: the streamed text arrived in 6-character pieces, the events are far fewer.
    let text = delta_text(&events);
    let pieces = text.len().div_ceil(6);
    let chunks = of_kind(&events, EventKind::AssistantDelta).len();
    assert!(pieces >= 10, "the stream was under way ({pieces} pieces)");
    assert!(
        chunks * 3 <= pieces,
        "{pieces} pieces became {chunks} assistant_delta rows"
    );
    assert!(
        !world.spaces().join(task.id.to_string()).exists(),
        "--keep-spaces=false removed the task dir"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_aborts_the_running_task_and_reports_it() {
    let world = World::new(common::slow_stream());
    let task = world.submit("talk", "default").await;
    let mut runner = world.start_runner(&[]);

    // Wait until Pi is streaming, then ask the runner to stop.
    world
        .wait_for_event(task.id, "streaming", |e| {
            e.payload.kind() == Some(EventKind::AssistantDelta)
        })
        .await;
    runner.terminate();
    let status = world.wait(&mut runner, Duration::from_secs(30));
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status}; {}",
        world.diagnostics()
    );

    let done = world.task(task.id).await;
    assert_eq!(done.state, TaskState::Failed);
    let reason = done.outcome.as_ref().and_then(|o| o.reason.clone()).expect("reason");
    assert_eq!(reason, "runner shutting down");
    let events = world.events(task.id).await;
    assert_gapless(&done, &events);
    assert_eq!(phases(&events).last().map(String::as_str), Some("finishing"));
    // Cut short mid-stream: Pi was aborted, and only part of the text came.
    let messages = assistant_messages(&events);
    assert_eq!(
        messages.last().map(|m| m.stop_reason.as_str()),
        Some("aborted"),
        "{}",
        world.diagnostics()
    );
    let streamed = delta_text(&events);
    let whole = common::long_text(common::SLOW_STREAM_WORDS);
    assert!(
        !streamed.is_empty() && streamed.len() < whole.len() && whole.starts_with(&streamed),
        "a strict prefix of the text was streamed: {} of {} bytes",
        streamed.len(),
        whole.len()
    );
    assert_no_credentials(&world, &task);
}

/// The PID in `file`, once the tool wrote it.
fn read_pid(file: &std::path::Path) -> u32 {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .trim()
        .parse()
        .expect("a pid")
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_the_tools_leave_behind_do_not_outlive_the_task() {
    // A background job, and a background shell with a job of its own (two
    // generations: ending the shell orphans its sleep). The command waits
    // until the inner PID is written, so every PID file exists when it ends.
    let command = "sleep 300 & echo $! > bg.pid; \
                   sh -c 'sleep 300 & echo $! > inner.pid; wait' & echo $! > outer.pid; \
                   while [ ! -s inner.pid ]; do sleep 0.05; done";
    let world = World::new(json!({"turns": [
        {"tool_calls": [{"name": "bash", "arguments": {"command": command}}]},
        {"text": "started"}
    ]}));
    let task = world.submit("start a server", "default").await;
    let (done, events) = world.run_once(&task, &[]).await;
    assert_eq!(done.state, TaskState::Succeeded, "{}", world.diagnostics());

    let workspace = world.spaces().join(task.id.to_string()).join("workspace");
    let pids: Vec<u32> = ["bg.pid", "outer.pid", "inner.pid"]
        .iter()
        .map(|file| read_pid(&workspace.join(file)))
        .collect();
    // Ended with the task; give the kernel a moment to reap them.
    let _ = eventually_blocking(Duration::from_secs(2), || {
        (!pids.iter().any(|&pid| alive(pid))).then_some(())
    });
    let survivors: Vec<u32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
    for &pid in &survivors {
        // Only our own test's leftovers, checked by what they run: no stray sleeps after a failure.
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.starts_with("sleep\x00300") || cmdline.starts_with("sh\x00-c\x00sleep 300") {
            let pid = rustix::process::Pid::from_raw(pid as i32).expect("valid pid");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    assert!(
        survivors.is_empty(),
        "{survivors:?} of {pids:?} outlived the task; {}",
        world.diagnostics()
    );
    let stopped = logs(&events)
        .iter()
        .map(|log| log.message.as_str())
        .find_map(|m| m.strip_prefix("stopped ")?.split(' ').next()?.parse::<u32>().ok());
    assert!(
        stopped.is_some_and(|n| n >= 3),
        "a log event says what was stopped: {stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_clone_fails_the_task_and_ends_git() {
    let world = World::new(json!({"turns": [{"text": "unused"}]}));
    // The pre-claim check lists the refs; the clone's fetch then hangs.
    let refs = std::process::Command::new("git")
        .args(["upload-pack", "--stateless-rpc", "--advertise-refs"])
        .arg(&world.repo.origin)
        .output()
        .expect("git upload-pack");
    assert!(refs.status.success(), "{}", String::from_utf8_lossy(&refs.stderr));
    let mut advertisement = b"001e# service=git-upload-pack\n0000".to_vec();
    advertisement.extend_from_slice(&refs.stdout);
    let server = HangingServer::after_refs(advertisement).await;
    let repo_url = format!("{}/repo.git", server.url());
    let task = world.submit_repo(&repo_url, "anything", "default").await;
    let mut runner = world.start_runner(&[]);
    world
        .wait_for_event(
            task.id,
            "cloning",
            |e| matches!(&e.payload, Payload::Lifecycle(step) if step.phase.name() == "cloning"),
        )
        .await;
    // Git is connected and waiting for an answer that never comes.
    tokio::time::timeout(Duration::from_secs(30), server.connected())
        .await
        .unwrap_or_else(|_| panic!("git never connected; {}", world.diagnostics()));
    let stopped = std::time::Instant::now();
    runner.terminate();
    let status = world.wait(&mut runner, Duration::from_secs(30));
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status}; {}",
        world.diagnostics()
    );
    assert!(stopped.elapsed() < Duration::from_secs(10), "{:?}", stopped.elapsed());

    let done = world.task(task.id).await;
    assert_eq!(done.state, TaskState::Failed, "{}", world.diagnostics());
    let reason = done.outcome.as_ref().and_then(|o| o.reason.clone()).expect("reason");
    assert_eq!(reason, "runner shutting down");
    let events = world.events(task.id).await;
    assert_gapless(&done, &events);
    assert_eq!(phases(&events), ["claimed", "cloning", "finishing"]);
    assert!(
        !world.spaces().join(task.id.to_string()).join("bundle").exists(),
        "the bundle was removed"
    );
    // Git's helper (git-remote-http) held the connection; the runner ended it.
    let closed = tokio::time::timeout(Duration::from_secs(5), server.all_closed()).await;
    assert!(
        closed.is_ok(),
        "git still holds {} of {} connections; {}",
        server.accepted() - server.closed(),
        server.accepted(),
        world.diagnostics()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_copies_of_a_killed_runner_are_removed_by_the_next_one() {
    let world = World::new(common::slow_stream());
    let task = world.submit("talk", "default").await;
    let mut runner = world.start_runner(&[]);
    world
        .wait_for_event(task.id, "streaming", |e| {
            e.payload.kind() == Some(EventKind::AssistantDelta)
        })
        .await;
    let pi_agent = world.spaces().join(task.id.to_string()).join("bundle/pi-agent");
    for file in ["auth.json", "models.json"] {
        assert!(pi_agent.join(file).exists(), "{file} is there while Pi runs");
    }
    // The runner's children (Pi) outlive it; they are ours to wait for.
    let children = embark_runner::orphans::children_of(runner.pid());
    assert!(!children.is_empty(), "Pi runs under the runner");
    runner.kill();
    world.wait(&mut runner, Duration::from_secs(10));
    for file in ["auth.json", "models.json"] {
        assert!(pi_agent.join(file).exists(), "a killed runner cleans nothing up");
    }
    // Pi exits once its stdin is closed; a stray one is stopped by its PID.
    let _ = eventually(Duration::from_secs(15), async || {
        (!children.iter().any(|&pid| alive(pid))).then_some(())
    })
    .await;
    for &pid in children.iter().filter(|&&pid| alive(pid)) {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("valid pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }

    // A decoy: not a task directory, so never touched.
    let decoy = world.spaces().join("not-a-task/bundle/pi-agent");
    std::fs::create_dir_all(&decoy).expect("mkdir");
    std::fs::write(decoy.join("auth.json"), "{}").expect("write");

    let mut next = world.start_runner(&[]);
    let swept = eventually(Duration::from_secs(15), async || (!pi_agent.exists()).then_some(())).await;
    assert!(swept.is_some(), "the bundle stayed; {}", world.diagnostics());
    let space = world.spaces().join(task.id.to_string());
    assert!(
        space.join("prompt.txt").exists(),
        "the task directory is kept (workspace_cleanup = never)"
    );
    assert!(decoy.join("auth.json").exists(), "only in task directories");
    next.terminate();
    let status = world.wait(&mut next, Duration::from_secs(30));
    assert!(status.success(), "{status}; {}", world.diagnostics());
    let log = world.runners.log();
    assert!(
        log.contains("removed 1 task bundles (credential copies) a previous runner left"),
        "{log}"
    );
    let record: Value = serde_json::from_slice(&std::fs::read(space.join("task.json")).expect("task.json"))
        .expect("the record is JSON");
    assert_eq!(record["state"], "abandoned", "{record}");
}

/// Leases of a second: a runner that stops reporting loses its task within seconds.
const SHORT_LEASES: &[(&str, &str)] = &[("EMBARK_HEARTBEAT_TIMEOUT", "1s"), ("EMBARK_STALE_TIMEOUT", "1s")];

/// Waits (bounded) until the task is finished, and answers it.
async fn finished(world: &World, id: embark_core::TaskId, within: Duration) -> Task {
    let done = eventually(within, async || {
        let task = world.task(id).await;
        task.state.is_terminal().then_some(task)
    })
    .await;
    done.unwrap_or_else(|| panic!("the task did not finish; {}", world.diagnostics()))
}

/// Stops the Pi processes a killed or frozen runner left (ours: we started the runner).
fn end_children(children: &[u32]) {
    for &pid in children.iter().filter(|&&pid| alive(pid)) {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("valid pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runner_killed_mid_task_leaves_it_failed_with_stale_timeout_exactly_once() {
    let world = World::with_broker_env(common::slow_stream(), SHORT_LEASES);
    let task = world.submit("talk", "default").await;
    let mut runner = world.start_runner(&[]);
    world
        .wait_for_event(task.id, "streaming", |e| {
            e.payload.kind() == Some(EventKind::AssistantDelta)
        })
        .await;
    let children = embark_runner::orphans::children_of(runner.pid());
    runner.kill();
    world.wait(&mut runner, Duration::from_secs(10));
    end_children(&children);

    // Lease (1 s) lapsed → stale; stale (1 s) → failed: it made progress, so it is not requeued.
    let done = finished(&world, task.id, Duration::from_secs(30)).await;
    assert_eq!(done.state, TaskState::Failed, "{}", world.diagnostics());
    assert_eq!(done.attempt, 1);
    let outcome = done.outcome.clone().expect("an outcome");
    assert_eq!(outcome.result, TaskResult::Failed);
    assert_eq!(outcome.code, Some(embark_core::task::ReasonCode::StaleTimeout));
    // Exactly once: later passes leave it as it is, and the reaper acted once on each step.
    let again = eventually(Duration::from_secs(5), async || {
        let log = world.broker.log();
        (log.matches("failed_stale_timeout").count() == 1 && log.matches("action=\"stale\"").count() == 1).then_some(())
    })
    .await;
    assert!(again.is_some(), "{}", world.broker.log());
    assert_eq!(world.task(task.id).await, done);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_runner_that_lost_its_task_stops_pi_and_reports_nothing_more() {
    let world = World::with_broker_env(common::slow_stream(), SHORT_LEASES);
    let task = world.submit("talk", "default").await;
    let mut runner = world.start_runner(&["--once"]);
    world
        .wait_for_event(task.id, "streaming", |e| {
            e.payload.kind() == Some(EventKind::AssistantDelta)
        })
        .await;
    let children = embark_runner::orphans::children_of(runner.pid());
    runner.pause();
    let given_up = finished(&world, task.id, Duration::from_secs(30)).await;
    assert_eq!(
        (given_up.state, given_up.outcome.as_ref().and_then(|o| o.code.clone())),
        (TaskState::Failed, Some(embark_core::task::ReasonCode::StaleTimeout))
    );
    runner.resume();
    // Its next heartbeat is refused: it stops Pi and gives up the task (an error under --once).
    let status = world.wait(&mut runner, Duration::from_secs(30));
    assert!(!status.success(), "{}", world.diagnostics());
    let log = world.runners.log();
    assert!(
        log.contains("the attempt lost its task, stopping it") || log.contains("no longer holds the task"),
        "{log}"
    );
    assert!(
        log.contains("no longer holds the task, so its work was stopped and not reported"),
        "{log}"
    );
    let stopped = eventually(Duration::from_secs(10), async || {
        children.iter().all(|&pid| !alive(pid)).then_some(())
    })
    .await;
    end_children(&children);
    assert!(stopped.is_some(), "Pi was stopped; {}", world.diagnostics());
    assert_eq!(world.task(task.id).await, given_up, "nothing more was stored");
}

impl World {
    /// Scans the fixture's working tree as a sidecar does, uploads the blobs and submits the task.
    async fn submit_tree(&self, prompt: &str) -> (Task, embark_core::manifest::Manifest) {
        let config = embark_manifest::SyncConfig {
            git_config: embark_manifest::GitConfig::Isolated,
            remote: Some("origin".into()),
            ..embark_manifest::SyncConfig::default()
        };
        let scan = embark_manifest::scan(&self.repo.work, &config).expect("the fixture scans");
        self.submit_manifest(prompt, scan.manifest.clone(), |hash| scan.blob(hash).expect("blob"))
            .await
    }

    async fn submit_manifest(
        &self,
        prompt: &str,
        manifest: embark_core::manifest::Manifest,
        blob: impl Fn(&embark_core::manifest::ContentHash) -> Vec<u8>,
    ) -> (Task, embark_core::manifest::Manifest) {
        let secret = &self.broker.client_secret;
        for (hash, _) in manifest.blobs() {
            self.client.put_blob(secret, &hash, blob(&hash)).await.expect("upload");
        }
        let task = CreateTask {
            parent: None,
            repo_url: self.repo.origin.to_str().expect("utf-8 path").to_owned(),
            commit: manifest.commit.as_ref().expect("a commit").to_string(),
            prompt: prompt.to_owned(),
            intent: ExecutionIntent::new("default", "fake", "fake-model"),
            session_id: "runner-test".to_owned(),
            client_request_id: None,
            manifest: Some(manifest.clone()),
        };
        let task = self.client.create_task(secret, &task).await.expect("task created");
        (task, manifest)
    }
}

fn synced_detail(events: &[Event]) -> String {
    events
        .iter()
        .find_map(|e| match &e.payload {
            Payload::Lifecycle(step) if step.phase.name() == "synced" => step.detail.clone(),
            _ => None,
        })
        .expect("a synced event")
}

#[tokio::test(flavor = "multi_thread")]
async fn dirty_and_unpushed_work_reaches_the_workspace_verified() {
    let world = World::new(json!({"turns": [{"text": "done"}, {"text": "done again"}]}));
    let work = &world.repo.work;
    std::fs::write(work.join("tracked.sh"), "#!/bin/sh\n").expect("write");
    std::fs::write(work.join("gone.txt"), "to delete\n").expect("write");
    git::git(work, &["add", "tracked.sh", "gone.txt"]);
    git::git(work, &["commit", "-q", "-m", "local only, never pushed"]);
    let local_head = git::git(work, &["rev-parse", "HEAD"]);
    std::fs::write(work.join("README.md"), "edited\r\nwith CRLF\n").expect("write");
    std::fs::remove_file(work.join("gone.txt")).expect("rm");
    std::fs::set_permissions(
        work.join("tracked.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    std::fs::create_dir_all(work.join("src")).expect("mkdir");
    std::fs::write(work.join("src/new file.rs"), b"fn main() {}\n\xff").expect("write");
    std::fs::create_dir_all(work.join("node_modules/dep")).expect("mkdir");
    std::fs::write(work.join("node_modules/dep/index.js"), "excluded").expect("write");

    let (task, manifest) = world.submit_tree("look at the work").await;
    assert!(
        matches!(manifest.base, embark_core::manifest::Base::Unpushed { .. }),
        "{manifest:?}"
    );
    let (done, events) = world.run_once(&task, &["--workspace-cleanup", "never"]).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{}", world.diagnostics());
    assert_eq!(
        phases(&events),
        ["claimed", "cloning", "synced", "starting_pi", "prompting", "finishing"]
    );
    let detail = synced_detail(&events);
    assert!(
        detail.starts_with(&format!("fingerprint {}:", manifest.fingerprint))
            && detail.contains("1 unpushed commit(s)"),
        "{detail}"
    );

    let space = world.spaces().join(task.id.to_string());
    let ws = space.join("workspace");
    assert_eq!(git::git(&ws, &["rev-parse", "HEAD"]), local_head, "the unpushed commit");
    for path in ["README.md", "src/new file.rs", "tracked.sh"] {
        assert_eq!(
            std::fs::read(ws.join(path)).expect("synced"),
            std::fs::read(work.join(path)).expect("laptop"),
            "{path} byte for byte"
        );
    }
    let mode = std::fs::metadata(ws.join("tracked.sh")).expect("stat");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o111,
        0o111
    );
    assert!(!ws.join("gone.txt").exists(), "the deletion");
    assert!(!ws.join("node_modules").exists(), "excluded");
    assert!(!space.join("sync.bundle").exists(), "the bundle file is gone");
    let record: Value = serde_json::from_slice(&std::fs::read(space.join("task.json")).expect("task.json"))
        .expect("the record is JSON");
    assert_eq!(record["fingerprint"], manifest.fingerprint.to_string(), "{record}");

    // The same tree again: the overlay comes from the runner's cache, the repository from its mirror.
    let (again, _) = world.submit_tree("again").await;
    let (done, events) = world.run_once(&again, &[]).await;
    assert_eq!(done.state, TaskState::Succeeded, "{}", world.diagnostics());
    assert!(synced_detail(&events).contains("from the runner's cache"), "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_manifest_fails_the_task_and_writes_nothing_outside_the_workspace() {
    use embark_core::manifest::{Change, ContentHash, FileMode, Manifest, OverlayEntry, RepoPath};
    let world = World::new(json!({"turns": [{"text": "never asked"}]}));
    let outside = world.spaces().parent().expect("a parent").join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let target = outside.to_str().expect("utf-8").to_owned();

    // Textually safe paths (the broker takes them): a symlink out of the workspace, then a file through it.
    let config = embark_manifest::SyncConfig {
        git_config: embark_manifest::GitConfig::Isolated,
        remote: Some("origin".into()),
        ..embark_manifest::SyncConfig::default()
    };
    let mut manifest = embark_manifest::scan(&world.repo.work, &config).expect("scan").manifest;
    let blob = |bytes: &[u8]| (bytes.len() as u64, ContentHash::of(bytes));
    let (link_size, link_hash) = blob(target.as_bytes());
    let (file_size, file_hash) = blob(b"pwned");
    manifest.overlay = vec![
        OverlayEntry {
            path: RepoPath::new("esc"),
            change: Change::Symlink {
                size: link_size,
                hash: link_hash,
            },
        },
        OverlayEntry {
            path: RepoPath::new("esc/pwned"),
            change: Change::File {
                mode: FileMode::Executable,
                size: file_size,
                hash: file_hash,
            },
        },
    ];
    manifest.fingerprint = Manifest::compute_fingerprint(manifest.commit.as_ref(), &manifest.overlay, &manifest.rules);
    let bytes = |hash: &ContentHash| {
        if *hash == link_hash {
            target.as_bytes().to_vec()
        } else {
            b"pwned".to_vec()
        }
    };
    let (task, _) = world.submit_manifest("escape", manifest, bytes).await;
    let (done, events) = world.run_once(&task, &[]).await;
    assert_eq!(done.state, TaskState::Failed, "{}", world.diagnostics());
    let reason = done.outcome.and_then(|o| o.reason).expect("a reason");
    assert!(reason.contains("goes through the symlink esc"), "{reason}");
    assert!(reason.contains("outside the workspace"), "{reason}");
    assert!(!outside.join("pwned").exists(), "nothing was written outside");
    assert_eq!(std::fs::read_dir(&outside).expect("read").count(), 0);
    assert!(!phases(&events).contains(&"starting_pi".to_owned()), "Pi never started");
    assert!(world.model.log().trim().is_empty(), "the model was never asked");
}

/// The result, end to end on a real runner with real Pi: the fake model's
/// tool call edits, creates, deletes, chmods and renames files and writes a
/// binary one on top of the laptop's uncommitted work; the task names its
/// changes and a bundle artifact that a client reads back, verifies and
/// fetches, and whose result commit is the workspace, file for file.
#[tokio::test(flavor = "multi_thread")]
async fn the_code_a_task_changed_comes_back_as_a_verified_bundle() {
    let edits = "sed -i 's/^/edited: /' README.md && echo new > created.txt && rm gone.txt && chmod +x run.sh \
                 && mv moved.txt renamed.txt && printf '\\000\\001\\377' > blob.bin";
    let world = World::new(json!({"turns": [
        {"tool_calls": [{"name": "bash", "arguments": {"command": edits}}]},
        {"text": "edited"}
    ]}));
    let work = &world.repo.work;
    for (path, text) in [
        ("gone.txt", "to delete\n"),
        ("run.sh", "#!/bin/sh\n"),
        ("moved.txt", "to move\n"),
    ] {
        std::fs::write(work.join(path), text).expect("write");
    }
    git::git(work, &["add", "-A"]);
    git::git(work, &["commit", "-q", "-m", "files"]);
    git::git(work, &["push", "-q", "origin", "HEAD:main"]);
    std::fs::write(work.join("overlay.txt"), "uncommitted on the laptop\n").expect("write");
    let (task, _) = world.submit_tree("edit the files").await;
    let (done, _) = world.run_once(&task, &["--workspace-cleanup", "never"]).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{}", world.diagnostics());
    let changes = done.changes.clone().expect("the task names its changes");
    let commit = changes.commit.clone().expect("a result commit");
    assert_eq!(changes.files_changed, 6, "{changes:?}");
    let [artifact, session] = done.artifacts.as_slice() else {
        panic!("the bundle and Pi's session: {:?}", done.artifacts)
    };
    assert_eq!(
        (artifact.kind, session.kind),
        (ArtifactKind::ResultBundle, ArtifactKind::Session)
    );
    assert_eq!(Some(artifact.hash), changes.bundle);
    let bundle = world
        .client
        .get_artifact(&world.broker.client_secret, task.id, &artifact.hash)
        .await
        .expect("the owner reads the bundle back, verified");
    assert_eq!(bundle.len() as u64, artifact.size);

    let laptop_bundle = world.spaces().join("laptop.bundle");
    std::fs::write(&laptop_bundle, &bundle).expect("write");
    let path = laptop_bundle.to_str().expect("utf-8");
    git::git(work, &["bundle", "verify", "-q", path]);
    git::git(
        work,
        &[
            "fetch",
            "-q",
            path,
            "refs/embark/result:refs/embark/t/result",
            "refs/embark/base:refs/embark/t/base",
        ],
    );
    assert_eq!(git::git(work, &["rev-parse", "refs/embark/t/result"]), commit);
    assert_eq!(git::git(work, &["rev-parse", "refs/embark/t/base"]), changes.base);
    // The base is the laptop's tree: its commit plus the overlay.
    let base_files = git::git(work, &["ls-tree", "-r", "--name-only", &changes.base]);
    assert!(base_files.lines().any(|l| l == "overlay.txt"), "{base_files}");
    // The result is the workspace, every file's mode and blob.
    let ws = world.spaces().join(task.id.to_string()).join("workspace");
    let listed = git::git(work, &["ls-tree", "-r", &commit]);
    let mut count = 0;
    for line in listed.lines() {
        let (meta, name) = line.split_once('\t').expect("ls-tree line");
        let fields: Vec<&str> = meta.split(' ').collect();
        let on_disk = git::git(&ws, &["hash-object", "--no-filters", name]);
        assert_eq!(fields[2], on_disk, "{name}");
        let executable =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(ws.join(name)).expect("stat").permissions())
                & 0o100
                != 0;
        assert_eq!(fields[0] == "100755", executable, "{name}");
        count += 1;
    }
    let mut files = 0;
    let mut dirs = vec![ws.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").map(|e| e.expect("entry")) {
            match entry.file_name().to_str() {
                Some(".git") => {}
                _ if entry.file_type().expect("type").is_dir() => dirs.push(entry.path()),
                _ => files += 1,
            }
        }
    }
    assert_eq!(count, files, "every file of the workspace is in the result: {listed}");
    assert!(!listed.contains("gone.txt") && listed.contains("renamed.txt") && listed.contains("blob.bin"));
}

/// The issue's follow-up round trip (D28): the parent runs on one runner,
/// its follow-up on a second one (another spaces directory, nothing shared
/// but the broker). The fake model's follow-up turn refuses a request that
/// lacks the parent's prompt and answer, so success means Pi resumed the
/// parent's session; the follow-up's result is measured from the parent's.
#[tokio::test(flavor = "multi_thread")]
async fn a_follow_up_on_a_second_runner_continues_the_session_from_the_parents_result() {
    let world = World::new(json!({"turns": [
        {"tool_calls": [{"name": "bash", "arguments": {"command": "echo parent > parent.txt && rm gone.txt"}}]},
        {"text": "parent answer: wrote parent.txt"},
        {"tool_calls": [{"name": "bash", "arguments": {"command": "test -f parent.txt && test ! -e gone.txt && echo follow > follow.txt"}}],
         "expect_in_request": ["write the parent file", "parent answer: wrote parent.txt"]},
        {"text": "follow-up done"}
    ]}));
    let work = &world.repo.work;
    std::fs::write(work.join("gone.txt"), "to delete\n").expect("write");
    git::git(work, &["add", "-A"]);
    git::git(work, &["commit", "-q", "-m", "files"]);
    git::git(work, &["push", "-q", "origin", "HEAD:main"]);
    std::fs::write(work.join("overlay.txt"), "uncommitted on the laptop\n").expect("write");
    let (parent, manifest) = world.submit_tree("write the parent file").await;
    let (parent_done, _) = world.run_once(&parent, &["--workspace-cleanup", "terminal"]).await;
    assert_eq!(
        parent_done.state,
        TaskState::Succeeded,
        "{parent_done:?}\n{}",
        world.diagnostics()
    );
    let parent_changes = parent_done.changes.clone().expect("the parent's changes");
    let parent_result = parent_changes.commit.clone().expect("a parent result");
    let kinds: Vec<_> = parent_done.artifacts.iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        [ArtifactKind::ResultBundle, ArtifactKind::Session],
        "{parent_done:?}"
    );
    let session = world
        .client
        .get_artifact(&world.broker.client_secret, parent.id, &parent_done.artifacts[1].hash)
        .await
        .expect("the session artifact reads back, verified");
    let session = String::from_utf8(session).expect("utf-8");
    assert!(session.starts_with("{\"type\":\"session\""), "{session}");
    assert!(session.contains("parent answer: wrote parent.txt"), "{session}");

    // A follow-up with the wrong base is refused before it is queued.
    let mut follow = CreateTask {
        parent: Some(parent.id),
        repo_url: parent.repo_url.clone(),
        commit: parent.commit.clone(),
        prompt: "now the follow-up".to_owned(),
        intent: parent.intent.clone(),
        session_id: "runner-test".to_owned(),
        client_request_id: None,
        manifest: None,
    };
    let refused = world
        .client
        .create_task(&world.broker.client_secret, &follow)
        .await
        .expect_err("a follow-up must name its parent's manifest");
    assert!(refused.to_string().contains("copy them from the parent"), "{refused}");
    follow.manifest = Some(manifest);
    let follow_task = world
        .client
        .create_task(&world.broker.client_secret, &follow)
        .await
        .expect("the follow-up is queued");
    assert_eq!(follow_task.parent, Some(parent.id));

    let second_dir = tempfile::tempdir().expect("temp dir");
    let second = RunnerHome::new(second_dir.path(), &world.model);
    let mut runner = second.start(&world.broker, &["--once", "--workspace-cleanup", "never"]);
    let status = tokio::task::block_in_place(|| runner.exit_within(Duration::from_secs(90)));
    let diagnostics = || format!("--- second runner\n{}\n{}", second.log(), world.diagnostics());
    assert!(status.is_some_and(|s| s.success()), "{}", diagnostics());
    let done = world.task(follow_task.id).await;
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}\n{}", diagnostics());
    let outcome = done.outcome.clone().expect("an outcome");
    assert_eq!(outcome.final_text.as_deref(), Some("follow-up done"));
    let changes = done.changes.clone().expect("the follow-up's changes");
    assert_eq!(
        changes.base, parent_result,
        "the follow-up starts from the parent's result"
    );
    assert_eq!(changes.files_changed, 1, "{changes:?}");
    let kinds: Vec<_> = done.artifacts.iter().map(|a| a.kind).collect();
    assert_eq!(kinds, [ArtifactKind::ResultBundle, ArtifactKind::Session], "{done:?}");
    let whole = world
        .client
        .get_artifact(&world.broker.client_secret, done.id, &done.artifacts[1].hash)
        .await
        .expect("the follow-up's session");
    let whole = String::from_utf8(whole).expect("utf-8");
    assert!(
        whole.contains("parent answer: wrote parent.txt") && whole.contains("follow-up done"),
        "the follow-up's session holds the whole conversation: {whole}"
    );

    // On the laptop: the parent's bundle, then the follow-up's on top of it.
    for (id, artifacts, name) in [
        (parent.id, &parent_done.artifacts, "p"),
        (done.id, &done.artifacts, "f"),
    ] {
        let bytes = world
            .client
            .get_artifact(&world.broker.client_secret, id, &artifacts[0].hash)
            .await
            .expect("bundle");
        let path = world.spaces().join(format!("{name}.bundle"));
        std::fs::write(&path, bytes).expect("write");
        let spec = format!("refs/embark/result:refs/embark/{name}/result");
        git::git(work, &["fetch", "-q", path.to_str().expect("utf-8"), &spec]);
    }
    let diff = git::git(
        work,
        &["diff", "--name-status", "refs/embark/p/result", "refs/embark/f/result"],
    );
    assert_eq!(diff, "A\tfollow.txt");
    let files = git::git(work, &["ls-tree", "-r", "--name-only", "refs/embark/f/result"]);
    assert!(
        files.contains("parent.txt") && files.contains("overlay.txt") && !files.contains("gone.txt"),
        "{files}"
    );
}

/// A result larger than a broker artifact may be fails the task with a
/// reason, instead of a task that looks done whose code never comes home (D28).
#[tokio::test(flavor = "multi_thread")]
async fn a_result_too_large_to_hand_in_fails_the_task_saying_so() {
    let world = World::new(json!({"turns": [
        {"tool_calls": [{"name": "bash", "arguments": {"command": "head -c 6000000 /dev/urandom > big.bin"}}]},
        {"text": "wrote a big file"}
    ]}));
    let task = world.submit("write a big file", "default").await;
    let (done, _) = world.run_once(&task, &[]).await;
    assert_eq!(done.state, TaskState::Failed, "{done:?}\n{}", world.diagnostics());
    let outcome = done.outcome.clone().expect("an outcome");
    assert_eq!(outcome.code, Some(embark_core::task::ReasonCode::ResultTooLarge));
    let reason = outcome.reason.unwrap_or_default();
    assert!(reason.contains("more than the 4194304"), "{reason}");
    assert_eq!(
        outcome.final_text.as_deref(),
        Some("wrote a big file"),
        "the final text is kept"
    );
    assert!(done.changes.is_none(), "{done:?}");
}
