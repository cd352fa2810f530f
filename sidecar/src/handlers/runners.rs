//! `/embark runners`: what the enrolled runners can run, from the broker's
//! `GET /v1/runners`.

use embark_core::protocol::{Block, Tone, View};
use embark_core::wire::RunnerInfo;

use super::{Handlers, broker_error};
use crate::error::RpcError;

pub async fn run(handlers: &Handlers) -> Result<View, RpcError> {
    let (client, secret) = handlers.broker()?;
    let runners = client.list_runners(secret).await.map_err(broker_error)?.runners;
    Ok(View {
        blocks: vec![fleet(&runners)],
        ..View::default()
    })
}

/// One row per runner and profile.
fn fleet(runners: &[RunnerInfo]) -> Block {
    if runners.is_empty() {
        return Block::Text {
            text: "No runner is enrolled: tasks are queued until one enrolls.".into(),
            tone: Tone::Warning,
        };
    }
    let mut rows = Vec::new();
    for runner in runners {
        let Some(caps) = &runner.capabilities else {
            rows.push(vec![
                runner.name.clone(),
                "(any)".into(),
                "*".into(),
                "*".into(),
                "(not advertised)".into(),
                String::new(),
            ]);
            continue;
        };
        let detail = format!(
            "max {} tasks, Pi {}{}",
            caps.max_tasks,
            caps.pi_version.as_deref().unwrap_or("?"),
            if caps.labels.is_empty() {
                String::new()
            } else {
                format!(", labels {}", caps.labels.join(", "))
            }
        );
        for profile in &caps.profiles {
            rows.push(vec![
                runner.name.clone(),
                profile.name.clone(),
                profile.providers.join(", "),
                profile.models.join(", "),
                profile
                    .isolation
                    .iter()
                    .map(|mode| mode.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                detail.clone(),
            ]);
        }
    }
    Block::Table {
        title: Some(format!("embark runners ({})", runners.len())),
        columns: [
            "runner",
            "profile",
            "providers",
            "models",
            "isolation",
            "runner details",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    }
}
