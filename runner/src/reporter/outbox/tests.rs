//! The outbox, step by step with explicit instants: no clock, no broker.

use embark_core::event::{AssistantDelta, Extra, Payload};
use embark_core::wire::ApiErrorCode;

use super::*;
use crate::retry::Patience;

const MS: Duration = Duration::from_millis(1);

/// Pauses of 10, 20, 40, 40… ms; a shutdown leaves the events 30 ms.
const PATIENCE: Patience = Patience {
    first_backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(40),
    budget: Duration::from_secs(60),
    verdict_reserve: Duration::from_secs(1),
    shutdown_events: Duration::from_millis(30),
    shutdown_verdict: Duration::from_millis(50),
};

fn options() -> ReportOptions {
    ReportOptions {
        patience: PATIENCE,
        ..ReportOptions::default()
    }
}

fn event(n: u32) -> NewEvent {
    log_event(LogLevel::Info, &format!("event {n}"))
}

fn message(event: &NewEvent) -> &str {
    match &event.payload {
        Payload::Log(log) => &log.message,
        _ => "?",
    }
}

fn text(len: usize) -> NewEvent {
    NewEvent::new(AssistantDelta {
        text: "x".repeat(len),
        extra: Extra::new(),
    })
}

fn api(status: u16) -> ClientError {
    ClientError::Api {
        status,
        code: ApiErrorCode::Internal,
        message: "no".into(),
    }
}

fn stored(batch: &AppendEvents) -> Result<EventsAppended, ClientError> {
    Ok(EventsAppended {
        first_seq: 1,
        last_seq: batch.events.len() as u64,
    })
}

/// An outbox for attempt 1, started at `t0`.
fn outbox(options: ReportOptions) -> (Outbox, Instant) {
    let t0 = Instant::now();
    (Outbox::new(TaskId::new(), 1, options, t0), t0)
}

#[track_caller]
fn sends(outbox: &mut Outbox, now: Instant) -> Arc<AppendEvents> {
    match outbox.next(now) {
        Step::Send(batch) => batch,
        other => panic!("expected a batch to send at {now:?}, got {other:?}"),
    }
}

#[track_caller]
fn waits(outbox: &mut Outbox, now: Instant) -> Option<Instant> {
    match outbox.next(now) {
        Step::Wait(until) => until,
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[track_caller]
fn done(outbox: &mut Outbox, now: Instant) -> Delivery {
    match outbox.next(now) {
        Step::Done(delivery) => delivery,
        other => panic!("expected the end, got {other:?}"),
    }
}

fn messages(batch: &AppendEvents) -> Vec<&str> {
    batch.events.iter().map(message).collect()
}

#[test]
fn the_first_event_lingers_for_company_then_goes_with_it() {
    let (mut outbox, t0) = outbox(options());
    assert_eq!(waits(&mut outbox, t0), None, "nothing to do");
    outbox.push(event(1), t0);
    assert_eq!(waits(&mut outbox, t0), Some(t0 + LINGER));
    outbox.push(event(2), t0 + 50 * MS);
    assert_eq!(
        waits(&mut outbox, t0 + 50 * MS),
        Some(t0 + LINGER),
        "the linger runs from the first"
    );
    let batch = sends(&mut outbox, t0 + LINGER);
    assert_eq!(batch.batch_id, "1-0");
    assert_eq!(messages(&batch), ["event 1", "event 2"]);
    assert_eq!(
        waits(&mut outbox, t0 + LINGER),
        None,
        "the try is under way; no deadline yet"
    );
}

#[test]
fn a_full_batch_or_a_finished_task_does_not_linger() {
    let (mut outbox, t0) = outbox(options());
    for n in 0..MAX_EVENTS_PER_APPEND as u32 {
        outbox.push(event(n), t0);
    }
    assert_eq!(sends(&mut outbox, t0).events.len(), MAX_EVENTS_PER_APPEND);

    let (mut outbox, t0) = self::outbox(options());
    outbox.push(event(1), t0);
    outbox.finish(t0 + Duration::from_secs(10), t0);
    assert_eq!(messages(&sends(&mut outbox, t0)), ["event 1"]);
}

#[test]
fn events_sent_during_a_try_wait_for_the_next_batch_under_a_new_id() {
    let (mut outbox, t0) = outbox(options());
    outbox.push(event(1), t0);
    let first = sends(&mut outbox, t0 + LINGER);
    outbox.push(event(2), t0 + LINGER + MS);
    outbox.push(event(3), t0 + LINGER + 2 * MS);
    outbox.answered(stored(&first), t0 + LINGER + 5 * MS);
    // Event 2 lingers from when it came, not from the answer.
    let second = sends(&mut outbox, t0 + 2 * LINGER + MS);
    assert_eq!(second.batch_id, "1-1");
    assert_eq!(messages(&second), ["event 2", "event 3"]);
    outbox.answered(stored(&second), t0 + 2 * LINGER + 2 * MS);
    outbox.finish(t0 + Duration::from_secs(10), t0 + 2 * LINGER + 3 * MS);
    assert_eq!(
        done(&mut outbox, t0 + 2 * LINGER + 3 * MS),
        Delivery {
            delivered: 3,
            ..Delivery::default()
        }
    );
}

#[test]
fn a_passing_failure_is_retried_with_backoff_and_the_same_batch_id() {
    let (mut outbox, t0) = outbox(options());
    outbox.push(event(1), t0);
    let first = sends(&mut outbox, t0 + LINGER);
    let t = t0 + LINGER;
    outbox.answered(Err(api(503)), t);
    outbox.push(event(2), t + MS);
    assert_eq!(waits(&mut outbox, t + MS), Some(t + 10 * MS));
    let retry = sends(&mut outbox, t + 10 * MS);
    assert!(Arc::ptr_eq(&first, &retry), "exactly the same batch, id and all");
    outbox.answered(Err(api(502)), t + 11 * MS);
    assert_eq!(waits(&mut outbox, t + 11 * MS), Some(t + 31 * MS), "the pause doubled");
    let retry = sends(&mut outbox, t + 31 * MS);
    assert_eq!((retry.batch_id.as_str(), messages(&retry)), ("1-0", vec!["event 1"]));
    outbox.answered(Err(api(429)), t + 31 * MS);
    assert_eq!(waits(&mut outbox, t + 31 * MS), Some(t + 71 * MS));
    let retry = sends(&mut outbox, t + 71 * MS);
    outbox.answered(stored(&retry), t + 72 * MS);
    // Event 2 waited behind the batch; it goes once its linger is over, under the next id.
    assert_eq!(waits(&mut outbox, t + 72 * MS), Some(t + MS + LINGER));
    let second = sends(&mut outbox, t + MS + LINGER);
    assert_eq!((second.batch_id.as_str(), messages(&second)), ("1-1", vec!["event 2"]));
    // A success reset the backoff.
    let t = t + MS + LINGER;
    outbox.answered(Err(api(503)), t);
    assert_eq!(waits(&mut outbox, t), Some(t + 10 * MS));
}

#[test]
fn past_the_count_bound_events_are_dropped_and_a_note_takes_their_place() {
    let (mut outbox, t0) = outbox(ReportOptions {
        max_queued: 3,
        ..options()
    });
    outbox.push(event(1), t0);
    let first = sends(&mut outbox, t0 + LINGER);
    outbox.answered(Err(api(503)), t0 + LINGER);
    // The broker is away: three may wait behind the pending batch.
    for n in 2..=7 {
        outbox.push(event(n), t0 + LINGER + MS);
    }
    let retry = sends(&mut outbox, t0 + LINGER + 10 * MS);
    assert!(Arc::ptr_eq(&first, &retry));
    outbox.answered(stored(&retry), t0 + LINGER + 11 * MS);
    let t = t0 + 2 * LINGER + MS;
    let second = sends(&mut outbox, t);
    assert_eq!(messages(&second), ["event 2", "event 3", "event 4"]);
    // The queue has room again: the next event is taken in, behind a note.
    outbox.push(event(8), t + MS);
    outbox.answered(stored(&second), t + 2 * MS);
    outbox.finish(t0 + Duration::from_secs(1), t + 2 * MS);
    let third = sends(&mut outbox, t + 2 * MS);
    assert_eq!(
        messages(&third),
        [
            "3 events were dropped here: the broker was unreachable and the queue of waiting events was full",
            "event 8",
        ]
    );
    outbox.answered(stored(&third), t + 3 * MS);
    assert_eq!(
        done(&mut outbox, t + 3 * MS),
        Delivery {
            delivered: 6,
            undelivered: 3,
            dropped: 3,
            ..Delivery::default()
        }
    );
}

#[test]
fn past_the_byte_bound_events_are_dropped_and_noted_at_the_end() {
    let size = event(1).payload.json_len();
    let (mut outbox, t0) = outbox(ReportOptions {
        max_queued_bytes: 2 * size,
        ..options()
    });
    outbox.push(event(1), t0);
    let first = sends(&mut outbox, t0 + LINGER);
    outbox.push(event(2), t0 + LINGER);
    outbox.push(event(3), t0 + LINGER);
    outbox.push(event(4), t0 + LINGER);
    outbox.push(event(5), t0 + LINGER);
    // The task ends with the drops not yet noted: the note comes last.
    outbox.finish(t0 + Duration::from_secs(1), t0 + LINGER);
    outbox.answered(stored(&first), t0 + LINGER + MS);
    let rest = sends(&mut outbox, t0 + LINGER + MS);
    assert_eq!(
        messages(&rest),
        [
            "event 2",
            "event 3",
            "2 events were dropped here: the broker was unreachable and the queue of waiting events was full",
        ]
    );
    outbox.answered(stored(&rest), t0 + LINGER + 2 * MS);
    let delivery = done(&mut outbox, t0 + LINGER + 2 * MS);
    assert_eq!((delivery.delivered, delivery.dropped, delivery.undelivered), (4, 2, 2));
}

#[test]
fn an_event_too_large_for_the_broker_becomes_a_note() {
    let (mut outbox, t0) = outbox(options());
    outbox.push(text(MAX_EVENT_PAYLOAD_BYTES), t0);
    let batch = sends(&mut outbox, t0 + LINGER);
    assert!(matches!(batch.events[0].payload, Payload::Log(_)), "{batch:?}");
    let note = message(&batch.events[0]);
    assert!(
        note.starts_with("a assistant_delta event of ") && note.ends_with(" bytes was too large to report"),
        "{note}"
    );
}

#[test]
fn a_batch_refused_for_its_content_is_noted_and_reporting_goes_on() {
    let (mut outbox, t0) = outbox(options());
    for n in 1..=3 {
        outbox.push(event(n), t0);
    }
    let first = sends(&mut outbox, t0 + LINGER);
    outbox.push(event(4), t0 + LINGER);
    outbox.answered(Err(api(422)), t0 + LINGER + MS);
    // Event 4 and the note in front of it linger from when event 4 came.
    let next = sends(&mut outbox, t0 + 2 * LINGER);
    assert_eq!(next.batch_id, "1-1", "a new batch, not a retry of {first:?}");
    assert_eq!(next.events.len(), 2);
    assert!(
        message(&next.events[0])
            .starts_with("3 events were dropped here: the broker refused them: the broker answered 422"),
        "{next:?}"
    );
    assert_eq!(message(&next.events[1]), "event 4");
    outbox.answered(stored(&next), t0 + 2 * LINGER);
    outbox.finish(t0 + Duration::from_secs(1), t0 + 2 * LINGER);
    assert_eq!(
        done(&mut outbox, t0 + 2 * LINGER),
        Delivery {
            delivered: 2,
            undelivered: 3,
            rejected: 3,
            ..Delivery::default()
        }
    );
}

#[test]
fn notes_about_refused_batches_are_capped() {
    let (mut outbox, t0) = outbox(options());
    outbox.push(event(0), t0);
    let mut now = t0 + LINGER;
    let mut notes = 0;
    // A broker that refuses everything, the notes too.
    loop {
        match outbox.next(now) {
            Step::Send(batch) => {
                notes += batch
                    .events
                    .iter()
                    .filter(|e| message(e).contains("refused them"))
                    .count();
                outbox.answered(Err(api(400)), now);
            }
            Step::Wait(Some(at)) => now = at,
            Step::Wait(None) => break,
            other @ Step::Done(_) => panic!("{other:?}"),
        }
    }
    assert_eq!(notes, MAX_REJECTION_NOTES as usize);
    outbox.finish(now + Duration::from_secs(1), now);
    let delivery = done(&mut outbox, now);
    assert_eq!(delivery.delivered, 0);
    assert_eq!(delivery.rejected, u64::from(MAX_REJECTION_NOTES) + 1);
}

#[test]
fn a_refusal_of_the_attempt_stops_reporting_and_counts_every_event() {
    let (mut outbox, t0) = outbox(options());
    for n in 1..=3 {
        outbox.push(event(n), t0);
    }
    let _first = sends(&mut outbox, t0 + LINGER);
    outbox.push(event(4), t0 + LINGER);
    outbox.answered(Err(api(401)), t0 + LINGER + MS);
    outbox.push(event(5), t0 + LINGER + 2 * MS);
    assert_eq!(waits(&mut outbox, t0 + LINGER + 2 * MS), None, "nothing more is sent");
    outbox.finish(t0 + Duration::from_secs(1), t0 + LINGER + 3 * MS);
    let delivery = done(&mut outbox, t0 + LINGER + 3 * MS);
    assert_eq!((delivery.delivered, delivery.undelivered), (0, 5));
    let error = delivery.error.expect("why");
    assert!(error.starts_with("the broker answered 401"), "{error}");
}

#[test]
fn at_the_deadline_it_gives_up_naming_the_last_error_and_starts_no_late_try() {
    let (mut outbox, t0) = outbox(options());
    for n in 1..=3 {
        outbox.push(event(n), t0);
    }
    let deadline = t0 + 25 * MS;
    outbox.finish(deadline, t0);
    let _try = sends(&mut outbox, t0);
    outbox.answered(Err(api(503)), t0);
    let _try = sends(&mut outbox, t0 + 10 * MS);
    outbox.answered(Err(api(503)), t0 + 10 * MS);
    // The next try would be at 30 ms, past the deadline.
    assert_eq!(waits(&mut outbox, t0 + 10 * MS), Some(deadline));
    let delivery = done(&mut outbox, deadline);
    assert_eq!((delivery.delivered, delivery.undelivered), (0, 3));
    assert_eq!(
        delivery.error.as_deref(),
        Some("gave up at the deadline; last error: the broker answered 503 (Internal): no")
    );
}

#[test]
fn a_try_still_hanging_at_the_deadline_is_cut_off() {
    let (mut outbox, t0) = outbox(options());
    outbox.push(event(1), t0);
    let deadline = t0 + Duration::from_secs(5);
    outbox.finish(deadline, t0);
    let _try = sends(&mut outbox, t0);
    assert_eq!(
        waits(&mut outbox, t0 + MS),
        Some(deadline),
        "the try may run until the deadline"
    );
    let delivery = done(&mut outbox, deadline);
    assert_eq!((delivery.delivered, delivery.undelivered), (0, 1));
    assert_eq!(
        delivery.error.as_deref(),
        Some("gave up at the deadline; last error: the broker did not answer before the deadline")
    );
}

#[test]
fn a_shutdown_brings_the_deadline_forward_whenever_it_comes() {
    // After the task ended.
    let (mut outbox, t0) = outbox(options());
    outbox.push(event(1), t0);
    outbox.finish(t0 + Duration::from_secs(60), t0);
    let first = sends(&mut outbox, t0);
    outbox.answered(Err(api(503)), t0);
    outbox.shutdown(t0 + 5 * MS);
    assert!(outbox.shutting_down());
    let retry = sends(&mut outbox, t0 + 10 * MS);
    assert!(Arc::ptr_eq(&first, &retry));
    outbox.answered(Err(api(503)), t0 + 10 * MS);
    assert_eq!(waits(&mut outbox, t0 + 10 * MS), Some(t0 + 30 * MS));
    let _retry = sends(&mut outbox, t0 + 30 * MS);
    outbox.answered(Err(api(503)), t0 + 30 * MS);
    assert_eq!(
        waits(&mut outbox, t0 + 30 * MS),
        Some(t0 + 35 * MS),
        "the next pause would run past the shutdown deadline"
    );
    let delivery = done(&mut outbox, t0 + 35 * MS);
    assert_eq!(delivery.undelivered, 1);

    // While the task still ran: its deadline is short from the start.
    let (mut outbox, t0) = self::outbox(options());
    outbox.shutdown(t0);
    outbox.push(event(1), t0 + 100 * MS);
    outbox.finish(t0 + Duration::from_secs(60), t0 + 200 * MS);
    let _try = sends(&mut outbox, t0 + 200 * MS);
    assert_eq!(waits(&mut outbox, t0 + 200 * MS), Some(t0 + 230 * MS));

    // Never later than the deadline it had.
    let (mut outbox, t0) = self::outbox(options());
    outbox.push(event(1), t0);
    outbox.finish(t0 + 10 * MS, t0);
    outbox.shutdown(t0);
    let _try = sends(&mut outbox, t0);
    assert_eq!(waits(&mut outbox, t0), Some(t0 + 10 * MS));
}

#[test]
fn a_shutdown_during_a_try_makes_it_again_at_once_with_the_same_batch() {
    let (mut outbox, t0) = outbox(options());
    outbox.push(event(1), t0);
    outbox.finish(t0 + Duration::from_secs(60), t0);
    let first = sends(&mut outbox, t0);
    outbox.shutdown(t0 + Duration::from_secs(1));
    let again = sends(&mut outbox, t0 + Duration::from_secs(1));
    assert!(Arc::ptr_eq(&first, &again));
    outbox.answered(stored(&again), t0 + Duration::from_secs(1));
    assert_eq!(
        done(&mut outbox, t0 + Duration::from_secs(1)),
        Delivery {
            delivered: 1,
            ..Delivery::default()
        }
    );
}

#[test]
fn an_abandoned_outbox_gets_a_short_last_try() {
    let (mut outbox, t0) = outbox(options());
    outbox.push(event(1), t0);
    outbox.abandon(t0 + 5 * MS);
    let _try = sends(&mut outbox, t0 + 5 * MS);
    assert_eq!(waits(&mut outbox, t0 + 5 * MS), Some(t0 + 35 * MS));
    // A later abandonment (the channel closing after `finish`) changes nothing.
    let (mut outbox, t0) = self::outbox(options());
    outbox.finish(t0 + Duration::from_secs(1), t0);
    outbox.abandon(t0);
    outbox.push(event(1), t0);
    let _try = sends(&mut outbox, t0);
    assert_eq!(waits(&mut outbox, t0), Some(t0 + Duration::from_secs(1)));
}

#[test]
fn a_finished_task_with_nothing_waiting_is_done_at_once() {
    let (mut outbox, t0) = outbox(options());
    outbox.finish(t0 + Duration::from_secs(1), t0);
    assert_eq!(done(&mut outbox, t0), Delivery::default());
}

#[test]
fn batches_respect_count_and_bytes_in_order() {
    let mut pending: VecDeque<Queued> = (0..7).map(|i| Queued::new(text(i * 100))).collect();
    let (first, bytes) = take_batch(&mut pending, 3, usize::MAX);
    assert_eq!(first.len(), 3);
    assert_eq!(first[0], text(0));
    // Payload sizes are 11 + len bytes.
    assert_eq!(bytes, 11 + 111 + 211);
    // 311 + 411 = 722 fits in 800, 511 more does not.
    let (second, bytes) = take_batch(&mut pending, 100, 800);
    assert_eq!(second, vec![text(300), text(400)]);
    assert_eq!(bytes, 722);
    // One oversized event still goes alone rather than blocking forever.
    let (third, _) = take_batch(&mut pending, 100, 10);
    assert_eq!(third, vec![text(500)]);
    assert_eq!(pending.len(), 1);
}

#[test]
fn batch_ids_are_per_attempt_distinct_and_valid() {
    let mut ids = BatchIds { attempt: 3, next: 0 };
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
