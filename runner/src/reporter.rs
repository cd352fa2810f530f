//! Sends a task's events to the broker in order, in batches, with the
//! attempt's callback token. Sending never blocks the task.
//!
//! A broker that is away for a while loses nothing: a batch that fails for
//! a passing reason stays pending and is retried, with capped backoff, for
//! as long as the task runs, while later events queue up behind it. Every
//! retry of a batch carries the same batch id, so when the broker stored a
//! batch but its answer was lost, the retry is answered with the original
//! seqs instead of being stored twice. Memory stays bounded: beyond
//! [`ReportOptions::max_queued`] waiting events, new ones are dropped and
//! counted, and a `log` event in their place says how many.
//!
//! When the task ends, [`Reporter::finish`] keeps trying until a deadline
//! (brought forward by a shutdown) and returns what could not be delivered,
//! so the task's result can say so.

use std::collections::VecDeque;

use embark_core::client::BrokerClient;
use embark_core::limits::{MAX_EVENT_PAYLOAD_BYTES, MAX_EVENTS_PER_APPEND};
use embark_core::wire::{AppendEvents, Claim};
use embark_core::{NewEvent, TaskId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant, sleep_until};

use crate::events::log_event;
use crate::retry::{Backoff, Patience, is_transient};
use crate::shutdown;
use embark_core::text::error_chain;

/// How long the first event of a batch waits for company.
const LINGER: Duration = Duration::from_millis(100);
/// Serialized payload bytes per append request, so no request is huge.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How the reporter copes with a broker that does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportOptions {
    pub patience: Patience,
    /// Events waiting behind an undelivered batch before new ones are dropped.
    pub max_queued: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            patience: Patience::REPORT,
            max_queued: 10_000,
        }
    }
}

/// What became of the reported events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Events the broker stored (the reporter's own notes included).
    pub delivered: u64,
    /// Events it never got: dropped, refused, or still waiting at the deadline.
    pub undelivered: u64,
    /// Of those, the ones dropped because too many were waiting.
    pub dropped: u64,
    /// Why reporting stopped early, when it did.
    pub error: Option<String>,
}

impl Delivery {
    /// A sentence for the task's result, when events were lost.
    pub fn problem(&self) -> Option<String> {
        let total = self.delivered + self.undelivered;
        match &self.error {
            Some(error) => Some(format!(
                "{} of {total} events could not be reported to the broker: {error}",
                self.undelivered
            )),
            None if self.undelivered > 0 => Some(format!(
                "{} of {total} events were dropped while the broker was unreachable",
                self.undelivered
            )),
            None => None,
        }
    }
}

enum Message {
    Event(NewEvent),
    /// The task ended: deliver the rest by this deadline.
    Finish(Instant),
}

pub struct Reporter {
    tx: mpsc::UnboundedSender<Message>,
    worker: JoinHandle<Delivery>,
}

impl Reporter {
    /// Starts reporting for the claimed attempt.
    pub fn start(
        client: BrokerClient,
        claim: &Claim,
        options: ReportOptions,
        shutdown: watch::Receiver<bool>,
    ) -> Reporter {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Worker {
            client,
            token: claim.callback_token.clone(),
            task: claim.task.id,
            ids: BatchIds::new(claim.attempt),
            options,
            queue: VecDeque::new(),
            queued_since: Instant::now(),
            unnoted_drops: 0,
            delivery: Delivery::default(),
            refused: false,
            deadline: None,
        };
        let worker = tokio::spawn(worker.run(rx, shutdown));
        Reporter { tx, worker }
    }

    /// Queues one event. An event too large for the broker is replaced by a
    /// `log` event that says so, rather than failing its whole batch.
    pub fn send(&self, event: NewEvent) {
        let size = serde_json::to_vec(&event.payload)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        let event = if size > MAX_EVENT_PAYLOAD_BYTES {
            log_event(
                "error",
                &format!(
                    "a {} event of {size} bytes was too large to report",
                    event.kind.as_str()
                ),
            )
        } else {
            event
        };
        // The worker only stops after `finish`, so this cannot fail earlier.
        let _ = self.tx.send(Message::Event(event));
    }

    /// Delivers everything still waiting, trying until `deadline` (sooner on
    /// shutdown), and reports what was delivered.
    pub async fn finish(self, deadline: Instant) -> Delivery {
        let _ = self.tx.send(Message::Finish(deadline));
        drop(self.tx);
        match self.worker.await {
            Ok(delivery) => delivery,
            Err(e) => Delivery {
                error: Some(format!("the event reporter stopped: {e}")),
                ..Delivery::default()
            },
        }
    }
}

/// Batch ids `<attempt>-<n>`, `n` counting from 0: unique per task, since
/// each attempt of a task has its own number, and valid on the wire.
#[derive(Debug)]
struct BatchIds {
    attempt: u32,
    next: u64,
}

impl BatchIds {
    fn new(attempt: u32) -> Self {
        Self { attempt, next: 0 }
    }

    fn next_id(&mut self) -> String {
        let id = format!("{}-{}", self.attempt, self.next);
        self.next += 1;
        id
    }
}

struct Worker {
    client: BrokerClient,
    token: String,
    task: TaskId,
    ids: BatchIds,
    options: ReportOptions,
    /// Events not yet in a batch, oldest first.
    queue: VecDeque<NewEvent>,
    /// When the queue last went from empty to non-empty.
    queued_since: Instant,
    /// Events dropped since the last note saying so.
    unnoted_drops: u64,
    delivery: Delivery,
    /// The broker refused a batch (4xx): nothing more is sent.
    refused: bool,
    /// Set once the task ended.
    deadline: Option<Instant>,
}

/// What the worker waits for between sends.
enum Wake {
    Message(Option<Message>),
    Time,
    Shutdown,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>, mut shutdown: watch::Receiver<bool>) -> Delivery {
        let patience = self.options.patience;
        let mut backoff = Backoff::new(&patience);
        // The batch being delivered: every try sends exactly this, batch id included.
        let mut batch: Option<AppendEvents> = None;
        // After a failed try: when to try again.
        let mut retry_at: Option<Instant> = None;
        let mut last_error = String::new();
        let mut shutting_down = false;
        let mut rx_open = true;
        loop {
            let now = Instant::now();
            if let Some(deadline) = self.deadline {
                if batch.is_none() && self.queue.is_empty() {
                    break;
                }
                if now >= deadline && retry_at.is_some() {
                    self.give_up(batch.take(), &last_error);
                    break;
                }
            }
            let send_at = match (retry_at, &batch) {
                (Some(at), _) => Some(at),
                (None, Some(_)) => Some(now),
                (None, None) if self.queue.is_empty() => None,
                (None, None) if self.deadline.is_some() || self.queue.len() >= MAX_EVENTS_PER_APPEND => Some(now),
                (None, None) => Some(self.queued_since + LINGER),
            };
            let send_at = match (send_at, self.deadline) {
                (Some(at), Some(deadline)) => Some(at.min(deadline)),
                (at, _) => at,
            };
            if send_at.is_none_or(|at| at > now) {
                let wake = tokio::select! {
                    message = rx.recv(), if rx_open => Wake::Message(message),
                    () = sleep_until(send_at.unwrap_or(now)), if send_at.is_some() => Wake::Time,
                    () = shutdown::requested(&mut shutdown), if !shutting_down => Wake::Shutdown,
                    // Unreachable: with the channel closed there is always a deadline.
                    else => break,
                };
                match wake {
                    Wake::Message(Some(message)) => self.take(message),
                    Wake::Message(None) => {
                        rx_open = false;
                        // Dropped without `finish` (the task was abandoned): a short last try.
                        if self.deadline.is_none() {
                            self.deadline = Some(patience.deadline(true));
                        }
                    }
                    Wake::Time => retry_at = None,
                    Wake::Shutdown => {
                        shutting_down = true;
                        self.deadline = self.deadline.map(|d| patience.on_shutdown(d));
                    }
                }
                continue;
            }
            retry_at = None;
            // Take in whatever arrived, so a new batch is as full as it can be.
            while let Ok(message) = rx.try_recv() {
                self.take(message);
            }
            if self.refused {
                // Only the drop note can get here; it is lost with the rest.
                self.delivery.undelivered += self.queue.len() as u64;
                self.queue.clear();
                continue;
            }
            let batch_ref = batch.get_or_insert_with(|| AppendEvents {
                batch_id: self.ids.next_id(),
                events: take_batch(&mut self.queue, MAX_EVENTS_PER_APPEND, MAX_BATCH_BYTES),
            });
            let count = batch_ref.events.len() as u64;
            let cutoff = self.deadline;
            let sent = tokio::select! {
                result = self.client.append_events(&self.token, self.task, batch_ref) => Some(result),
                // Once the task ended, a hanging try is cut off at the deadline…
                () = sleep_until(cutoff.unwrap_or(now)), if cutoff.is_some() => None,
                // …or restarted under a shutdown's shorter one.
                () = shutdown::requested(&mut shutdown), if !shutting_down && cutoff.is_some() => {
                    shutting_down = true;
                    self.deadline = self.deadline.map(|d| patience.on_shutdown(d));
                    continue;
                }
            };
            match sent {
                Some(Ok(_)) => {
                    self.delivery.delivered += count;
                    batch = None;
                    backoff.reset();
                }
                Some(Err(error)) if !is_transient(&error) => {
                    tracing::error!(task = %self.task, "the broker refused {count} events; reporting stops: {}", error_chain(&error));
                    self.delivery.error = Some(error_chain(&error));
                    self.delivery.undelivered += count + self.queue.len() as u64;
                    self.queue.clear();
                    self.refused = true;
                    batch = None;
                }
                Some(Err(error)) => {
                    let pause = backoff.next_pause();
                    last_error = error_chain(&error);
                    tracing::warn!(
                        task = %self.task,
                        "reporting {count} events failed, retrying in {pause:?} ({} more waiting): {last_error}",
                        self.queue.len()
                    );
                    retry_at = Some(Instant::now() + pause);
                }
                None => {
                    last_error = "the broker did not answer before the deadline".to_owned();
                    retry_at = Some(Instant::now());
                }
            }
        }
        self.delivery
    }

    /// Takes in one message from the task.
    fn take(&mut self, message: Message) {
        match message {
            Message::Event(event) => self.queue_event(event),
            Message::Finish(deadline) => {
                if self.unnoted_drops > 0 {
                    let note = self.drop_note();
                    self.push(note);
                }
                self.deadline = Some(deadline);
            }
        }
    }

    fn queue_event(&mut self, event: NewEvent) {
        if self.refused {
            self.delivery.undelivered += 1;
            return;
        }
        if self.queue.len() >= self.options.max_queued {
            self.unnoted_drops += 1;
            self.delivery.dropped += 1;
            self.delivery.undelivered += 1;
            return;
        }
        if self.unnoted_drops > 0 {
            // The note takes the dropped events' place in the log, ahead of
            // this one; it may take the queue one past its bound.
            let note = self.drop_note();
            self.push(note);
        }
        self.push(event);
    }

    fn push(&mut self, event: NewEvent) {
        if self.queue.is_empty() {
            self.queued_since = Instant::now();
        }
        self.queue.push_back(event);
    }

    fn drop_note(&mut self) -> NewEvent {
        let dropped = std::mem::take(&mut self.unnoted_drops);
        tracing::warn!(task = %self.task, "dropped {dropped} events while the broker was unreachable");
        log_event(
            "warning",
            &format!(
                "{dropped} events were dropped here: the broker was unreachable and {} events were already waiting",
                self.options.max_queued
            ),
        )
    }

    /// Stops at the deadline: everything still here is lost, and said so.
    fn give_up(&mut self, batch: Option<AppendEvents>, last_error: &str) {
        let lost = batch.map_or(0, |b| b.events.len()) + self.queue.len();
        self.queue.clear();
        self.delivery.undelivered += lost as u64;
        let error = if last_error.is_empty() {
            "the deadline for reporting passed".to_owned()
        } else {
            format!("gave up at the deadline; last error: {last_error}")
        };
        tracing::error!(task = %self.task, "{lost} events of the task were never delivered: {error}");
        self.delivery.error = Some(error);
    }
}

/// Takes events from the front: at most `max_events`, and no more payload
/// bytes than `max_bytes` (but always at least one event).
fn take_batch(pending: &mut VecDeque<NewEvent>, max_events: usize, max_bytes: usize) -> Vec<NewEvent> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(next) = pending.front() {
        let size = serde_json::to_vec(&next.payload).map(|v| v.len()).unwrap_or(0);
        if batch.len() == max_events || (!batch.is_empty() && bytes + size > max_bytes) {
            break;
        }
        bytes += size;
        batch.extend(pending.pop_front());
    }
    batch
}

#[cfg(test)]
mod tests {
    use embark_core::EventKind;
    use serde_json::json;

    use super::*;

    fn text_event(len: usize) -> NewEvent {
        NewEvent {
            kind: EventKind::AssistantDelta,
            payload: json!({ "text": "x".repeat(len) }),
        }
    }

    #[test]
    fn batches_respect_count_and_bytes_in_order() {
        let mut pending: VecDeque<NewEvent> = (0..7).map(|i| text_event(i * 100)).collect();
        let first = take_batch(&mut pending, 3, usize::MAX);
        assert_eq!(first.len(), 3);
        assert_eq!(first[0], text_event(0));
        // Payload sizes are 11 + len bytes: 311 + 411 = 722 fits in 800, 511 more does not.
        let second = take_batch(&mut pending, 100, 800);
        assert_eq!(second, vec![text_event(300), text_event(400)]);
        // One oversized event still goes alone rather than blocking forever.
        let third = take_batch(&mut pending, 100, 10);
        assert_eq!(third, vec![text_event(500)]);
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn batch_ids_are_per_attempt_distinct_and_valid() {
        let mut ids = BatchIds::new(3);
        let taken: Vec<String> = (0..3).map(|_| ids.next_id()).collect();
        assert_eq!(taken, ["3-0", "3-1", "3-2"]);
        assert!(taken.iter().all(|id| embark_core::wire::is_batch_id(id)));
        let mut largest = BatchIds {
            attempt: u32::MAX,
            next: u64::MAX - 1,
        };
        assert!(
            embark_core::wire::is_batch_id(&largest.next_id()),
            "even the longest id fits"
        );
    }

    #[test]
    fn a_problem_sentence_counts_lost_events() {
        let delivery = Delivery {
            delivered: 3,
            undelivered: 2,
            dropped: 0,
            error: Some("broker gone".into()),
        };
        assert_eq!(
            delivery.problem().as_deref(),
            Some("2 of 5 events could not be reported to the broker: broker gone")
        );
        let dropped = Delivery {
            delivered: 10,
            undelivered: 4,
            dropped: 4,
            error: None,
        };
        assert_eq!(
            dropped.problem().as_deref(),
            Some("4 of 14 events were dropped while the broker was unreachable")
        );
        assert_eq!(Delivery::default().problem(), None);
    }
}
