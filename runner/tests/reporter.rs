//! The reporter's worker against a real broker behind a fault proxy on
//! 127.0.0.1 (`embark_testkit::proxy`), on tokio's paused clock: backoffs,
//! lingers, outages and deadlines take no real time, and their timing is
//! asserted exactly, while the broker's real work holds the clock still
//! (`embark_testkit::clock`). The proxy takes the broker away for a while
//! (refusing or hanging: nothing may be lost, a shutdown cuts the wait short,
//! the verdict still lands), loses the broker's first answer on the way back
//! (the retry must not store the events twice), or spoils one request so the
//! broker refuses that batch alone. Each rule itself is tested step by step
//! in `reporter::outbox`.

use std::time::Duration;

use embark_client::BrokerClient;
use embark_core::event::{Log, LogLevel, NewEvent, Payload};
use embark_core::intent::ExecutionIntent;
use embark_core::shutdown::Shutdown;
use embark_core::wire::{Claim, CompleteTask, CreateTask, TaskResult};
use embark_core::{Event, TaskState};
use embark_runner::reporter::{Delivery, ReportOptions, Reporter};
use embark_runner::retry::{Patience, persist};
use embark_testkit::Broker;
use embark_testkit::clock::held;
use embark_testkit::proxy::{Fault, FaultProxy};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn event(n: u32) -> NewEvent {
    NewEvent::new(Log::new(LogLevel::Info, format!("event {n}")))
}

async fn claimed_task(broker: &Broker) -> Claim {
    let client = broker.client();
    let task = CreateTask {
        parent: None,
        repo_url: "https://example.invalid/repo.git".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        prompt: "report".into(),
        intent: ExecutionIntent::new("default", "fake", "fake-model"),
        session_id: "s".into(),
        client_request_id: None,
        manifest: None,
    };
    held(async {
        client.create_task(&broker.client_secret, &task).await.expect("create");
        let runner = client.enroll(&broker.enrollment_secret, "box").await.expect("enroll");
        client
            .claim(&runner.runner_token, 1000)
            .await
            .expect("claim")
            .expect("queued")
    })
    .await
}

async fn stored_events(broker: &Broker, claim: &Claim) -> Vec<Event> {
    held(
        broker
            .client()
            .task_events(&broker.client_secret, claim.task.id, 0, 1000),
    )
    .await
    .expect("read")
    .events
}

fn messages(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Log(log) => Some(log.message.clone()),
            _ => None,
        })
        .collect()
}

fn expected(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|n| format!("event {n}")).collect()
}

/// The batch ids of the append requests the proxy took in, in order.
fn batch_ids(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/events"))
        .map(|r| {
            let body = r.json().expect("an append is JSON");
            body["batch_id"].as_str().expect("a batch id").to_owned()
        })
        .collect()
}

/// When the proxy took in each request, in ms from `started`.
fn times(proxy: &FaultProxy, started: Instant) -> Vec<u128> {
    proxy.requests().iter().map(|r| (r.at - started).as_millis()).collect()
}

/// Pauses of 50, 100, 200, 200… ms.
const QUICK: Patience = Patience {
    first_backoff: Duration::from_millis(50),
    max_backoff: Duration::from_millis(200),
    budget: Duration::from_secs(20),
    verdict_reserve: Duration::from_secs(5),
    shutdown_events: Duration::from_secs(1),
    shutdown_verdict: Duration::from_secs(1),
};

fn quick() -> ReportOptions {
    ReportOptions {
        patience: QUICK,
        ..ReportOptions::default()
    }
}

fn through(proxy: &FaultProxy) -> BrokerClient {
    BrokerClient::new(proxy.url()).expect("proxy url")
}

#[tokio::test(start_paused = true)]
async fn a_broker_outage_loses_no_event_and_the_verdict_still_lands() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let proxy = FaultProxy::start(&broker.url, Fault::Refuse).await;
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let outage = Duration::from_secs(2);
    proxy.set_at(started + outage, Fault::Relay);
    let reporter = Reporter::start(through(&proxy), &claim, quick(), shutdown.clone());

    // The first batch fails and is retried; later events queue up behind it.
    for n in 1..=3 {
        reporter.send(event(n));
    }
    proxy.taken_in(1).await;
    for n in 4..=6 {
        reporter.send(event(n));
    }
    proxy.taken_in(3).await;
    for n in 7..=9 {
        reporter.send(event(n));
    }
    // The task ends while the broker is still away.
    let delivery = reporter.finish(QUICK.events_deadline(Instant::now(), false)).await;
    assert_eq!(
        delivery,
        Delivery {
            delivered: 9,
            ..Delivery::default()
        },
        "broker log:\n{}",
        broker.log()
    );
    // The first try after the linger, then pauses of 50, 100 and 200 ms until
    // the broker is back, then the rest at once.
    let mut tries = vec![100, 150, 250];
    tries.extend((450..=2050).step_by(200));
    tries.push(2050);
    assert_eq!(times(&proxy, started), tries);
    let mut ids = vec!["1-0"; tries.len() - 1];
    ids.push("1-1");
    assert_eq!(batch_ids(&proxy), ids, "every retry carries the same batch id");
    assert_eq!(proxy.refused(), tries.len() - 2);
    let events = stored_events(&broker, &claim).await;
    assert_eq!(messages(&events), expected(1..=9), "each event once, in order");

    // The verdict rides out an outage too.
    proxy.set(Fault::Refuse);
    let refused_before = proxy.refused();
    let outage_ends = Instant::now() + Duration::from_secs(1);
    proxy.set_at(outage_ends, Fault::Relay);
    let verdict = CompleteTask {
        result: TaskResult::Succeeded,
        final_text: Some("done".into()),
        reason: None,
        code: None,
        changes: None,
        artifacts: Vec::new(),
    };
    let through_proxy = through(&proxy);
    let task = persist(
        QUICK,
        QUICK.verdict_deadline(Instant::now()),
        "completing",
        &shutdown,
        || through_proxy.complete(&claim.callback_token, claim.task.id, &verdict),
    )
    .await
    .expect("the verdict lands after the outage");
    assert!(Instant::now() >= outage_ends);
    assert!(proxy.refused() > refused_before, "the first tries were refused");
    assert_eq!(task.state, TaskState::Succeeded);
    let stored = held(broker.client().get_task(&broker.client_secret, claim.task.id))
        .await
        .expect("read task");
    assert_eq!(stored.state, TaskState::Succeeded);
    assert_eq!(stored.outcome.and_then(|o| o.final_text).as_deref(), Some("done"));
}

/// Payload bytes of `event(n)`.
fn size_of_event(n: u32) -> usize {
    event(n).payload.json_len()
}

#[tokio::test(start_paused = true)]
async fn past_the_queue_bounds_events_are_dropped_and_a_note_says_how_many() {
    // The same story under each bound: 10 events may wait, 20 are dropped.
    let by_count = ReportOptions {
        max_queued: 10,
        ..quick()
    };
    let by_bytes = ReportOptions {
        max_queued_bytes: (2..=11).map(size_of_event).sum(),
        ..quick()
    };
    for options in [by_count, by_bytes] {
        let broker = Broker::start();
        let claim = claimed_task(&broker).await;
        let proxy = FaultProxy::start(&broker.url, Fault::Refuse).await;
        let shutdown = Shutdown::new();
        let reporter = Reporter::start(through(&proxy), &claim, options, shutdown);
        reporter.send(event(1));
        // Event 1 is now the pending batch; 10 more may wait behind it, 20 are dropped.
        proxy.taken_in(1).await;
        for n in 2..=31 {
            reporter.send(event(n));
        }
        proxy.set(Fault::Relay);
        // The retry of event 1, then the backlog: the queue is empty again.
        proxy.taken_in(3).await;
        reporter.send(event(32));
        let delivery = reporter.finish(QUICK.events_deadline(Instant::now(), false)).await;
        assert_eq!(
            delivery,
            Delivery {
                delivered: 13,
                undelivered: 20,
                dropped: 20,
                ..Delivery::default()
            },
            "{options:?}"
        );
        assert_eq!(
            delivery.problem().as_deref(),
            Some(
                "20 of 33 events could not be reported to the broker: 20 were dropped while the broker was unreachable"
            )
        );
        let got = messages(&stored_events(&broker, &claim).await);
        let mut want = expected(1..=11);
        want.push(
            "20 events were dropped here: the broker was unreachable and the queue of waiting events was full".into(),
        );
        want.push("event 32".into());
        assert_eq!(got, want, "{options:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_whose_answer_was_lost_is_stored_once() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let proxy = FaultProxy::start(&broker.url, Fault::DropAnswer).await;
    let shutdown = Shutdown::new();
    let reporter = Reporter::start(through(&proxy), &claim, ReportOptions::default(), shutdown);
    let started = Instant::now();
    for n in 1..=3 {
        reporter.send(event(n));
    }
    // The first batch went (and its answer got lost) before the rest is queued.
    proxy.taken_in(1).await;
    for n in 4..=5 {
        reporter.send(event(n));
    }
    let delivery = reporter.finish(Instant::now() + Duration::from_secs(20)).await;
    assert_eq!(
        delivery,
        Delivery {
            delivered: 5,
            ..Delivery::default()
        },
        "broker log:\n{}",
        broker.log()
    );
    let events = stored_events(&broker, &claim).await;
    assert_eq!(messages(&events), expected(1..=5), "each event once, in order");
    assert_eq!(events.last().map(|e| e.seq), Some(5));
    assert_eq!(
        batch_ids(&proxy),
        ["1-0", "1-0", "1-1"],
        "the retry carries the lost batch's id, the next batch a new one"
    );
    let first_backoff = Patience::REPORT.first_backoff.as_millis();
    assert_eq!(times(&proxy, started), [100, 100 + first_backoff, 100 + first_backoff]);
    assert!(
        broker.log().contains("batch replayed: answered, not stored again"),
        "the broker saw the retry as a replay"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refusal_stops_reporting_and_every_event_is_counted() {
    let broker = Broker::start();
    let mut claim = claimed_task(&broker).await;
    claim.callback_token = "not-this-attempts-token".into();
    let proxy = FaultProxy::start(&broker.url, Fault::Relay).await;
    let shutdown = Shutdown::new();
    let reporter = Reporter::start(through(&proxy), &claim, quick(), shutdown);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    proxy.taken_in(1).await;
    for n in 4..=5 {
        reporter.send(event(n));
    }
    let delivery = reporter.finish(QUICK.events_deadline(Instant::now(), false)).await;
    assert_eq!((delivery.delivered, delivery.undelivered), (0, 5), "{delivery:?}");
    let error = delivery.error.as_deref().expect("the refusal is reported");
    assert!(error.contains("401"), "{error}");
    assert_eq!(proxy.requests().len(), 1, "nothing was sent after the refusal");
    assert!(stored_events(&broker, &claim).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_batch_refused_for_its_content_is_noted_and_reporting_goes_on() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    // The first batch's id is spoiled on the way: the real broker refuses it (422).
    let spoil = Fault::Rewrite {
        from: br#""batch_id":"1-0""#.to_vec(),
        to: br#""batch_id":"1 0""#.to_vec(),
    };
    let proxy = FaultProxy::start(&broker.url, spoil).await;
    let shutdown = Shutdown::new();
    let reporter = Reporter::start(through(&proxy), &claim, quick(), shutdown);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    proxy.taken_in(1).await;
    for n in 4..=5 {
        reporter.send(event(n));
    }
    let delivery = reporter.finish(QUICK.events_deadline(Instant::now(), false)).await;
    assert_eq!(
        delivery,
        Delivery {
            delivered: 3,
            undelivered: 3,
            rejected: 3,
            ..Delivery::default()
        },
        "broker log:\n{}",
        broker.log()
    );
    assert_eq!(
        delivery.problem().as_deref(),
        Some("3 of 6 events could not be reported to the broker: 3 were refused by the broker")
    );
    let got = messages(&stored_events(&broker, &claim).await);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got[0].starts_with("3 events were dropped here: the broker refused them: the broker answered 422"),
        "{got:?}"
    );
    assert_eq!(got[1..], expected(4..=5));
    assert_eq!(batch_ids(&proxy), ["1-0", "1-1"], "the refused batch is not retried");
}

#[tokio::test(start_paused = true)]
async fn giving_up_at_the_deadline_names_the_real_error_and_starts_no_late_try() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let proxy = FaultProxy::start(&broker.url, Fault::Refuse).await;
    let shutdown = Shutdown::new();
    let reporter = Reporter::start(through(&proxy), &claim, quick(), shutdown);
    for n in 1..=3 {
        reporter.send(event(n));
    }
    let started = Instant::now();
    let delivery = reporter.finish(started + 300 * MS).await;
    // Tries at 0, 50 and 150 ms; the next would be at 350 ms, past the deadline.
    assert_eq!(times(&proxy, started), [0, 50, 150]);
    assert_eq!(started.elapsed(), 300 * MS, "it gave up at the deadline, not later");
    assert_eq!((delivery.delivered, delivery.undelivered), (0, 3), "{delivery:?}");
    let error = delivery.error.as_deref().expect("why");
    assert!(
        error.starts_with("gave up at the deadline; last error: could not reach the broker"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_cuts_a_hanging_try_and_makes_it_again_with_the_same_batch_id() {
    let broker = Broker::start();
    let claim = claimed_task(&broker).await;
    let proxy = FaultProxy::start(&broker.url, Fault::Hang).await;
    let shutdown = Shutdown::new();
    let reporter = Reporter::start(through(&proxy), &claim, quick(), shutdown.clone());
    for n in 1..=3 {
        reporter.send(event(n));
    }
    // The task ends with a long deadline; its first try hangs; the broker answers again.
    let finishing = tokio::spawn(reporter.finish(Instant::now() + Duration::from_secs(20)));
    proxy.taken_in(1).await;
    proxy.set(Fault::Relay);
    let stopped = Instant::now();
    shutdown.trigger();
    let delivery = finishing.await.expect("the reporter ran");
    assert_eq!(stopped.elapsed(), Duration::ZERO, "made again at once");
    assert_eq!(
        delivery,
        Delivery {
            delivered: 3,
            ..Delivery::default()
        }
    );
    assert_eq!(batch_ids(&proxy), ["1-0", "1-0"], "the cut try is made again, same id");
    assert_eq!(messages(&stored_events(&broker, &claim).await), expected(1..=3));

    // With the broker hanging throughout, a shutdown brings the deadline forward.
    let proxy = FaultProxy::start(&broker.url, Fault::Hang).await;
    let claim = claimed_task(&broker).await;
    let shutdown = Shutdown::new();
    let reporter = Reporter::start(through(&proxy), &claim, quick(), shutdown.clone());
    for n in 1..=3 {
        reporter.send(event(n));
    }
    let finishing = tokio::spawn(reporter.finish(Instant::now() + Duration::from_secs(20)));
    proxy.taken_in(1).await;
    let stopped = Instant::now();
    shutdown.trigger();
    let delivery = finishing.await.expect("the reporter ran");
    assert_eq!(
        stopped.elapsed(),
        QUICK.shutdown_events,
        "cut off at the shutdown deadline"
    );
    assert_eq!((delivery.delivered, delivery.undelivered), (0, 3), "{delivery:?}");
    assert_eq!(
        delivery.error.as_deref(),
        Some("gave up at the deadline; last error: the broker did not answer before the deadline")
    );
    assert_eq!(batch_ids(&proxy), ["1-0", "1-0"]);
}

#[tokio::test(start_paused = true)]
async fn the_verdict_lands_after_an_outage_that_outlasted_the_events() {
    // As `task::report` does it: the broker is away until the events gave
    // up, and back for the verdict, which must then go out.
    let patience = Patience {
        budget: Duration::from_secs(2),
        verdict_reserve: Duration::from_secs(1),
        shutdown_events: Duration::from_millis(300),
        shutdown_verdict: Duration::from_secs(1),
        ..QUICK
    };
    let options = ReportOptions {
        patience,
        ..ReportOptions::default()
    };
    let verdict = || CompleteTask {
        result: TaskResult::Succeeded,
        final_text: Some("done".into()),
        reason: None,
        code: None,
        changes: None,
        artifacts: Vec::new(),
    };
    for shutting_down in [false, true] {
        let broker = Broker::start();
        let claim = claimed_task(&broker).await;
        let proxy = FaultProxy::start(&broker.url, Fault::RefusePath("/events".into())).await;
        let through_proxy = through(&proxy);
        let shutdown = Shutdown::new();
        if shutting_down {
            shutdown.trigger();
        }
        let reporter = Reporter::start(through_proxy.clone(), &claim, options, shutdown.clone());
        for n in 1..=3 {
            reporter.send(event(n));
        }
        let started = Instant::now();
        let reported =
            embark_runner::task::report(&through_proxy, &claim, reporter, verdict(), patience, &shutdown).await;
        let took = started.elapsed();
        let task = reported.unwrap_or_else(|e| {
            panic!(
                "shutting down {shutting_down}: the verdict was not delivered: {e}; broker log:\n{}",
                broker.log()
            )
        });
        assert_eq!(task.state, TaskState::Succeeded);
        let reason = task.outcome.and_then(|o| o.reason).expect("lost events are noted");
        assert!(
            reason.starts_with("4 of 4 events could not be reported to the broker: gave up at the deadline"),
            "{reason}"
        );
        assert!(proxy.refused() >= 2, "the events were retried: {}", proxy.refused());
        assert!(stored_events(&broker, &claim).await.is_empty());
        // The events gave up at their own deadline, leaving the verdict its share.
        let events_took = if shutting_down {
            patience.shutdown_events
        } else {
            patience.budget - patience.verdict_reserve
        };
        assert_eq!(took, events_took, "shutting down {shutting_down}");
    }
}
