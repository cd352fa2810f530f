//! Sends a task's events to the broker in order, in batches, with the
//! attempt's callback token. Sending never blocks the task.
//!
//! A broker that is away for a while loses nothing: a batch that fails for
//! a passing reason stays pending and is retried, with capped backoff, for
//! as long as the task runs, while later events queue up behind it. Every
//! retry of a batch carries the same batch id, so when the broker stored a
//! batch but its answer was lost, the retry is answered with the original
//! seqs instead of being stored twice. Memory stays bounded: beyond
//! [`ReportOptions::max_queued`] waiting events or
//! [`ReportOptions::max_queued_bytes`] of their payloads, new ones are
//! dropped and counted, and a `log` event in their place says how many.
//! Events are taken off the channel even while a request is under way, so
//! the bound holds during a hanging request too.
//!
//! A batch the broker refuses for its own content (400, 413, 422) is
//! dropped, counted, and noted in a `log` event; reporting goes on. A
//! refusal of the attempt itself (401, 404, 409, …) stops reporting.
//!
//! When the task ends, [`Reporter::finish`] keeps trying until a deadline
//! (brought forward by a shutdown) and returns what could not be delivered,
//! so the task's result can say so.

use std::collections::VecDeque;
use std::future::Future;

use embark_client::{BrokerClient, ClientError};
use embark_core::event::LogLevel;
use embark_core::limits::{MAX_EVENT_PAYLOAD_BYTES, MAX_EVENTS_PER_APPEND};
use embark_core::text::error_chain;
use embark_core::wire::{AppendEvents, Claim, EventsAppended};
use embark_core::{NewEvent, TaskId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant, sleep_until};

use crate::events::log_event;
use crate::retry::{Patience, is_transient};
use crate::shutdown;

/// How long the first event of a batch waits for company.
const LINGER: Duration = Duration::from_millis(100);
/// Serialized payload bytes per append request, so no request is huge.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Notes about refused batches per task: a broker that refuses every batch
/// (the notes' too) must not keep the reporter busy with notes.
const MAX_REJECTION_NOTES: u32 = 10;

/// How the reporter copes with a broker that does not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportOptions {
    pub patience: Patience,
    /// Events waiting behind an undelivered batch before new ones are dropped.
    pub max_queued: usize,
    /// Serialized payload bytes of those events before new ones are dropped.
    pub max_queued_bytes: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            patience: Patience::REPORT,
            max_queued: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
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
    /// Of those, the ones in batches the broker refused for their content.
    pub rejected: u64,
    /// Why reporting stopped early, when it did.
    pub error: Option<String>,
}

impl Delivery {
    /// A sentence for the task's result, when events were lost.
    pub fn problem(&self) -> Option<String> {
        let mut causes = Vec::new();
        if self.dropped > 0 {
            causes.push(format!(
                "{} were dropped while the broker was unreachable",
                self.dropped
            ));
        }
        if self.rejected > 0 {
            causes.push(format!("{} were refused by the broker", self.rejected));
        }
        causes.extend(self.error.clone());
        if causes.is_empty() && self.undelivered == 0 {
            return None;
        }
        Some(format!(
            "{} of {} events could not be reported to the broker: {}",
            self.undelivered,
            self.delivered + self.undelivered,
            if causes.is_empty() {
                "reasons unknown".to_owned()
            } else {
                causes.join("; ")
            }
        ))
    }
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

enum Message {
    Event(Queued),
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
            task: claim.task.id,
            ids: BatchIds::new(claim.attempt),
            options,
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_since: Instant::now(),
            unnoted_drops: 0,
            rejection_notes: 0,
            delivery: Delivery::default(),
            refused: false,
            deadline: None,
            shutting_down: false,
            rx_open: true,
        };
        let link = Link {
            client,
            token: claim.callback_token.clone(),
        };
        let worker = tokio::spawn(worker.run(link, rx, shutdown));
        Reporter { tx, worker }
    }

    /// Queues one event. An event too large for the broker is replaced by a
    /// `log` event that says so, rather than failing its whole batch.
    pub fn send(&self, event: NewEvent) {
        let queued = Queued::new(event);
        let queued = if queued.size > MAX_EVENT_PAYLOAD_BYTES {
            Queued::new(log_event(
                LogLevel::Error,
                &format!(
                    "a {} event of {} bytes was too large to report",
                    queued.event.payload.kind_name(),
                    queued.size
                ),
            ))
        } else {
            queued
        };
        // The worker only stops after `finish`, so this cannot fail earlier.
        let _ = self.tx.send(Message::Event(queued));
    }

    /// Delivers everything still waiting, trying until `deadline` (sooner on
    /// shutdown, see [`Patience::events_on_shutdown`]), and reports what was
    /// delivered.
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

/// How the worker reaches the broker (kept apart from its state, so a
/// request can be under way while the state takes in new events).
struct Link {
    client: BrokerClient,
    token: String,
}

struct Worker {
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
    /// The broker refused the attempt: nothing more is sent.
    refused: bool,
    /// Set once the task ended.
    deadline: Option<Instant>,
    shutting_down: bool,
    /// The task may still send events.
    rx_open: bool,
}

/// What the worker waits for between sends.
enum Wake {
    Message(Option<Message>),
    Time,
    Shutdown,
}

/// How one try of a batch ended.
enum Try {
    Answered(Result<EventsAppended, ClientError>),
    /// Still no answer at the deadline.
    CutOff,
    /// Shutdown was requested: try again at once (under its shorter deadline).
    Restart,
}

/// How a refusal is handled.
fn refuses_only_the_batch(error: &ClientError) -> bool {
    // The request's own content: malformed, too large, or not valid. A
    // refusal of the attempt itself (401, 404, 409) or anything unforeseen
    // stops reporting instead.
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

impl Worker {
    async fn run(
        mut self,
        link: Link,
        mut rx: mpsc::UnboundedReceiver<Message>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Delivery {
        let mut backoff = self.options.patience.backoff();
        // The batch being delivered: every try sends exactly this, batch id included.
        let mut batch: Option<AppendEvents> = None;
        // After a failed try: when to try again.
        let mut retry_at: Option<Instant> = None;
        let mut last_error = String::new();
        loop {
            let now = Instant::now();
            if let Some(deadline) = self.deadline {
                if batch.is_none() && self.queue.is_empty() {
                    break;
                }
                // Whatever woke us, no try starts past the deadline.
                if now >= deadline {
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
                    message = rx.recv(), if self.rx_open => Wake::Message(message),
                    () = sleep_until(send_at.unwrap_or(now)), if send_at.is_some() => Wake::Time,
                    () = shutdown::requested(&mut shutdown), if !self.shutting_down => Wake::Shutdown,
                    // Unreachable: with the channel closed there is always a deadline.
                    else => break,
                };
                match wake {
                    Wake::Message(message) => self.receive(message),
                    Wake::Time => retry_at = None,
                    Wake::Shutdown => self.on_shutdown(),
                }
                continue;
            }
            retry_at = None;
            // Take in whatever arrived, so a new batch is as full as it can be.
            while let Ok(message) = rx.try_recv() {
                self.take(message);
            }
            if self.refused {
                // Only a note can get here; it is lost with the rest.
                self.delivery.undelivered += self.queue.len() as u64;
                self.clear_queue();
                continue;
            }
            let batch_ref = batch.get_or_insert_with(|| AppendEvents {
                batch_id: self.ids.next_id(),
                events: self.take_batch(),
            });
            let count = batch_ref.events.len() as u64;
            let answer = {
                let request = link.client.append_events(&link.token, self.task, batch_ref);
                tokio::pin!(request);
                self.wait_for_answer(request, &mut rx, &mut shutdown, now).await
            };
            match answer {
                Try::Answered(Ok(_)) => {
                    self.delivery.delivered += count;
                    batch = None;
                    backoff.reset();
                    last_error.clear();
                }
                Try::Answered(Err(error)) if is_transient(&error) => {
                    let pause = backoff.next_pause();
                    last_error = error_chain(&error);
                    tracing::warn!(
                        task = %self.task,
                        "reporting {count} events failed, retrying in {pause:?} ({} more waiting): {last_error}",
                        self.queue.len()
                    );
                    retry_at = Some(Instant::now() + pause);
                }
                Try::Answered(Err(error)) if refuses_only_the_batch(&error) => {
                    if let Some(refused) = batch.take() {
                        self.reject(refused, &error);
                    }
                }
                Try::Answered(Err(error)) => {
                    tracing::error!(task = %self.task, "the broker refused {count} events; reporting stops: {}", error_chain(&error));
                    self.delivery.error = Some(error_chain(&error));
                    self.delivery.undelivered += count + self.queue.len() as u64;
                    self.clear_queue();
                    self.refused = true;
                    batch = None;
                }
                Try::CutOff => {
                    // An earlier, real error says more than the cut-off.
                    if last_error.is_empty() {
                        "the broker did not answer before the deadline".clone_into(&mut last_error);
                    }
                }
                Try::Restart => {}
            }
        }
        self.delivery
    }

    /// Waits for the answer to one try, taking in new events meanwhile (so
    /// they wait in the bounded queue, not in the channel).
    async fn wait_for_answer<F>(
        &mut self,
        mut request: std::pin::Pin<&mut F>,
        rx: &mut mpsc::UnboundedReceiver<Message>,
        shutdown: &mut watch::Receiver<bool>,
        now: Instant,
    ) -> Try
    where
        F: Future<Output = Result<EventsAppended, ClientError>>,
    {
        loop {
            let cutoff = self.deadline;
            tokio::select! {
                result = &mut request => return Try::Answered(result),
                message = rx.recv(), if self.rx_open => self.receive(message),
                // Once the task ended, a hanging try is cut off at the deadline.
                () = sleep_until(cutoff.unwrap_or(now)), if cutoff.is_some() => return Try::CutOff,
                // A shutdown leaves little time: a try that hangs (on a dead
                // connection, say) is dropped and made again at once.
                () = shutdown::requested(shutdown), if !self.shutting_down => {
                    self.on_shutdown();
                    return Try::Restart;
                }
            }
        }
    }

    fn receive(&mut self, message: Option<Message>) {
        match message {
            Some(message) => self.take(message),
            None => {
                self.rx_open = false;
                // Dropped without `finish` (the task was abandoned): a short last try.
                if self.deadline.is_none() {
                    self.deadline = Some(Instant::now() + self.options.patience.shutdown_events);
                }
            }
        }
    }

    fn on_shutdown(&mut self) {
        self.shutting_down = true;
        let patience = self.options.patience;
        self.deadline = self.deadline.map(|d| patience.events_on_shutdown(d));
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
                let patience = self.options.patience;
                self.deadline = Some(if self.shutting_down {
                    patience.events_on_shutdown(deadline)
                } else {
                    deadline
                });
            }
        }
    }

    fn queue_event(&mut self, event: Queued) {
        if self.refused {
            self.delivery.undelivered += 1;
            return;
        }
        if self.queue.len() >= self.options.max_queued
            || self.queued_bytes.saturating_add(event.size) > self.options.max_queued_bytes
        {
            self.unnoted_drops += 1;
            self.delivery.dropped += 1;
            self.delivery.undelivered += 1;
            return;
        }
        if self.unnoted_drops > 0 {
            // The note takes the dropped events' place in the log, ahead of
            // this one; it may take the queue one past its bounds.
            let note = self.drop_note();
            self.push(note);
        }
        self.push(event);
    }

    fn push(&mut self, event: Queued) {
        self.count_in(&event);
        self.queue.push_back(event);
    }

    /// Accounts for `event` about to join the queue.
    fn count_in(&mut self, event: &Queued) {
        if self.queue.is_empty() {
            self.queued_since = Instant::now();
        }
        self.queued_bytes += event.size;
    }

    fn clear_queue(&mut self) {
        self.queue.clear();
        self.queued_bytes = 0;
    }

    fn drop_note(&mut self) -> Queued {
        let dropped = std::mem::take(&mut self.unnoted_drops);
        tracing::warn!(task = %self.task, "dropped {dropped} events while the broker was unreachable");
        Queued::new(log_event(
            LogLevel::Warning,
            &format!(
                "{dropped} events were dropped here: the broker was unreachable and the queue of waiting events was full"
            ),
        ))
    }

    /// The broker refused `batch` for its content: its events are lost, a
    /// note takes their place, and the rest goes on.
    fn reject(&mut self, batch: AppendEvents, error: &ClientError) {
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
            self.count_in(&note);
            self.queue.push_front(note);
        }
    }

    /// Stops at the deadline: everything still here is lost, and said so.
    fn give_up(&mut self, batch: Option<AppendEvents>, last_error: &str) {
        let lost = batch.map_or(0, |b| b.events.len()) + self.queue.len();
        self.clear_queue();
        self.delivery.undelivered += lost as u64;
        let error = if last_error.is_empty() {
            "the deadline for reporting passed".to_owned()
        } else {
            format!("gave up at the deadline; last error: {last_error}")
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
mod tests {
    use embark_core::event::{AssistantDelta, Extra};

    use super::*;

    fn text_event(len: usize) -> NewEvent {
        NewEvent::new(AssistantDelta {
            text: "x".repeat(len),
            extra: Extra::new(),
        })
    }

    #[test]
    fn batches_respect_count_and_bytes_in_order() {
        let mut pending: VecDeque<Queued> = (0..7).map(|i| Queued::new(text_event(i * 100))).collect();
        let (first, bytes) = take_batch(&mut pending, 3, usize::MAX);
        assert_eq!(first.len(), 3);
        assert_eq!(first[0], text_event(0));
        // Payload sizes are 11 + len bytes.
        assert_eq!(bytes, 11 + 111 + 211);
        // 311 + 411 = 722 fits in 800, 511 more does not.
        let (second, bytes) = take_batch(&mut pending, 100, 800);
        assert_eq!(second, vec![text_event(300), text_event(400)]);
        assert_eq!(bytes, 722);
        // One oversized event still goes alone rather than blocking forever.
        let (third, _) = take_batch(&mut pending, 100, 10);
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
            error: Some("broker gone".into()),
            ..Delivery::default()
        };
        assert_eq!(
            delivery.problem().as_deref(),
            Some("2 of 5 events could not be reported to the broker: broker gone")
        );
        let dropped = Delivery {
            delivered: 10,
            undelivered: 4,
            dropped: 4,
            ..Delivery::default()
        };
        assert_eq!(
            dropped.problem().as_deref(),
            Some("4 of 14 events could not be reported to the broker: 4 were dropped while the broker was unreachable")
        );
        let all = Delivery {
            delivered: 10,
            undelivered: 9,
            dropped: 4,
            rejected: 3,
            error: Some("gave up at the deadline; last error: 503".into()),
        };
        assert_eq!(
            all.problem().as_deref(),
            Some(
                "9 of 19 events could not be reported to the broker: 4 were dropped while the broker was \
                 unreachable; 3 were refused by the broker; gave up at the deadline; last error: 503"
            )
        );
        assert_eq!(Delivery::default().problem(), None);
    }
}
