//! Long-poll claiming: try to claim; when nothing is queued, wait for a
//! "task created" wake-up (or a slow poll, or the deadline) and try again.
//!
//! The wake-up is only a hint: a woken waiter re-runs the atomic claim, and a
//! periodic re-check backs it up for tasks that become claimable without a
//! signal from this process. A new task wakes one waiter, not all of them
//! (with every waiter woken, 200 waiting long-polls took a create from 0.4 ms
//! to 42 ms: each woken claim is a write transaction); a waiter that was
//! woken but could not use the wake-up (its request went away, or its look
//! failed) passes it on to the next one. When to look again is a pure policy
//! ([`LongPoll`], fed instants); [`ClaimQueue`] drives it with the clock and
//! is tested under tokio's paused time.

use std::future::Future;
use std::time::Duration;

use embark_core::limits;
use embark_core::shutdown::Shutdown;
use embark_core::wire::{Claim, ParentResult};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::auth::{TokenKind, mint};
use crate::store::{Runner, Store, StoreError};

/// Most wake-ups [`ClaimQueue::tasks_added`] hands out one by one.
const MAX_WAKE_UPS: u64 = 1024;

/// How often a waiting claimer re-checks the queue without a wake-up.
const POLL_FALLBACK: Duration = Duration::from_secs(5);

/// Logged (at debug) when a claim found nothing and starts to wait: from
/// then on, a task created wakes it. Tests wait for this line rather than
/// guess when a claim is waiting (`embark_testkit::CLAIM_WAITING`).
const WAITING: &str = "claim waiting for a task";

/// The wait a runner asked for, capped at `limits::MAX_CLAIM_WAIT_MS`.
pub fn effective_wait(wait_ms: u64) -> Duration {
    Duration::from_millis(wait_ms.min(limits::MAX_CLAIM_WAIT_MS))
}

/// When a waiting claimer looks at the queue again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPoll {
    deadline: Instant,
}

impl LongPoll {
    /// A wait of `wait` from `now`.
    pub fn new(now: Instant, wait: Duration) -> LongPoll {
        LongPoll { deadline: now + wait }
    }

    /// After a look at `now` that found nothing: when to look again without
    /// a wake-up (the next fallback re-check, or the deadline for a last
    /// look), or `None` when the wait is over.
    pub fn next_look(&self, now: Instant) -> Option<Instant> {
        (now < self.deadline).then(|| self.deadline.min(now + POLL_FALLBACK))
    }
}

#[derive(Debug, Default)]
pub struct ClaimQueue {
    task_added: Notify,
}

impl ClaimQueue {
    /// Wakes one waiting claimer (or the next one to wait); call once per task queued.
    pub fn task_added(&self) {
        self.task_added.notify_one();
    }

    /// Wakes one waiting claimer per task of `count` queued elsewhere (all
    /// of them for a count too large to mean anything: "some were missed").
    pub fn tasks_added(&self, count: u64) {
        if count > MAX_WAKE_UPS {
            self.wake_all();
            return;
        }
        for _ in 0..count {
            self.task_added.notify_one();
        }
    }

    /// Wakes every waiting claimer, for when tasks may have been queued
    /// without a wake-up each (e.g. another replica's announcements were lost).
    pub fn wake_all(&self) {
        self.task_added.notify_waiters();
        self.task_added.notify_one();
    }

    /// Claims the oldest queued task for `runner`, waiting up to `wait` for
    /// one; `None` when none came in time or the broker is shutting down.
    /// Only a task of one of `repos`, when given.
    pub async fn claim<S: Store>(
        &self,
        store: &S,
        runner: &Runner,
        repos: Option<&[String]>,
        wait: Duration,
        shutdown: &Shutdown,
    ) -> Result<Option<Claim>, StoreError> {
        let (callback_token, callback_hash) = mint(TokenKind::Callback);
        let task = self
            .wait_for(wait, shutdown, &runner.name, || {
                store.claim_next_of(&runner.id, &callback_hash, repos)
            })
            .await?;
        let Some(task) = task else {
            return Ok(None);
        };
        // A follow-up's runner starts from its parent's result and session.
        let parent = match task.parent {
            Some(id) => {
                let parent = store.get_task(id).await?;
                Some(ParentResult {
                    task: id,
                    changes: parent.changes,
                    artifacts: parent.artifacts,
                })
            }
            None => None,
        };
        Ok(Some(Claim {
            attempt: task.attempt,
            task,
            callback_token,
            parent,
        }))
    }

    /// The repositories of queued tasks `runner` can serve, but those in
    /// `exclude`, waiting up to `wait` for one (on the same wake-ups as a
    /// claim); `None` when none came in time. Nothing is claimed.
    pub async fn peek<S: Store>(
        &self,
        store: &S,
        runner: &Runner,
        exclude: &[String],
        wait: Duration,
        shutdown: &Shutdown,
    ) -> Result<Option<Vec<String>>, StoreError> {
        self.wait_for(wait, shutdown, &runner.name, || async move {
            let repos = store
                .queued_repos(&runner.id, exclude, limits::MAX_REPOS_PER_PEEK)
                .await?;
            Ok((!repos.is_empty()).then_some(repos))
        })
        .await
    }

    /// Runs `look` until it finds something, looking again on a wake-up
    /// ([`ClaimQueue::task_added`]) and when [`LongPoll`] says; `None` once
    /// the wait is over or shutdown is requested.
    async fn wait_for<T, E, F, Fut>(
        &self,
        wait: Duration,
        shutdown: &Shutdown,
        runner: &str,
        mut look: F,
    ) -> Result<Option<T>, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let poll = LongPoll::new(Instant::now(), wait);
        let mut waiting = false;
        // A wake-up this claimer took and has not used yet: passed on if it is dropped.
        let mut held: Option<HeldWakeUp<'_>> = None;
        // Bounded by the deadline: every turn either returns or waits until a
        // wake-up, the next look or the deadline, and the turn after the
        // deadline returns.
        loop {
            // Register for the wake-up before looking, so a task created between
            // the look and the wait is not missed.
            let woken = self.task_added.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();

            let found = look().await?;
            // Used: the look ran, whether or not it found a task (another claimer may have been quicker).
            if let Some(wake_up) = held.take() {
                wake_up.used();
            }
            if let Some(found) = found {
                return Ok(Some(found));
            }
            let Some(until) = poll.next_look(Instant::now()).filter(|_| !shutdown.is_requested()) else {
                return Ok(None);
            };
            if !waiting {
                waiting = true;
                tracing::debug!(runner, "{WAITING}");
            }
            tokio::select! {
                () = &mut woken => held = Some(HeldWakeUp(Some(&self.task_added))),
                () = tokio::time::sleep_until(until) => {}
                () = shutdown.requested() => return Ok(None),
            }
        }
    }
}

/// A wake-up taken from the queue: unless [`HeldWakeUp::used`], dropping it
/// wakes the next waiter, so a claim cancelled or failed between its wake-up
/// and its look does not swallow the task it was woken for.
struct HeldWakeUp<'a>(Option<&'a Notify>);

impl HeldWakeUp<'_> {
    fn used(mut self) {
        self.0 = None;
    }
}

impl Drop for HeldWakeUp<'_> {
    fn drop(&mut self) {
        if let Some(queue) = self.0 {
            queue.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use embark_core::intent::ExecutionIntent;
    use embark_core::task::TaskId;
    use embark_core::wire::{CreateTask, Task};
    use tokio::sync::watch;

    use super::*;
    use crate::auth::TokenHash;
    use crate::store::SqliteStore;

    #[test]
    fn waits_are_capped() {
        assert_eq!(effective_wait(100), Duration::from_millis(100));
        assert_eq!(
            effective_wait(u64::MAX),
            Duration::from_millis(limits::MAX_CLAIM_WAIT_MS)
        );
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_long_poll_looks_again_at_each_fallback_and_last_at_the_deadline() {
        let t0 = Instant::now();
        let poll = LongPoll::new(t0, 12 * SECOND);
        assert_eq!(poll.next_look(t0), Some(t0 + 5 * SECOND));
        assert_eq!(poll.next_look(t0 + 5 * SECOND), Some(t0 + 10 * SECOND));
        assert_eq!(poll.next_look(t0 + 10 * SECOND), Some(t0 + 12 * SECOND));
        assert_eq!(poll.next_look(t0 + 12 * SECOND), None);
        assert_eq!(LongPoll::new(t0, Duration::ZERO).next_look(t0), None, "one look only");
    }

    /// While it lives, the paused clock does not auto-advance: SQLite works on
    /// its own thread, and the clock must not jump while it does. (As
    /// `embark_testkit::clock::Hold`, which the broker does not depend on, to
    /// keep reqwest out of its tree.)
    struct Hold(#[allow(dead_code)] std::sync::mpsc::Sender<()>);

    fn hold() -> Hold {
        let (release, released) = std::sync::mpsc::channel::<()>();
        drop(tokio::task::spawn_blocking(move || {
            let _ = released.recv();
        }));
        Hold(release)
    }

    async fn held<F: Future>(work: F) -> F::Output {
        let _hold = hold();
        work.await
    }

    fn new_task() -> CreateTask {
        CreateTask {
            parent: None,
            repo_url: "https://example.invalid/repo.git".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            prompt: "wake up".into(),
            intent: ExecutionIntent::new("default", "fake", "fake-model"),
            session_id: "s".into(),
            client_request_id: None,
            manifest: None,
        }
    }

    /// A store on a fresh SQLite file, a runner, and a callback token hash.
    struct World {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        runner: Runner,
        callback: TokenHash,
        queue: ClaimQueue,
        /// When each look started, from the world's start.
        looks: RefCell<Vec<Duration>>,
        /// Looks that came back.
        answered: watch::Sender<usize>,
        started: Instant,
    }

    impl World {
        async fn new() -> World {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = held(SqliteStore::open(&dir.path().join("broker.db")))
                .await
                .expect("open store");
            let (_, runner_hash) = mint(TokenKind::Runner);
            let runner = held(store.enroll_runner("box", None, &runner_hash))
                .await
                .expect("enroll");
            let (_, callback) = mint(TokenKind::Callback);
            World {
                _dir: dir,
                store,
                runner,
                callback,
                queue: ClaimQueue::default(),
                looks: RefCell::new(Vec::new()),
                answered: watch::Sender::new(0),
                started: Instant::now(),
            }
        }

        async fn create(&self) -> Task {
            held(self.store.create_task(&new_task())).await.expect("create")
        }

        /// One look at the queue, as a claim makes it.
        async fn look(&self) -> Result<Option<Task>, StoreError> {
            self.looks.borrow_mut().push(self.started.elapsed());
            let found = held(self.store.claim_next(&self.runner.id, &self.callback)).await;
            self.answered.send_modify(|n| *n += 1);
            found
        }

        fn looks(&self) -> Vec<u64> {
            self.looks.borrow().iter().map(|d| d.as_secs()).collect()
        }

        /// Waits (virtual time) for a task as a claim does.
        async fn claim(&self, wait: Duration, shutdown: &Shutdown) -> Option<Task> {
            self.queue
                .wait_for(wait, shutdown, "box", move || self.look())
                .await
                .expect("the store answers")
        }

        /// Resolves once the claim's first look has found nothing.
        async fn first_look_came_back_empty(&self) {
            let mut answered = self.answered.subscribe();
            answered.wait_for(|n| *n > 0).await.expect("the world lives");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_task_is_handed_out_at_once() {
        let world = World::new().await;
        let task = world.create().await;
        let shutdown = Shutdown::new();
        let claimed = world.claim(30 * SECOND, &shutdown).await.expect("a task");
        assert_eq!(claimed.id, task.id);
        assert_eq!(world.looks(), [0]);
        assert_eq!(world.started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_queue_is_looked_at_every_fallback_and_at_the_deadline() {
        let world = World::new().await;
        let shutdown = Shutdown::new();
        assert!(world.claim(12 * SECOND, &shutdown).await.is_none());
        assert_eq!(world.looks(), [0, 5, 10, 12]);
        assert_eq!(world.started.elapsed(), 12 * SECOND, "answered at the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_created_while_a_claim_waits_wakes_it() {
        let world = World::new().await;
        let shutdown = Shutdown::new();
        let create = async {
            world.first_look_came_back_empty().await;
            let task = world.create().await;
            world.queue.task_added();
            task
        };
        let (claimed, created) = tokio::join!(world.claim(30 * SECOND, &shutdown), create);
        assert_eq!(claimed.expect("the new task").id, created.id);
        assert_eq!(world.looks(), [0, 0], "woken at once, not at the fallback");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_created_between_the_look_and_the_wait_is_not_missed() {
        let world = World::new().await;
        let shutdown = Shutdown::new();
        let first = &std::cell::Cell::new(true);
        let world = &world;
        let claimed = world
            .queue
            .wait_for(30 * SECOND, &shutdown, "box", move || async move {
                let found = world.look().await;
                if first.replace(false) {
                    // Created (and announced) after the look, before the wait.
                    world.create().await;
                    world.queue.task_added();
                }
                found
            })
            .await
            .expect("the store answers");
        assert!(claimed.is_some());
        assert_eq!(world.looks(), [0, 0], "the wake-up was registered before the look");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_task_wakes_one_waiting_claimer_not_all() {
        let world = World::new().await;
        let shutdown = Shutdown::new();
        let claims = [30 * SECOND, 30 * SECOND, 30 * SECOND].map(|wait| world.claim(wait, &shutdown));
        let create = async {
            world
                .answered
                .subscribe()
                .wait_for(|n| *n >= 3)
                .await
                .expect("the world lives");
            let task = world.create().await;
            world.queue.task_added();
            // Every claimer's first look came back empty; one more look takes the task.
            world
                .answered
                .subscribe()
                .wait_for(|n| *n >= 4)
                .await
                .expect("the world lives");
            shutdown.trigger();
            task
        };
        let (claimed, created) = tokio::join!(futures::future::join_all(claims), create);
        let claimed: Vec<TaskId> = claimed.into_iter().flatten().map(|task| task.id).collect();
        assert_eq!(claimed, [created.id]);
        assert_eq!(
            world.looks(),
            [0, 0, 0, 0],
            "three first looks and one woken look, not three"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_whose_claim_went_away_is_passed_on() {
        let world = World::new().await;
        let shutdown = Shutdown::new();
        let world = &world;
        // The first claimer is woken, then cancelled inside its look (its runner hung up).
        let cancelled = async {
            let looks = std::cell::Cell::new(0);
            let looks = &looks;
            let claim = world
                .queue
                .wait_for(30 * SECOND, &shutdown, "gone", move || async move {
                    looks.set(looks.get() + 1);
                    if looks.get() == 2 {
                        std::future::pending::<()>().await;
                    }
                    world.look().await
                });
            tokio::select! {
                _ = claim => unreachable!("the claim never finishes its second look"),
                () = async {
                    while looks.get() < 2 {
                        tokio::task::yield_now().await;
                    }
                } => {}
            }
        };
        let second = async {
            world
                .answered
                .subscribe()
                .wait_for(|n| *n >= 1)
                .await
                .expect("the world lives");
            world.claim(30 * SECOND, &shutdown).await
        };
        let create = async {
            world
                .answered
                .subscribe()
                .wait_for(|n| *n >= 2)
                .await
                .expect("the world lives");
            let task = world.create().await;
            world.queue.task_added();
            task
        };
        let ((), claimed, created) = tokio::join!(cancelled, second, create);
        assert_eq!(claimed.expect("woken by the passed-on wake-up").id, created.id);
        assert_eq!(
            world.started.elapsed(),
            Duration::ZERO,
            "at once, not at the fallback look"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_wake_up_the_fallback_look_finds_the_task() {
        let world = World::new().await;
        let shutdown = Shutdown::new();
        let create = async {
            world.first_look_came_back_empty().await;
            // Queued by another process, say: nobody wakes the claim.
            world.create().await
        };
        let (claimed, created) = tokio::join!(world.claim(30 * SECOND, &shutdown), create);
        assert_eq!(claimed.expect("the new task").id, created.id);
        assert_eq!(world.looks(), [0, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_ends_the_wait() {
        let world = World::new().await;
        let shutdown = Shutdown::new();
        let stopping = async {
            world.first_look_came_back_empty().await;
            shutdown.trigger();
        };
        let (claimed, ()) = tokio::join!(world.claim(30 * SECOND, &shutdown), stopping);
        assert!(claimed.is_none());
        assert_eq!(world.started.elapsed(), Duration::ZERO, "at once, not after the wait");

        // Already shutting down: one look, no wait.
        world.looks.borrow_mut().clear();
        assert!(world.claim(30 * SECOND, &shutdown).await.is_none());
        assert_eq!(world.looks(), [0]);
    }
}
