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
//! (brought forward by a shutdown, and a try hanging then is made again at
//! once) and returns what could not be delivered, so the task's result can
//! say so; a try still hanging at the deadline is cut off.
//!
//! Every one of those decisions is made by `outbox::Outbox`, a state
//! machine fed events, answers and instants; the worker here only drives it
//! with the channel, the HTTP client and the clock.

mod outbox;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use embark_client::{BrokerClient, ClientError};
use embark_core::shutdown::Shutdown;
use embark_core::wire::{AppendEvents, Claim, EventsAppended};
use embark_core::{NewEvent, TaskId};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::redact::Redactor;
use crate::retry::Patience;
use outbox::{Outbox, Step};

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

enum Message {
    Event(NewEvent),
    /// The task ended: deliver the rest by this deadline.
    Finish(Instant),
}

pub struct Reporter {
    tx: mpsc::UnboundedSender<Message>,
    sender: EventSender,
    worker: JoinHandle<Delivery>,
}

/// Queues events for a [`Reporter`] from elsewhere (the credential proxy);
/// every event is redacted first, once the task's credentials are known.
#[derive(Clone)]
pub struct EventSender {
    sink: Arc<dyn Fn(NewEvent) + Send + Sync>,
    redactor: Arc<OnceLock<Redactor>>,
}

impl EventSender {
    /// Events go to `sink` (a reporter's queue; a test's list).
    pub fn new(sink: impl Fn(NewEvent) + Send + Sync + 'static) -> EventSender {
        EventSender {
            sink: Arc::new(sink),
            redactor: Arc::default(),
        }
    }

    /// Queues one event, redacted (see [`Reporter::send`]).
    pub fn send(&self, event: NewEvent) {
        let event = match self.redactor.get() {
            Some(redactor) => redactor.event(event),
            None => event,
        };
        (self.sink)(event);
    }
}

impl Reporter {
    /// Starts reporting for the claimed attempt.
    pub fn start(client: BrokerClient, claim: &Claim, options: ReportOptions, shutdown: Shutdown) -> Reporter {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbox = Outbox::new(claim.task.id, claim.attempt, options, Instant::now());
        let link = Link {
            client,
            token: claim.callback_token.clone(),
            task: claim.task.id,
        };
        let worker = tokio::spawn(drive(outbox, link, rx, shutdown));
        let sender = EventSender::new({
            let tx = tx.clone();
            // The worker only stops after `finish`, so this cannot fail earlier.
            move |event| drop(tx.send(Message::Event(event)))
        });
        Reporter { tx, sender, worker }
    }

    /// Queues one event (an event too large for the broker is replaced by a
    /// `log` event that says so), with the task's credentials redacted.
    pub fn send(&self, event: NewEvent) {
        self.sender.send(event);
    }

    /// From now on every event is redacted with `redactor` (set once: the
    /// task's profile is known once).
    pub fn redact_with(&self, redactor: Redactor) {
        let _ = self.sender.redactor.set(redactor);
    }

    /// A handle that queues events for this reporter.
    pub fn sender(&self) -> EventSender {
        self.sender.clone()
    }

    /// Stops at once and sends nothing more: the attempt lost its task.
    pub fn abort(self) {
        self.worker.abort();
    }

    /// Delivers everything still waiting, trying until `deadline` (sooner on
    /// shutdown, see [`Patience::events_on_shutdown`]), and reports what was
    /// delivered.
    pub async fn finish(self, deadline: Instant) -> Delivery {
        let _ = self.tx.send(Message::Finish(deadline));
        drop((self.tx, self.sender));
        match self.worker.await {
            Ok(delivery) => delivery,
            Err(e) => Delivery {
                error: Some(format!("the event reporter stopped: {e}")),
                ..Delivery::default()
            },
        }
    }
}

/// One try of a batch, under way.
type Try = Pin<Box<dyn Future<Output = Result<EventsAppended, ClientError>> + Send>>;

/// How the worker reaches the broker.
struct Link {
    client: BrokerClient,
    token: String,
    task: TaskId,
}

impl Link {
    fn append(&self, batch: Arc<AppendEvents>) -> Try {
        let (client, token, task) = (self.client.clone(), self.token.clone(), self.task);
        Box::pin(async move { client.append_events(&token, task, &batch).await })
    }
}

fn take(outbox: &mut Outbox, message: Message, now: Instant) {
    match message {
        Message::Event(event) => outbox.push(event, now),
        Message::Finish(deadline) => outbox.finish(deadline, now),
    }
}

/// Carries out what the outbox says until it is done. New events are taken
/// in while a try is under way, so they wait in the outbox's bounded queue,
/// not in the channel.
async fn drive(
    mut outbox: Outbox,
    link: Link,
    mut rx: mpsc::UnboundedReceiver<Message>,
    shutdown: Shutdown,
) -> Delivery {
    let mut under_way: Option<Try> = None;
    let mut open = true;
    loop {
        let now = Instant::now();
        // Take in whatever arrived, so a new batch is as full as it can be.
        while open {
            match rx.try_recv() {
                Ok(message) => take(&mut outbox, message, now),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    outbox.abandon(now);
                }
            }
        }
        let until = match outbox.next(now) {
            Step::Done(delivery) => return delivery,
            Step::Send(batch) => {
                under_way = Some(link.append(batch));
                continue;
            }
            Step::Wait(until) => until,
        };
        tokio::select! {
            answer = answer_to(&mut under_way) => {
                under_way = None;
                outbox.answered(answer, Instant::now());
            }
            message = rx.recv(), if open => match message {
                Some(message) => take(&mut outbox, message, Instant::now()),
                None => {
                    open = false;
                    outbox.abandon(Instant::now());
                }
            },
            () = sleep_until_some(until) => {}
            () = shutdown.requested(), if !outbox.shutting_down() => outbox.shutdown(Instant::now()),
        }
    }
}

/// The answer to the try under way; never, when there is none.
async fn answer_to(under_way: &mut Option<Try>) -> Result<EventsAppended, ClientError> {
    match under_way {
        Some(request) => request.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; forever, when there is no such instant.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
