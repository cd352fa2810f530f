//! The runner's side of a task, played by a test through the broker's own
//! runner API (enroll, claim, events, verdict), so a sidecar test needs no
//! runner process or Pi.

use embark_client::BrokerClient;
use embark_core::event::{Log, LogLevel, NewEvent};
use embark_core::wire::{AppendEvents, Claim, CompleteTask, Task, TaskResult};
use embark_testkit::Broker;

pub struct PlayedRunner {
    pub api: BrokerClient,
    pub token: String,
    batches: u32,
}

impl PlayedRunner {
    /// Enrolls a runner called `name` with `broker`.
    pub async fn enroll(broker: &Broker, name: &str) -> PlayedRunner {
        let api = broker.client();
        let token = api
            .enroll(&broker.enrollment_secret, name)
            .await
            .expect("enroll")
            .runner_token;
        PlayedRunner { api, token, batches: 0 }
    }

    /// Claims the next queued task (there must be one).
    pub async fn claim(&self) -> Claim {
        self.api
            .claim(&self.token, 5_000)
            .await
            .expect("claim")
            .expect("a queued task")
    }

    /// Appends `events` to the claimed task as one batch of its own.
    pub async fn append(&mut self, claim: &Claim, events: Vec<NewEvent>) {
        self.batches += 1;
        let batch = AppendEvents {
            batch_id: format!("{}-{}", claim.attempt, self.batches),
            events,
        };
        self.api
            .append_events(&claim.callback_token, claim.task.id, &batch)
            .await
            .expect("append events");
    }

    /// Appends one info log event per line.
    pub async fn log(&mut self, claim: &Claim, lines: &[&str]) {
        let events = lines
            .iter()
            .map(|line| NewEvent::new(Log::new(LogLevel::Info, *line)))
            .collect();
        self.append(claim, events).await;
    }

    /// Reports the verdict (no changes, no artifacts) and answers the task as the broker left it.
    pub async fn complete(
        &self,
        claim: &Claim,
        result: TaskResult,
        final_text: Option<&str>,
        reason: Option<&str>,
    ) -> Task {
        let verdict = CompleteTask {
            result,
            final_text: final_text.map(Into::into),
            reason: reason.map(Into::into),
            code: None,
            changes: None,
            artifacts: Vec::new(),
        };
        self.api
            .complete(&claim.callback_token, claim.task.id, &verdict)
            .await
            .expect("complete")
    }

    /// Reports success with `text` as the final text.
    pub async fn succeed(&self, claim: &Claim, text: &str) -> Task {
        self.complete(claim, TaskResult::Succeeded, Some(text), None).await
    }
}
