//! The real `embark-runner` binary end to end: real broker (SQLite), real
//! git fixture, real Pi, the scripted fake model on 127.0.0.1.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use embark_client::BrokerClient;
use embark_core::event::{AssistantMessage, Log};
use embark_core::wire::{CreateTask, Task, TaskResult};
use embark_core::{Event, EventKind, ExecutionIntent, Payload, TaskState};
use embark_testkit::{Broker, FakeModel, git};
use serde_json::{Value, json};

/// The runner process, killed (by its own PID) if a test ends without stopping it.
struct RunnerChild(Child);

impl Drop for RunnerChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One test's world: broker, fake model, fixture repo, profiles, spaces.
struct World {
    broker: Broker,
    model: FakeModel,
    client: BrokerClient,
    repo: git::FixtureRepo,
    dir: tempfile::TempDir,
}

impl World {
    fn new(script: Value) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Broker::start();
        let model = FakeModel::start(&script);
        let repo = git::fixture(&dir.path().join("repo"));
        let profile = common::write_fake_profile(&dir.path().join("profiles"), "default", &model.base_url());
        // A credential the fake model does not need: its copy must not outlive the task either.
        std::fs::write(
            profile.join("auth.json"),
            r#"{"anthropic":{"type":"api_key","key":"sk-unused"}}"#,
        )
        .expect("write auth.json");
        std::fs::create_dir_all(dir.path().join("home")).expect("home");
        let client = broker.client();
        World {
            broker,
            model,
            client,
            repo,
            dir,
        }
    }

    fn spaces(&self) -> PathBuf {
        self.dir.path().join("spaces")
    }

    fn runner_log(&self) -> PathBuf {
        self.dir.path().join("runner.log")
    }

    async fn submit(&self, prompt: &str, profile: &str) -> Task {
        self.submit_repo(self.repo.origin.to_str().expect("utf-8 path"), prompt, profile)
            .await
    }

    async fn submit_repo(&self, repo_url: &str, prompt: &str, profile: &str) -> Task {
        let task = CreateTask {
            repo_url: repo_url.to_owned(),
            commit: self.repo.head.clone(),
            prompt: prompt.to_owned(),
            intent: ExecutionIntent {
                auth_profile: profile.to_owned(),
                provider: "fake".to_owned(),
                model: "fake-model".to_owned(),
            },
            session_id: "runner-test".to_owned(),
        };
        self.client
            .create_task(&self.broker.client_secret, &task)
            .await
            .expect("task created")
    }

    /// Starts the real runner binary; its stderr goes to `runner.log` (appended: a test may start several).
    fn start_runner(&self, extra: &[&str]) -> RunnerChild {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.runner_log())
            .expect("runner log");
        let home = self.dir.path().join("home");
        let mut command = Command::new(embark_testkit::bin_path("embark-runner"));
        command
            .arg("--broker-url")
            .arg(&self.broker.url)
            // Relative on purpose: Pi runs elsewhere (the workspace), so the runner must resolve them.
            .current_dir(self.dir.path())
            .arg("--spaces")
            .arg("spaces")
            .arg("--profiles")
            .arg("profiles")
            .arg("--pi")
            .arg(embark_testkit::pi_path())
            .arg("--name")
            .arg("test-runner")
            .arg("--claim-wait-ms")
            .arg("2000")
            .args(extra)
            // Nothing from the developer's own config: a fresh HOME, no EMBARK_* leaking in.
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("EMBARK_RUNNER_ENROLLMENT_SECRET", &self.broker.enrollment_secret)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("EMBARK_") && key != "EMBARK_RUNNER_ENROLLMENT_SECRET" {
                command.env_remove(key);
            }
        }
        RunnerChild(command.spawn().expect("runner starts"))
    }

    /// Sends `signal` to the runner we started (by its PID).
    fn signal(&self, child: &RunnerChild, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.0.id()).expect("pid fits")).expect("valid pid");
        rustix::process::kill_process(pid, signal).expect("signal the runner we started");
    }

    /// Waits until the task has an event that `done` accepts.
    async fn wait_for_event(&self, id: embark_core::TaskId, what: &str, done: impl Fn(&Event) -> bool) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if self.events(id).await.iter().any(&done) {
                return;
            }
            assert!(Instant::now() < until, "no {what} seen; {}", self.diagnostics());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn wait(&self, child: &mut RunnerChild, within: Duration) -> ExitStatus {
        let child = &mut child.0;
        let until = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("poll runner") {
                return status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("runner did not exit within {within:?}; log:\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- runner log\n{}\n--- fake model log\n{}\n--- broker log\n{}",
            std::fs::read_to_string(self.runner_log()).unwrap_or_default(),
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
        let status = tokio::task::block_in_place(|| self.wait(&mut runner, Duration::from_secs(90)));
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

/// The task directory is kept, but no copy of a credential file is.
fn assert_no_credentials(world: &World, task: &Task) {
    let pi_agent = world.spaces().join(task.id.to_string()).join("pi-agent");
    assert!(pi_agent.join("settings.json").exists(), "the profile was installed");
    for file in ["auth.json", "models.json"] {
        assert!(
            !pi_agent.join(file).exists(),
            "{file} was removed after Pi exited; {}",
            world.diagnostics()
        );
    }
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
    let task = world.submit("anything", "nonexistent-profile").await;
    let (done, events) = world.run_once(&task, &[]).await;
    assert_eq!(done.state, TaskState::Failed);
    let reason = done.outcome.as_ref().and_then(|o| o.reason.clone()).expect("reason");
    assert!(reason.contains("\"nonexistent-profile\""), "{reason}");
    assert!(
        reason.contains(&world.dir.path().join("profiles").display().to_string()),
        "{reason}"
    );
    assert_eq!(phases(&events), ["claimed", "finishing"]);
    assert!(
        !world.spaces().join(task.id.to_string()).join("workspace").exists(),
        "no clone was made"
    );
    assert!(world.model.log().trim().is_empty(), "the model was never asked");
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
    world.signal(&runner, rustix::process::Signal::TERM);
    let status = tokio::task::block_in_place(|| world.wait(&mut runner, Duration::from_secs(30)));
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
    let until = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|&pid| alive(pid)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// A git server on 127.0.0.1 that takes in requests and never answers: a
/// clone from it hangs. It tells how many connections it took and how many
/// its clients have closed since.
struct HangingGitServer {
    url: String,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HangingGitServer {
    async fn start() -> HangingGitServer {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/repo.git", listener.local_addr().expect("address"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (took, gone) = (Arc::clone(&accepted), Arc::clone(&closed));
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                took.fetch_add(1, Ordering::SeqCst);
                let gone = Arc::clone(&gone);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                    gone.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        HangingGitServer {
            url,
            accepted,
            closed,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HangingGitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_clone_fails_the_task_and_ends_git() {
    let world = World::new(json!({"turns": [{"text": "unused"}]}));
    let server = HangingGitServer::start().await;
    let task = world.submit_repo(&server.url, "anything", "default").await;
    let mut runner = world.start_runner(&[]);
    world
        .wait_for_event(
            task.id,
            "cloning",
            |e| matches!(&e.payload, Payload::Lifecycle(step) if step.phase.name() == "cloning"),
        )
        .await;
    // Git is connected and waiting for an answer that never comes.
    let until = Instant::now() + Duration::from_secs(30);
    while server.accepted() == 0 {
        assert!(Instant::now() < until, "git never connected; {}", world.diagnostics());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = Instant::now();
    world.signal(&runner, rustix::process::Signal::TERM);
    let status = tokio::task::block_in_place(|| world.wait(&mut runner, Duration::from_secs(30)));
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
    let pi_agent = world.spaces().join(task.id.to_string()).join("pi-agent");
    for file in ["auth.json", "models.json"] {
        assert!(!pi_agent.join(file).exists(), "{file} was removed");
    }
    // Git's helper (git-remote-http) held the connection; the runner ended it.
    let until = Instant::now() + Duration::from_secs(5);
    while server.closed() < server.accepted() {
        assert!(
            Instant::now() < until,
            "git still holds {} of {} connections; {}",
            server.accepted() - server.closed(),
            server.accepted(),
            world.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let pi_agent = world.spaces().join(task.id.to_string()).join("pi-agent");
    for file in ["auth.json", "models.json"] {
        assert!(pi_agent.join(file).exists(), "{file} is there while Pi runs");
    }
    // The runner's children (Pi) outlive it; they are ours to wait for.
    let runner_pid = runner.0.id();
    let children = embark_runner::orphans::children_of(runner_pid);
    assert!(!children.is_empty(), "Pi runs under the runner");
    world.signal(&runner, rustix::process::Signal::KILL);
    tokio::task::block_in_place(|| world.wait(&mut runner, Duration::from_secs(10)));
    for file in ["auth.json", "models.json"] {
        assert!(pi_agent.join(file).exists(), "a killed runner cleans nothing up");
    }
    // Pi exits once its stdin is closed; a stray one is stopped by its PID.
    let until = Instant::now() + Duration::from_secs(15);
    while children.iter().any(|&pid| alive(pid)) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for &pid in children.iter().filter(|&&pid| alive(pid)) {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("valid pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }

    // A decoy: not a task directory, so never touched.
    let decoy = world.spaces().join("not-a-task/pi-agent");
    std::fs::create_dir_all(&decoy).expect("mkdir");
    std::fs::write(decoy.join("auth.json"), "{}").expect("write");

    let mut next = world.start_runner(&[]);
    let until = Instant::now() + Duration::from_secs(15);
    while ["auth.json", "models.json"].iter().any(|f| pi_agent.join(f).exists()) {
        assert!(Instant::now() < until, "the copies stayed; {}", world.diagnostics());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pi_agent.join("settings.json").exists(), "only credentials go");
    assert!(decoy.join("auth.json").exists(), "only in task directories");
    world.signal(&next, rustix::process::Signal::TERM);
    let status = tokio::task::block_in_place(|| world.wait(&mut next, Duration::from_secs(30)));
    assert!(status.success(), "{status}; {}", world.diagnostics());
    let log = std::fs::read_to_string(world.runner_log()).expect("log");
    assert!(
        log.contains("removed 2 credential copies a previous runner left"),
        "{log}"
    );
}
