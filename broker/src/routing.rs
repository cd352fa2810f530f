//! Capability routing at submit: a task whose intent no enrolled runner can
//! serve is refused with what comes closest, instead of waiting in the
//! queue forever. The claim's half of routing is in each store's claim
//! statement.
//!
//! With no runner enrolled at all, the task is accepted and queued: a
//! broker starts before its runners, and refusing everything until the
//! first one enrolls would turn an ordering of start-up into errors. A
//! runner that advertised nothing (older than routing) serves any intent.
//!
//! The claim wakes one waiting claimer per new task; with a fleet whose
//! runners differ, the one woken may not be able to take it, so a task that
//! not every runner can serve wakes them all ([`Wake`]).

/// Whom a new task wakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// Every enrolled runner can serve it: one waiting claimer will do.
    One,
    /// Only some can: every waiting claimer looks.
    All,
}

use embark_core::intent::{ExecutionIntent, Unserved, closest};
use embark_core::wire::RunnerInfo;
use embark_core::wire::rules::{Refusal, Rule};

/// `Ok` (with whom to wake) when some runner, or none at all, can take
/// `intent`; otherwise a refusal under [`Rule::IntentUnserved`] naming the
/// closest runner and why.
pub fn check_servable(intent: &ExecutionIntent, runners: &[RunnerInfo]) -> Result<Wake, Refusal> {
    let mut misses: Vec<(&RunnerInfo, Unserved)> = Vec::new();
    for runner in runners {
        if let Some(capabilities) = &runner.capabilities
            && let Err(why) = capabilities.check(intent)
        {
            misses.push((runner, why));
        }
    }
    if misses.is_empty() {
        return Ok(Wake::One);
    }
    if misses.len() < runners.len() {
        return Ok(Wake::All);
    }
    let (runner, why) = closest(&misses).expect("at least one runner was checked");
    Err(Refusal::new(
        Rule::IntentUnserved,
        format!(
            "no enrolled runner can run auth profile {:?} with provider {:?} and model {:?}{}; the closest is runner \
             {:?}, where {why}: choose what a runner offers (`/embark runners` lists them) or enroll a runner that \
             holds it",
            intent.auth_profile,
            intent.provider,
            intent.model,
            extras(intent),
            runner.name,
        ),
    ))
}

fn extras(intent: &ExecutionIntent) -> String {
    let mut text = String::new();
    if let Some(mode) = intent.isolation {
        text.push_str(&format!(" under isolation {mode}"));
    }
    if !intent.labels.is_empty() {
        text.push_str(&format!(" with labels {}", intent.labels.join(", ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use embark_core::intent::{Capabilities, IsolationMode, ProfileCapability};

    use super::*;

    fn runner(name: &str, capabilities: Option<Capabilities>) -> RunnerInfo {
        RunnerInfo {
            id: format!("id-{name}"),
            name: name.into(),
            enrolled_at: jiff::Timestamp::UNIX_EPOCH,
            capabilities,
        }
    }

    fn caps(profile: &str, models: &[&str]) -> Capabilities {
        Capabilities {
            profiles: vec![ProfileCapability {
                name: profile.into(),
                providers: vec!["anthropic".into()],
                models: models.iter().map(|m| (*m).into()).collect(),
                isolation: vec![IsolationMode::Process],
            }],
            isolation: vec![IsolationMode::Process],
            labels: vec![],
            pi_version: None,
            max_tasks: 1,
        }
    }

    #[test]
    fn no_runner_at_all_queues_and_an_unadvertised_runner_serves_anything() {
        let intent = ExecutionIntent::new("x", "y", "z");
        assert_eq!(
            check_servable(&intent, &[]),
            Ok(Wake::One),
            "queued for a runner to come"
        );
        assert_eq!(
            check_servable(&intent, &[runner("old", None)]),
            Ok(Wake::One),
            "a runner without capabilities serves anything"
        );
    }

    #[test]
    fn a_refusal_names_the_closest_runner() {
        let runners = [
            runner("a", Some(caps("team", &["*"]))),
            runner("b", Some(caps("default", &["claude-*"]))),
        ];
        assert_eq!(
            check_servable(&ExecutionIntent::new("default", "anthropic", "claude-x"), &runners),
            Ok(Wake::All),
            "only b serves it: every waiting claimer looks"
        );
        assert_eq!(
            check_servable(&ExecutionIntent::new("default", "anthropic", "claude-x"), &runners[1..]),
            Ok(Wake::One)
        );
        let refused =
            check_servable(&ExecutionIntent::new("default", "anthropic", "gpt-4o"), &runners).expect_err("nobody");
        assert_eq!(refused.rule, Rule::IntentUnserved);
        assert!(
            refused.message.contains(
                "the closest is runner \"b\", where auth profile \"default\" does not allow model \"gpt-4o\" (it allows claude-*)"
            ),
            "{refused}"
        );
    }
}
