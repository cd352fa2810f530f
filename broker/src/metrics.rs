//! The broker's Prometheus metrics, in the text exposition format.
//!
//! Counters and gauges are atomics bumped where things happen (handlers,
//! the connection layer, the live tails, the reaper); tasks by state are
//! counted in the database at scrape time, so every replica reports the
//! same, shared numbers. No metrics library: the format is a few lines of
//! text, and the handful of series here does not need one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embark_core::task::TaskState;

/// Upper bounds of the claim-wait histogram, in seconds.
const WAIT_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0];

/// Every series the broker exports; one per process, shared through `App`.
#[derive(Debug, Default)]
pub struct Metrics {
    events_appended: AtomicU64,
    tasks_created: AtomicU64,
    claims: Histogram,
    live_clients: AtomicI64,
    live_closed: Mutex<BTreeMap<&'static str, u64>>,
    connections: AtomicI64,
    connections_shed: AtomicU64,
    connections_refused: AtomicU64,
    rate_limited: AtomicU64,
    reaper_actions: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn events_appended(&self, count: usize) {
        self.events_appended.fetch_add(count as u64, Ordering::Relaxed);
    }

    pub fn task_created(&self) {
        self.tasks_created.fetch_add(1, Ordering::Relaxed);
    }

    /// A task was claimed after waiting `queued` since it was created.
    pub fn task_claimed(&self, queued: Duration) {
        self.claims.observe(queued.as_secs_f64());
    }

    /// One more live tail; the count drops when the guard does.
    pub fn live_client(&self) -> Gauge<'_> {
        Gauge::up(&self.live_clients)
    }

    /// A live tail ended, for `why` (a `LiveClose` name, or `gone` when the client left).
    pub fn live_closed(&self, why: &'static str) {
        bump(&self.live_closed, why);
    }

    /// One more open connection; the count drops when the guard does (a
    /// connection that became a WebSocket stays counted until it closes).
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(self))
    }

    /// An idle connection was closed to make room for a new one.
    pub fn connection_shed(&self) {
        self.connections_shed.fetch_add(1, Ordering::Relaxed);
    }

    /// A new connection was answered 503: the limit was reached and none was idle.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The reaper did `action` to one task (e.g. `stale`, `failed_stale_timeout`,
    /// `requeued`, `cancelled_client_abandoned`).
    pub fn reaper_action(&self, action: &'static str) {
        bump(&self.reaper_actions, action);
    }

    /// The exposition text, with `tasks` (every state's count, from the database).
    pub fn render(&self, tasks: &[(TaskState, u64)]) -> String {
        let mut out = String::with_capacity(2048);
        family(&mut out, "embark_tasks", "gauge", "Tasks by state, in the database.");
        for state in TaskState::ALL {
            let count = tasks.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "embark_tasks{{state=\"{state}\"}} {count}");
        }
        counter(
            &mut out,
            "embark_tasks_created_total",
            "Tasks created through this broker.",
            self.tasks_created.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "embark_events_appended_total",
            "Events in the appends this broker accepted (a retried batch counts again).",
            self.events_appended.load(Ordering::Relaxed),
        );
        self.claims.render(
            &mut out,
            "embark_claim_wait_seconds",
            "How long a task waited, from its creation until a runner claimed it through this broker.",
        );
        family(
            &mut out,
            "embark_live_clients",
            "gauge",
            "Open live tails and runner control channels (WebSockets).",
        );
        let _ = writeln!(out, "embark_live_clients {}", self.live_clients.load(Ordering::Relaxed));
        labelled(
            &mut out,
            "embark_live_closed_total",
            "Live tails ended, by why.",
            "reason",
            &self.live_closed,
        );
        family(&mut out, "embark_connections", "gauge", "Open HTTP connections.");
        let _ = writeln!(out, "embark_connections {}", self.connections.load(Ordering::Relaxed));
        counter(
            &mut out,
            "embark_connections_shed_total",
            "Idle connections closed to make room at the connection limit.",
            self.connections_shed.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "embark_connections_refused_total",
            "Connections answered 503 at the connection limit (none was idle).",
            self.connections_refused.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "embark_rate_limited_total",
            "Requests answered 429 by the per-credential rate limit.",
            self.rate_limited.load(Ordering::Relaxed),
        );
        labelled(
            &mut out,
            "embark_reaper_actions_total",
            "What the reaper did to tasks, by action.",
            "action",
            &self.reaper_actions,
        );
        out
    }
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *map.lock()
        .expect("a metrics lock is never poisoned")
        .entry(key)
        .or_default() += 1;
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn labelled(out: &mut String, name: &str, help: &str, label: &str, map: &Mutex<BTreeMap<&'static str, u64>>) {
    family(out, name, "counter", help);
    for (key, value) in map.lock().expect("a metrics lock is never poisoned").iter() {
        let _ = writeln!(out, "{name}{{{label}=\"{key}\"}} {value}");
    }
}

/// One open connection in `embark_connections`, until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A gauge held up while its guard lives.
pub struct Gauge<'a>(&'a AtomicI64);

impl<'a> Gauge<'a> {
    fn up(gauge: &'a AtomicI64) -> Gauge<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A fixed-bucket histogram ([`WAIT_BUCKETS`]).
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; WAIT_BUCKETS.len()],
    count: AtomicU64,
    /// The sum in microseconds, so it stays an integer atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter().zip(WAIT_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6).max(0.0) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, "histogram", help);
        for (bucket, bound) in self.buckets.iter().zip(WAIT_BUCKETS) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_lists_every_series() {
        let metrics = Metrics::default();
        metrics.events_appended(3);
        metrics.task_claimed(Duration::from_millis(20));
        metrics.reaper_action("stale");
        metrics.reaper_action("stale");
        let live = metrics.live_client();
        let text = metrics.render(&[(TaskState::Queued, 2)]);
        assert!(text.contains("embark_tasks{state=\"queued\"} 2\n"), "{text}");
        assert!(text.contains("embark_tasks{state=\"running\"} 0\n"), "{text}");
        assert!(text.contains("embark_events_appended_total 3\n"), "{text}");
        assert!(
            text.contains("embark_claim_wait_seconds_bucket{le=\"0.01\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("embark_claim_wait_seconds_bucket{le=\"0.025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("embark_claim_wait_seconds_count 1\n"), "{text}");
        assert!(text.contains("embark_live_clients 1\n"), "{text}");
        assert!(
            text.contains("embark_reaper_actions_total{action=\"stale\"} 2\n"),
            "{text}"
        );
        drop(live);
        assert!(metrics.render(&[]).contains("embark_live_clients 0\n"));
    }
}
