//! The reporter's decisions, apart from channels, HTTP and the clock: which
//! events wait and which are dropped, when which batch is sent, what an
//! answer means, when reporting gives up. Fed the task's events, the
//! broker's answers and the current instant, it says what to do next
//! ([`Step`]); the worker in the parent module only carries that out. So
//! every rule is tested here with explicit instants.

use std::collections::VecDeque;
use std::sync::Arc;

use embark_client::ClientError;
use embark_core::event::LogLevel;
use embark_core::limits::{MAX_EVENT_PAYLOAD_BYTES, MAX_EVENTS_PER_APPEND};
use embark_core::text::error_chain;
use embark_core::wire::{AppendEvents, EventsAppended};
use embark_core::{NewEvent, TaskId};
use tokio::time::{Duration, Instant};

use super::{Delivery, ReportOptions};
use crate::events::log_event;
use crate::retry::{Backoff, is_transient};

/// How long the first event of a batch waits for company.
pub const LINGER: Duration = Duration::from_millis(100);
/// Serialized payload bytes per append request, so no request is huge.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Notes about refused batches per task: a broker that refuses every batch
/// (the notes' too) must not keep the reporter busy with notes.
pub const MAX_REJECTION_NOTES: u32 = 10;
/// Why a try that was still waiting for its answer at the deadline failed.
pub const NO_ANSWER: &str = "the broker did not answer before the deadline";

/// What to do next.
#[derive(Debug)]
pub enum Step {
    /// Start a try of this batch now, dropping any try still under way.
    Send(Arc<AppendEvents>),
    /// Nothing to do until something comes in (an event, an answer, a
    /// shutdown) or, when given, until that instant.
    Wait(Option<Instant>),
    /// Reporting is over; the outbox is spent.
    Done(Delivery),
}

/// An event with the size of its serialized payload, measured once.
struct Queued {
    event: NewEvent,
    size: usize,
}

impl Queued {
    fn new(event: NewEvent) -> Queued {
        let size = event.payload.json_len();
        Queued { event, size }
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
    fn next_id(&mut self) -> String {
        let id = format!("{}-{}", self.attempt, self.next);
        self.next += 1;
        id
    }
}

/// The reporting state of one attempt.
pub struct Outbox {
    task: TaskId,
    ids: BatchIds,
    options: ReportOptions,
    /// Events not yet in a batch, oldest first.
    queue: VecDeque<Queued>,
    /// Their payload bytes.
    queued_bytes: usize,
    /// When the queue last went from empty to non-empty.
    queued_since: Instant,
    /// Events dropped since the last note saying so.
    unnoted_drops: u64,
    /// Notes made about refused batches.
    rejection_notes: u32,
    delivery: Delivery,
    /// The batch being delivered: every try sends exactly this, batch id included.
    batch: Option<Arc<AppendEvents>>,
    /// A try of `batch` is under way.
    trying: bool,
    /// After a failed try: when to try again.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// Why the last try failed, for the give-up message.
    last_error: Option<String>,
    /// The broker refused the attempt: nothing more is sent.
    refused: bool,
    /// Set once the task ended (or was abandoned).
    deadline: Option<Instant>,
    shutting_down: bool,
}

impl Outbox {
    pub fn new(task: TaskId, attempt: u32, options: ReportOptions, now: Instant) -> Outbox {
        Outbox {
            task,
            ids: BatchIds { attempt, next: 0 },
            options,
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_since: now,
            unnoted_drops: 0,
            rejection_notes: 0,
            delivery: Delivery::default(),
            batch: None,
            trying: false,
            retry_at: None,
            backoff: options.patience.backoff(),
            last_error: None,
            refused: false,
            deadline: None,
            shutting_down: false,
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The task sent an event at `now`. One too large for the broker is
    /// replaced by a `log` event that says so, rather than failing its whole
    /// batch. Past the queue's bounds it is dropped and counted; the next one
    /// taken in is preceded by a note saying how many were dropped.
    pub fn push(&mut self, event: NewEvent, now: Instant) {
        let mut queued = Queued::new(event);
        if queued.size > MAX_EVENT_PAYLOAD_BYTES {
            let note = format!(
                "a {} event of {} bytes was too large to report",
                queued.event.payload.kind_name(),
                queued.size
            );
            queued = Queued::new(log_event(LogLevel::Error, &note));
        }
        if self.refused {
            self.delivery.undelivered += 1;
            return;
        }
        if self.queue.len() >= self.options.max_queued
            || self.queued_bytes.saturating_add(queued.size) > self.options.max_queued_bytes
        {
            self.unnoted_drops += 1;
            self.delivery.dropped += 1;
            self.delivery.undelivered += 1;
            return;
        }
        // The note takes the dropped events' place in the log, ahead of this
        // one; it may take the queue one past its bounds.
        self.note_drops(now);
        self.enqueue(queued, now);
    }

    /// The task ended at `now`: what waits is delivered by `deadline` (sooner
    /// when shutting down).
    pub fn finish(&mut self, deadline: Instant, now: Instant) {
        self.note_drops(now);
        let patience = self.options.patience;
        self.deadline = Some(if self.shutting_down {
            patience.events_on_shutdown(deadline, now)
        } else {
            deadline
        });
    }

    /// The task went away at `now` without finishing: a short last try.
    pub fn abandon(&mut self, now: Instant) {
        if self.deadline.is_none() {
            self.deadline = Some(now + self.options.patience.shutdown_events);
        }
    }

    /// Shutdown was requested at `now`: a deadline comes sooner, and a try
    /// under way (that may hang on a dead connection) is made again at once.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        let patience = self.options.patience;
        self.deadline = self.deadline.map(|d| patience.events_on_shutdown(d, now));
        self.trying = false;
    }

    /// The broker answered the try under way at `now`.
    pub fn answered(&mut self, answer: Result<EventsAppended, ClientError>, now: Instant) {
        self.trying = false;
        let count = self.batch.as_ref().map_or(0, |b| b.events.len()) as u64;
        match answer {
            Ok(_) => {
                self.delivery.delivered += count;
                self.batch = None;
                self.backoff.reset();
                self.last_error = None;
            }
            Err(error) if is_transient(&error) => {
                let pause = self.backoff.next_pause();
                let message = error_chain(&error);
                tracing::warn!(
                    task = %self.task,
                    "reporting {count} events failed, retrying in {pause:?} ({} more waiting): {message}",
                    self.queue.len()
                );
                self.last_error = Some(message);
                self.retry_at = Some(now + pause);
            }
            Err(error) if refuses_only_the_batch(&error) => {
                if let Some(batch) = self.batch.take() {
                    self.reject(&batch, &error, now);
                }
            }
            Err(error) => {
                let message = error_chain(&error);
                tracing::error!(task = %self.task, "the broker refused {count} events; reporting stops: {message}");
                self.delivery.error = Some(message);
                self.delivery.undelivered += count + self.queue.len() as u64;
                self.clear_queue();
                self.refused = true;
                self.batch = None;
            }
        }
    }

    /// What to do at `now`.
    pub fn next(&mut self, now: Instant) -> Step {
        if let Some(deadline) = self.deadline {
            if self.batch.is_none() && self.queue.is_empty() {
                return Step::Done(std::mem::take(&mut self.delivery));
            }
            // No try starts past the deadline, and one under way is cut off.
            if now >= deadline {
                if std::mem::take(&mut self.trying) && self.last_error.is_none() {
                    self.last_error = Some(NO_ANSWER.to_owned());
                }
                self.give_up();
                return Step::Done(std::mem::take(&mut self.delivery));
            }
        }
        if self.trying {
            return Step::Wait(self.deadline);
        }
        let send_at = match (self.retry_at, &self.batch) {
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
            return Step::Wait(send_at);
        }
        self.retry_at = None;
        let batch = match &self.batch {
            Some(batch) => Arc::clone(batch),
            None => {
                let batch = Arc::new(AppendEvents {
                    batch_id: self.ids.next_id(),
                    events: self.take_batch(),
                });
                self.batch = Some(Arc::clone(&batch));
                batch
            }
        };
        self.trying = true;
        Step::Send(batch)
    }

    fn enqueue(&mut self, event: Queued, now: Instant) {
        if self.refused {
            // Nothing more is sent; it is lost with the rest.
            self.delivery.undelivered += 1;
            return;
        }
        if self.queue.is_empty() {
            self.queued_since = now;
        }
        self.queued_bytes += event.size;
        self.queue.push_back(event);
    }

    fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
    }

    /// Queues a note about the events dropped since the last one, if any.
    fn note_drops(&mut self, now: Instant) {
        if self.unnoted_drops == 0 {
            return;
        }
        let dropped = std::mem::take(&mut self.unnoted_drops);
        tracing::warn!(task = %self.task, "dropped {dropped} events while the broker was unreachable");
        let note = Queued::new(log_event(
            LogLevel::Warning,
            &format!(
                "{dropped} events were dropped here: the broker was unreachable and the queue of waiting events was full"
            ),
        ));
        self.enqueue(note, now);
    }

    /// The broker refused `batch` for its content: its events are lost, a
    /// note takes their place, and the rest goes on.
    fn reject(&mut self, batch: &AppendEvents, error: &ClientError, now: Instant) {
        let count = batch.events.len() as u64;
        self.delivery.undelivered += count;
        self.delivery.rejected += count;
        let message = error_chain(error);
        tracing::error!(task = %self.task, "the broker refused a batch of {count} events, which are dropped: {message}");
        if self.rejection_notes < MAX_REJECTION_NOTES {
            self.rejection_notes += 1;
            let note = Queued::new(log_event(
                LogLevel::Error,
                &format!("{count} events were dropped here: the broker refused them: {message}"),
            ));
            if self.queue.is_empty() {
                self.queued_since = now;
            }
            self.queued_bytes += note.size;
            self.queue.push_front(note);
        }
    }

    /// Stops at the deadline: everything still here is lost, and said so.
    fn give_up(&mut self) {
        let lost = self.batch.take().map_or(0, |b| b.events.len()) + self.queue.len();
        self.clear_queue();
        self.delivery.undelivered += lost as u64;
        let error = match &self.last_error {
            Some(last) => format!("gave up at the deadline; last error: {last}"),
            None => "the deadline for reporting passed".to_owned(),
        };
        tracing::error!(task = %self.task, "{lost} events of the task were never delivered: {error}");
        self.delivery.error = Some(error);
    }

    /// The next batch from the front of the queue.
    fn take_batch(&mut self) -> Vec<NewEvent> {
        let (events, bytes) = take_batch(&mut self.queue, MAX_EVENTS_PER_APPEND, MAX_BATCH_BYTES);
        self.queued_bytes = self.queued_bytes.saturating_sub(bytes);
        events
    }
}

/// A refusal of the request's own content (malformed, too large, not
/// valid) drops that batch only. A refusal of the attempt itself (401, 404,
/// 409) or anything unforeseen stops reporting instead.
fn refuses_only_the_batch(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Api {
            status: 400 | 413 | 422,
            ..
        } | ClientError::Unexpected {
            status: 400 | 413 | 422,
            ..
        }
    )
}

/// Takes events from the front: at most `max_events`, and no more payload
/// bytes than `max_bytes` (but always at least one event). Returns them and
/// their payload bytes.
fn take_batch(pending: &mut VecDeque<Queued>, max_events: usize, max_bytes: usize) -> (Vec<NewEvent>, usize) {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    while let Some(next) = pending.front() {
        if batch.len() == max_events || (!batch.is_empty() && bytes.saturating_add(next.size) > max_bytes) {
            break;
        }
        bytes = bytes.saturating_add(next.size);
        batch.extend(pending.pop_front().map(|q| q.event));
    }
    (batch, bytes)
}

#[cfg(test)]
mod tests;
