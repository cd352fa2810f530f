//! Sends a task's events to the broker in order, in batches, with the
//! attempt's callback token. Sending never blocks the task; a batch that
//! keeps failing is retried a bounded number of times, and if reporting
//! finally fails the count of lost events and the error come back from
//! [`Reporter::finish`] so the task's result can say so.
//!
//! Every batch carries a batch id, and every retry of a batch carries the
//! same one: when the broker stored a batch but its answer was lost, the
//! retry is answered with the original seqs instead of being stored twice.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use embark_core::client::{BrokerClient, ClientError};
use embark_core::limits::{MAX_EVENT_PAYLOAD_BYTES, MAX_EVENTS_PER_APPEND};
use embark_core::wire::{AppendEvents, Claim, EventsAppended};
use embark_core::{NewEvent, TaskId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::events::log_event;
use crate::retry::{RetryPolicy, with_retries};

/// How long the first event of a batch waits for company.
const LINGER: Duration = Duration::from_millis(100);
/// Serialized payload bytes per append request, so no request is huge.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// What became of the reported events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: u64,
    pub undelivered: u64,
    /// Why reporting stopped, when it did.
    pub error: Option<String>,
}

impl Delivery {
    /// A sentence for the task's result, when events were lost.
    pub fn problem(&self) -> Option<String> {
        self.error.as_ref().map(|error| {
            format!(
                "{} of {} events could not be reported to the broker: {error}",
                self.undelivered,
                self.delivered + self.undelivered
            )
        })
    }
}

pub struct Reporter {
    tx: mpsc::UnboundedSender<NewEvent>,
    worker: JoinHandle<Delivery>,
}

impl Reporter {
    /// Starts reporting for the claimed attempt.
    pub fn start(client: BrokerClient, claim: &Claim) -> Reporter {
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = tokio::spawn(deliver(
            client,
            claim.callback_token.clone(),
            claim.task.id,
            BatchIds::new(claim.attempt),
            rx,
            RetryPolicy::REPORT,
        ));
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
        // The worker only stops after `finish` drops the sender, so this cannot fail earlier.
        let _ = self.tx.send(event);
    }

    /// Sends everything still queued and reports what was delivered.
    pub async fn finish(self) -> Delivery {
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

/// Sends one batch, retrying as `policy` allows; every try sends the very
/// same batch, batch id included, so a retry can never store it twice.
async fn send_batch<'a, F, Fut>(
    policy: RetryPolicy,
    batch: &'a AppendEvents,
    send: F,
) -> Result<EventsAppended, ClientError>
where
    F: Fn(&'a AppendEvents) -> Fut,
    Fut: Future<Output = Result<EventsAppended, ClientError>>,
{
    with_retries(policy, "reporting events", || send(batch)).await
}

async fn deliver(
    client: BrokerClient,
    token: String,
    task: TaskId,
    mut ids: BatchIds,
    mut rx: mpsc::UnboundedReceiver<NewEvent>,
    policy: RetryPolicy,
) -> Delivery {
    let mut delivery = Delivery::default();
    let mut pending: VecDeque<NewEvent> = VecDeque::new();
    loop {
        if pending.is_empty() {
            let Some(first) = rx.recv().await else { break };
            pending.push_back(first);
            let linger = tokio::time::sleep(LINGER);
            tokio::pin!(linger);
            while pending.len() < MAX_EVENTS_PER_APPEND {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(event) => pending.push_back(event),
                        None => break,
                    },
                    _ = &mut linger => break,
                }
            }
        }
        while let Ok(event) = rx.try_recv() {
            pending.push_back(event);
        }
        if delivery.error.is_some() {
            // Reporting has failed for good: count, never pretend.
            delivery.undelivered += pending.len() as u64;
            pending.clear();
            continue;
        }
        let batch = AppendEvents {
            batch_id: ids.next_id(),
            events: take_batch(&mut pending, MAX_EVENTS_PER_APPEND, MAX_BATCH_BYTES),
        };
        let count = batch.events.len() as u64;
        match send_batch(policy, &batch, |batch| client.append_events(&token, task, batch)).await {
            Ok(_) => delivery.delivered += count,
            Err(error) => {
                tracing::error!(%task, "reporting {count} events failed for good: {error}");
                delivery.undelivered += count;
                delivery.error = Some(error.to_string());
            }
        }
    }
    delivery
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

    #[tokio::test]
    async fn a_retried_batch_keeps_its_id() {
        use std::cell::RefCell;

        use embark_core::wire::ApiErrorCode;

        let policy = RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(1),
        };
        let batch = AppendEvents {
            batch_id: "1-7".into(),
            events: vec![text_event(1)],
        };
        let sent = RefCell::new(Vec::new());
        let appended = send_batch(policy, &batch, |batch| {
            sent.borrow_mut().push(batch.clone());
            let tries = sent.borrow().len();
            async move {
                match tries {
                    // Passing failures: a proxy's 502, then a busy broker.
                    1 => Err(ClientError::Unexpected {
                        status: 502,
                        body: String::new(),
                    }),
                    2 => Err(ClientError::Api {
                        status: 503,
                        code: ApiErrorCode::Internal,
                        message: "busy".into(),
                    }),
                    _ => Ok(EventsAppended {
                        first_seq: 1,
                        last_seq: 1,
                    }),
                }
            }
        })
        .await
        .expect("the third try succeeds");
        assert_eq!((appended.first_seq, appended.last_seq), (1, 1));
        let sent = sent.into_inner();
        assert_eq!(sent.len(), 3);
        assert!(
            sent.iter().all(|try_| *try_ == batch),
            "every try is the same batch: {sent:?}"
        );
    }

    #[test]
    fn a_problem_sentence_counts_lost_events() {
        let delivery = Delivery {
            delivered: 3,
            undelivered: 2,
            error: Some("broker gone".into()),
        };
        assert_eq!(
            delivery.problem().as_deref(),
            Some("2 of 5 events could not be reported to the broker: broker gone")
        );
        assert_eq!(Delivery::default().problem(), None);
    }
}
