//! In-process fan-out for the live tails: a write wakes the tails that
//! follow its task, and the store stays the only truth.
//!
//! A wake-up ([`Hub::touch`], [`Hub::created`]) is only a hint, never data: a
//! woken tail re-reads behind it, from its own cursor, so a tail that lags,
//! misses a hint or reconnects never loses or repeats an event. To keep 100
//! tails of one task from making 100 reads per append, the tails of a task
//! share a [`Feed`]: the first one woken reads the task and its new events
//! once (the others wait for that read instead of making their own) and keeps
//! the newest events, serialized once, in a bounded cache. A tail whose cursor
//! is older than the cache (a replay, or a reader that fell far behind) pages
//! through the store itself.
//!
//! Hints come from this process's handlers and, across replicas or
//! processes, from the database (PostgreSQL's `NOTIFY`); a periodic re-read
//! ([`FALLBACK`]) backs up any hint that never comes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use embark_core::task::TaskId;
use embark_core::wire::Task;
use embark_core::wire::live::TaskStatus;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::store::{Store, StoreError};

/// How often a tail re-reads without a hint, for writes no hint announces
/// (another process on the same SQLite file, a lost `NOTIFY`).
pub const FALLBACK: Duration = Duration::from_secs(5);
/// Events a feed keeps for the tails that are caught up.
const CACHE_EVENTS: usize = 4096;
/// Bytes of serialized events a feed keeps at most.
const CACHE_BYTES: usize = 8 * 1024 * 1024;
/// Events one read of the store asks for.
const PAGE: u32 = embark_core::limits::MAX_EVENTS_PER_PAGE;

/// An event as a tail sends it: its seq, and its JSON (an `Event`), made once.
#[derive(Debug)]
pub struct EventJson {
    pub seq: u64,
    pub json: Box<str>,
}

impl EventJson {
    fn new(event: &embark_core::Event) -> Arc<EventJson> {
        Arc::new(EventJson {
            seq: event.seq,
            json: serde_json::to_string(event)
                .expect("an event serializes")
                .into_boxed_str(),
        })
    }
}

/// What a tail learns from its feed: the task's state, and events after its
/// cursor (consecutive, possibly only the first page).
#[derive(Debug)]
pub struct View {
    pub status: TaskStatus,
    pub events: Vec<Arc<EventJson>>,
}

/// The wake-up of one tail, registered with every feed (and session) it follows.
pub type Signal = Arc<Notify>;

/// The tails of one task.
struct Feed {
    id: TaskId,
    /// Bumped by every hint; a read that began at generation `g` is fresh for every hint up to `g`.
    hinted: AtomicU64,
    followers: Mutex<Vec<Weak<Notify>>>,
    cache: tokio::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// The hint generation the last read began at.
    fresh: u64,
    read_at: Option<Instant>,
    status: Option<TaskStatus>,
    /// Events `base + 1 ..= base + events.len()`.
    base: u64,
    events: VecDeque<Arc<EventJson>>,
    bytes: usize,
}

impl Cache {
    fn tip(&self) -> u64 {
        self.base + self.events.len() as u64
    }

    fn push(&mut self, event: Arc<EventJson>) {
        debug_assert_eq!(event.seq, self.tip() + 1);
        self.bytes += event.json.len();
        self.events.push_back(event);
        while self.events.len() > CACHE_EVENTS || (self.bytes > CACHE_BYTES && self.events.len() > 1) {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.json.len();
                self.base += 1;
            }
        }
    }

    /// The cached events after `cursor`, when the cache reaches back to it.
    fn after(&self, cursor: u64) -> Option<Vec<Arc<EventJson>>> {
        if cursor < self.base {
            return None;
        }
        let skip = usize::try_from(cursor - self.base).unwrap_or(usize::MAX);
        Some(self.events.iter().skip(skip).take(PAGE as usize).cloned().collect())
    }
}

impl Feed {
    fn touch(&self) {
        self.hinted.fetch_add(1, Ordering::AcqRel);
        let followers = self.followers.lock().expect("the followers lock is never poisoned");
        for follower in followers.iter().filter_map(Weak::upgrade) {
            // A stored permit, if the tail is busy: it looks again when it is done.
            follower.notify_one();
        }
    }

    /// The task's state and the events after `cursor`, read once per hint for all tails.
    async fn view<S: Store>(&self, store: &S, cursor: u64) -> Result<View, StoreError> {
        let (status, cached) = {
            let mut cache = self.cache.lock().await;
            let generation = self.hinted.load(Ordering::Acquire);
            if cache.status.is_none() || cache.fresh < generation {
                self.refresh(store, &mut cache, generation).await?;
            }
            let status = cache.status.clone().expect("a refreshed cache has the task's status");
            (status, cache.after(cursor))
        };
        let events = match cached {
            Some(events) => events,
            // Older than the cache: a replay, read without holding up the caught-up tails.
            None => store
                .events_after(self.id, cursor, PAGE)
                .await?
                .events
                .iter()
                .map(EventJson::new)
                .collect(),
        };
        Ok(View { status, events })
    }

    /// Reads the task, then every event up to its `last_seq` that the cache lacks.
    async fn refresh<S: Store>(&self, store: &S, cache: &mut Cache, generation: u64) -> Result<(), StoreError> {
        let task = store.get_task(self.id).await?;
        if cache.status.is_none() {
            // A new feed caches from now on; older events are a replay.
            cache.base = task.last_seq;
        }
        while cache.tip() < task.last_seq {
            let page = store.events_after(self.id, cache.tip(), PAGE).await?;
            if page.events.is_empty() {
                break;
            }
            for event in &page.events {
                cache.push(EventJson::new(event));
            }
        }
        cache.status = Some(TaskStatus::from(&task));
        cache.fresh = generation;
        cache.read_at = Some(Instant::now());
        Ok(())
    }

    /// Makes the next view re-read when the last read is older than [`FALLBACK`].
    async fn expire(&self) {
        let cache = self.cache.lock().await;
        if cache.read_at.is_none_or(|at| at.elapsed() >= FALLBACK) {
            self.hinted.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The tails following a session: woken when a task is created in it.
#[derive(Default)]
struct SessionWatch {
    created: AtomicU64,
    followers: Mutex<Vec<Weak<Notify>>>,
}

/// Where this process's hints go besides its own tails: the other replicas
/// (PostgreSQL `NOTIFY`, `store::postgres::changes`).
pub trait Relay: Send + Sync {
    /// Task `id` changed here (events appended, a new state).
    fn touched(&self, id: TaskId);

    /// A client asked here to cancel running task `id`: the other replicas'
    /// control channels look for their runners' cancels.
    fn cancel_requested(&self, id: TaskId);
}

/// The live tails of this broker process.
#[derive(Default)]
pub struct Hub {
    feeds: Mutex<HashMap<TaskId, Weak<Feed>>>,
    sessions: Mutex<HashMap<String, Weak<SessionWatch>>>,
    /// Bumped when a task was created somewhere this process cannot name the
    /// session of (another replica): every session tail looks again.
    created_elsewhere: AtomicU64,
    /// The runners' control channels: woken by every cancel request (they
    /// are rare), each looks whether one is for its runner.
    controls: Mutex<Vec<Weak<Notify>>>,
    relay: std::sync::OnceLock<Arc<dyn Relay>>,
}

impl Hub {
    /// Sends this process's hints to other replicas too (set once, at start).
    pub fn set_relay(&self, relay: Arc<dyn Relay>) {
        if self.relay.set(relay).is_err() {
            tracing::warn!("the live tails' relay was set twice; the first one stays");
        }
    }

    /// Something about task `id` changed (events appended, a new state): its
    /// tails look again, here and (through the relay) on the other replicas.
    pub fn touch(&self, id: TaskId) {
        self.touch_here(id);
        if let Some(relay) = self.relay.get() {
            relay.touched(id);
        }
    }

    /// Every tail here looks again: hints from elsewhere may have been missed.
    pub fn touch_all_here(&self) {
        let feeds: Vec<Arc<Feed>> = self
            .feeds
            .lock()
            .expect("the feeds lock is never poisoned")
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for feed in feeds {
            feed.touch();
        }
    }

    /// [`Hub::touch`] for this process's tails only: a hint from another replica.
    pub fn touch_here(&self, id: TaskId) {
        let feed = self
            .feeds
            .lock()
            .expect("the feeds lock is never poisoned")
            .get(&id)
            .and_then(Weak::upgrade);
        if let Some(feed) = feed {
            feed.touch();
        }
    }

    /// A client asked to cancel running task `id`: every control channel,
    /// here and (through the relay) on the other replicas, looks again.
    pub fn cancel_requested(&self, id: TaskId) {
        self.touch(id);
        self.cancel_requested_here();
        if let Some(relay) = self.relay.get() {
            relay.cancel_requested(id);
        }
    }

    /// [`Hub::cancel_requested`] for this process's control channels only
    /// (a cancel made on another replica, or hints that may have been missed).
    pub fn cancel_requested_here(&self) {
        wake(&self.controls);
    }

    /// Registers a runner's control channel, woken by `signal` on every cancel request.
    pub fn watch_cancels(self: &Arc<Self>, signal: &Signal) -> CancelWatch {
        register(&self.controls, signal);
        CancelWatch {
            hub: Arc::clone(self),
            signal: Arc::downgrade(signal),
        }
    }

    /// A task was created: its session's tails start following it.
    pub fn created(&self, task: &Task) {
        let watch = self
            .sessions
            .lock()
            .expect("the sessions lock is never poisoned")
            .get(&task.session_id)
            .and_then(Weak::upgrade);
        if let Some(watch) = watch {
            watch.created.fetch_add(1, Ordering::AcqRel);
            wake(&watch.followers);
        }
    }

    /// A task was created by another broker: every session tail looks for new tasks.
    pub fn created_elsewhere(&self) {
        self.created_elsewhere.fetch_add(1, Ordering::AcqRel);
        let watches: Vec<Arc<SessionWatch>> = self
            .sessions
            .lock()
            .expect("the sessions lock is never poisoned")
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for watch in watches {
            wake(&watch.followers);
        }
    }

    /// Follows task `id` for the tail woken by `signal`.
    pub fn follow(self: &Arc<Self>, id: TaskId, signal: &Signal) -> Following {
        let mut feeds = self.feeds.lock().expect("the feeds lock is never poisoned");
        let feed = feeds.get(&id).and_then(Weak::upgrade).unwrap_or_else(|| {
            let feed = Arc::new(Feed {
                id,
                hinted: AtomicU64::new(0),
                followers: Mutex::new(Vec::new()),
                cache: tokio::sync::Mutex::new(Cache::default()),
            });
            feeds.insert(id, Arc::downgrade(&feed));
            feed
        });
        drop(feeds);
        register(&feed.followers, signal);
        Following {
            hub: Arc::clone(self),
            feed,
            signal: Arc::downgrade(signal),
        }
    }

    /// Watches session `session_id` for new tasks, for the tail woken by `signal`.
    pub fn watch_session(self: &Arc<Self>, session_id: &str, signal: &Signal) -> SessionFollowing {
        let mut sessions = self.sessions.lock().expect("the sessions lock is never poisoned");
        let watch = sessions.get(session_id).and_then(Weak::upgrade).unwrap_or_else(|| {
            let watch = Arc::new(SessionWatch::default());
            sessions.insert(session_id.to_owned(), Arc::downgrade(&watch));
            watch
        });
        sessions.retain(|_, watch| watch.strong_count() > 0);
        drop(sessions);
        register(&watch.followers, signal);
        SessionFollowing {
            hub: Arc::clone(self),
            watch,
            signal: Arc::downgrade(signal),
        }
    }

    /// How many tasks have a feed (tails following them), for tests and metrics.
    pub fn followed_tasks(&self) -> usize {
        self.feeds
            .lock()
            .expect("the feeds lock is never poisoned")
            .values()
            .filter(|feed| feed.strong_count() > 0)
            .count()
    }
}

fn register(followers: &Mutex<Vec<Weak<Notify>>>, signal: &Signal) {
    let mut followers = followers.lock().expect("the followers lock is never poisoned");
    followers.retain(|follower| follower.strong_count() > 0);
    followers.push(Arc::downgrade(signal));
}

fn unregister(followers: &Mutex<Vec<Weak<Notify>>>, signal: &Weak<Notify>) {
    let mut followers = followers.lock().expect("the followers lock is never poisoned");
    followers.retain(|follower| follower.strong_count() > 0 && !follower.ptr_eq(signal));
}

fn wake(followers: &Mutex<Vec<Weak<Notify>>>) {
    let followers = followers.lock().expect("the followers lock is never poisoned");
    for follower in followers.iter().filter_map(Weak::upgrade) {
        follower.notify_one();
    }
}

/// One tail's hold on a task's feed; dropping it stops the wake-ups.
pub struct Following {
    hub: Arc<Hub>,
    feed: Arc<Feed>,
    signal: Weak<Notify>,
}

impl Following {
    pub fn task_id(&self) -> TaskId {
        self.feed.id
    }

    /// The task's state and the events after `cursor` (see [`View`]).
    pub async fn view<S: Store>(&self, store: &S, cursor: u64) -> Result<View, StoreError> {
        self.feed.view(store, cursor).await
    }

    /// After a wait of [`FALLBACK`] without a hint: the next view reads the store again.
    pub async fn expire(&self) {
        self.feed.expire().await;
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        unregister(&self.feed.followers, &self.signal);
        let mut feeds = self.hub.feeds.lock().expect("the feeds lock is never poisoned");
        // This hold and the map's weak one: the last tail is leaving.
        if Arc::strong_count(&self.feed) == 1 {
            feeds.remove(&self.feed.id);
        }
    }
}

/// A control channel's registration for cancel requests; dropping it ends the wake-ups.
pub struct CancelWatch {
    hub: Arc<Hub>,
    signal: Weak<Notify>,
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        unregister(&self.hub.controls, &self.signal);
    }
}

/// One tail's watch on a session's new tasks.
pub struct SessionFollowing {
    hub: Arc<Hub>,
    watch: Arc<SessionWatch>,
    signal: Weak<Notify>,
}

impl SessionFollowing {
    /// Changes whenever a task may have been created in the session since the last call.
    pub fn generation(&self) -> (u64, u64) {
        (
            self.watch.created.load(Ordering::Acquire),
            self.hub.created_elsewhere.load(Ordering::Acquire),
        )
    }
}

impl Drop for SessionFollowing {
    fn drop(&mut self) {
        unregister(&self.watch.followers, &self.signal);
    }
}

#[cfg(test)]
mod tests {
    use embark_core::event::{Log, LogLevel};
    use embark_core::wire::CreateTask;

    use super::*;
    use crate::auth::{TokenHash, TokenKind, mint};
    use crate::store::{EncodedEvent, SqliteStore};

    struct World {
        _dir: tempfile::TempDir,
        store: SqliteStore,
        hub: Arc<Hub>,
    }

    async fn world() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("broker.db")).await.expect("open");
        World {
            _dir: dir,
            store,
            hub: Arc::new(Hub::default()),
        }
    }

    fn new_task() -> CreateTask {
        crate::store::conformance::new_task("hub")
    }

    fn events(n: usize) -> Vec<EncodedEvent> {
        (0..n)
            .map(|i| EncodedEvent::new(&embark_core::NewEvent::new(Log::new(LogLevel::Info, format!("e{i}")))))
            .collect()
    }

    async fn running(world: &World) -> (TaskId, TokenHash) {
        let task = world.store.create_task(&new_task()).await.expect("create");
        let (_, runner) = mint(TokenKind::Runner);
        let runner = world.store.enroll_runner("r", None, &runner).await.expect("enroll");
        let (_, callback) = mint(TokenKind::Callback);
        world.store.claim_next(&runner.id, &callback).await.expect("claim");
        (task.id, callback)
    }

    #[tokio::test]
    async fn tails_of_a_task_share_one_read_and_see_every_event_once() {
        let world = world().await;
        let (id, callback) = running(&world).await;
        world
            .store
            .append_events(id, &callback, "1-0", &events(3))
            .await
            .expect("append");
        let (a, b) = (Signal::default(), Signal::default());
        let (fa, fb) = (world.hub.follow(id, &a), world.hub.follow(id, &b));
        assert_eq!(world.hub.followed_tasks(), 1, "one feed for both tails");

        // Before any live write: a replay from 0 comes from the store, and nothing is cached yet.
        let replay = fa.view(&world.store, 0).await.expect("view");
        assert_eq!(replay.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(replay.status.last_seq, 3);

        world
            .store
            .append_events(id, &callback, "1-1", &events(2))
            .await
            .expect("append");
        world.hub.touch(id);
        // Both tails are woken (a stored permit each) and see 4 and 5 from the cache.
        tokio::time::timeout(Duration::from_secs(5), a.notified())
            .await
            .expect("a woken");
        tokio::time::timeout(Duration::from_secs(5), b.notified())
            .await
            .expect("b woken");
        for following in [&fa, &fb] {
            let view = following.view(&world.store, 3).await.expect("view");
            assert_eq!(view.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
            assert_eq!(view.status.last_seq, 5);
        }
        let same = Arc::ptr_eq(
            &fa.view(&world.store, 3).await.expect("view").events[0],
            &fb.view(&world.store, 3).await.expect("view").events[0],
        );
        assert!(same, "one serialized copy for every tail");
        let event: embark_core::Event =
            serde_json::from_str(&fa.view(&world.store, 4).await.expect("view").events[0].json).expect("an Event");
        assert_eq!((event.task_id, event.seq), (id, 5));

        drop(fa);
        assert_eq!(world.hub.followed_tasks(), 1);
        drop(fb);
        assert_eq!(world.hub.followed_tasks(), 0, "the last tail takes the feed with it");
    }

    #[tokio::test]
    async fn a_tail_behind_the_cache_reads_the_store() {
        let world = world().await;
        let (id, callback) = running(&world).await;
        let signal = Signal::default();
        let following = world.hub.follow(id, &signal);
        following.view(&world.store, 0).await.expect("first view");
        // More than the cache keeps, appended while the tail does not look.
        let mut appended = 0;
        for batch in 0..(CACHE_EVENTS / 500 + 2) {
            world
                .store
                .append_events(id, &callback, &format!("1-{batch}"), &events(500))
                .await
                .expect("append");
            appended += 500;
            world.hub.touch(id);
        }
        let mut cursor = 0;
        while cursor < appended {
            let view = following.view(&world.store, cursor).await.expect("view");
            assert!(!view.events.is_empty(), "caught up at {cursor} of {appended}");
            for event in &view.events {
                assert_eq!(event.seq, cursor + 1, "gapless");
                cursor = event.seq;
            }
        }
        assert_eq!(cursor, appended);
    }

    #[tokio::test]
    async fn creations_wake_their_session_only() {
        let world = world().await;
        let (mine, other) = (Signal::default(), Signal::default());
        let watch = world.hub.watch_session("hub", &mine);
        let other_watch = world.hub.watch_session("elsewhere", &other);
        let before = watch.generation();
        let task = world.store.create_task(&new_task()).await.expect("create");
        world.hub.created(&task);
        assert_ne!(watch.generation(), before);
        tokio::time::timeout(Duration::from_secs(5), mine.notified())
            .await
            .expect("woken");
        let untouched = other_watch.generation();
        world.hub.created(&task);
        assert_eq!(other_watch.generation(), untouched);
        world.hub.created_elsewhere();
        assert_ne!(
            other_watch.generation(),
            untouched,
            "another replica's task: every session looks"
        );
    }
}
