//! Where each part of an intent comes from: the one precedence rule.
//!
//! For every part (auth profile, provider, model, isolation, labels)
//! separately, the first layer that names it wins:
//!
//! 1. explicit — a flag of this `/embark` line (`--provider`, …);
//! 2. session default — what the Pi session chose for its tasks;
//! 3. sidecar config — `EMBARK_*` variables over `config.toml` (the
//!    config mechanism already merged those two);
//! 4. runner default — what runners take when nothing else names it: the
//!    profile `default`, any isolation, no labels. There is no runner
//!    default for provider and model: a task always names both, and the
//!    runner runs exactly those.
//!
//! Whatever layer a value came from, the resolved intent is binding: no
//! later step substitutes a part of it.

use super::{AUTH_PROFILE, ExecutionIntent, IntentError, IsolationMode, MODEL, PROVIDER, check_labels, check_name};

/// The auth profile a runner takes when no layer names one.
pub const RUNNER_DEFAULT_PROFILE: &str = "default";

/// One layer's choices; `None` leaves the part to the next layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntentLayer {
    pub auth_profile: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub isolation: Option<IsolationMode>,
    pub labels: Option<Vec<String>>,
}

impl IntentLayer {
    /// The runner default layer (see the module docs).
    pub fn runner_default() -> IntentLayer {
        IntentLayer {
            auth_profile: Some(RUNNER_DEFAULT_PROFILE.to_owned()),
            ..IntentLayer::default()
        }
    }

    /// Whether the layer names nothing.
    pub fn is_empty(&self) -> bool {
        *self == IntentLayer::default()
    }

    /// Checks every part the layer names by the intent's rules (see
    /// [`ExecutionIntent::validate`]), so a layer kept for later (a
    /// session default) is refused when it is set, not at its first submit.
    pub fn validate(&self) -> Result<(), IntentError> {
        let names = [
            (&AUTH_PROFILE, &self.auth_profile),
            (&PROVIDER, &self.provider),
            (&MODEL, &self.model),
        ];
        for (rule, value) in names {
            if let Some(value) = value {
                check_name(rule, value)?;
            }
        }
        check_labels(self.labels.as_deref().unwrap_or_default())
    }

    /// `self` with every part `over` names replaced by `over`'s.
    pub fn overlaid(&self, over: &IntentLayer) -> IntentLayer {
        IntentLayer {
            auth_profile: over.auth_profile.clone().or_else(|| self.auth_profile.clone()),
            provider: over.provider.clone().or_else(|| self.provider.clone()),
            model: over.model.clone().or_else(|| self.model.clone()),
            isolation: over.isolation.or(self.isolation),
            labels: over.labels.clone().or_else(|| self.labels.clone()),
        }
    }
}

/// Which layer a part came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Explicit,
    Session,
    Config,
    RunnerDefault,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Explicit => "explicit flag",
            Source::Session => "session default",
            Source::Config => "sidecar config",
            Source::RunnerDefault => "runner default",
        }
    }
}

/// The resolved intent and where its profile, provider and model came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub intent: ExecutionIntent,
    pub auth_profile: Source,
    pub provider: Source,
    pub model: Source,
}

/// What resolution could not settle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "no provider chosen: pass --provider <name> or set EMBARK_PROVIDER (or provider in config.toml); \
         it names a provider of the runner's Pi"
    )]
    NoProvider,
    #[error("no model chosen: pass --model <id> or set EMBARK_MODEL (or model in config.toml)")]
    NoModel,
    #[error(transparent)]
    Invalid(#[from] IntentError),
}

/// The layers in precedence order, each with its source.
type Layers<'a> = [(Source, &'a IntentLayer); 4];

/// The first layer (in precedence order) whose `part` is set, and that value.
fn first<'a, T: 'a>(layers: &Layers<'a>, part: impl Fn(&'a IntentLayer) -> Option<&'a T>) -> Option<(Source, &'a T)> {
    layers
        .iter()
        .find_map(|(source, layer)| part(layer).map(|value| (*source, value)))
}

/// One part of an intent as the layers settle it: its value as people read
/// it and the layer it came from, or `None` when no layer names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// `auth profile`, `provider`, `model`, `isolation` or `labels`.
    pub part: &'static str,
    pub value: Option<(Source, String)>,
}

/// Every part of the intent the layers would resolve, with where it comes
/// from, without validating or requiring anything: what `/embark
/// defaults` shows. The same order as [`resolve`].
pub fn settle(
    explicit: &IntentLayer,
    session: &IntentLayer,
    config: &IntentLayer,
    runner_default: &IntentLayer,
) -> Vec<Settled> {
    let layers: Layers<'_> = [
        (Source::Explicit, explicit),
        (Source::Session, session),
        (Source::Config, config),
        (Source::RunnerDefault, runner_default),
    ];
    let text = |found: Option<(Source, &String)>| found.map(|(source, value)| (source, value.clone()));
    vec![
        Settled {
            part: "auth profile",
            value: text(first(&layers, |l| l.auth_profile.as_ref())),
        },
        Settled {
            part: "provider",
            value: text(first(&layers, |l| l.provider.as_ref())),
        },
        Settled {
            part: "model",
            value: text(first(&layers, |l| l.model.as_ref())),
        },
        Settled {
            part: "isolation",
            value: first(&layers, |l| l.isolation.as_ref()).map(|(source, mode)| (source, mode.name().to_owned())),
        },
        Settled {
            part: "labels",
            value: first(&layers, |l| l.labels.as_ref()).map(|(source, labels)| (source, labels.join(", "))),
        },
    ]
}

/// Resolves an intent from its layers, highest first: explicit, session
/// default, sidecar config, runner default; then validates it.
pub fn resolve(
    explicit: &IntentLayer,
    session: &IntentLayer,
    config: &IntentLayer,
    runner_default: &IntentLayer,
) -> Result<Resolved, ResolveError> {
    let layers: Layers<'_> = [
        (Source::Explicit, explicit),
        (Source::Session, session),
        (Source::Config, config),
        (Source::RunnerDefault, runner_default),
    ];
    let (profile_source, profile) = first(&layers, |l| l.auth_profile.as_ref())
        .map(|(s, v)| (s, v.clone()))
        .unwrap_or((Source::RunnerDefault, RUNNER_DEFAULT_PROFILE.to_owned()));
    let (provider_source, provider) = first(&layers, |l| l.provider.as_ref()).ok_or(ResolveError::NoProvider)?;
    let (model_source, model) = first(&layers, |l| l.model.as_ref()).ok_or(ResolveError::NoModel)?;
    let isolation = first(&layers, |l| l.isolation.as_ref()).map(|(_, mode)| *mode);
    let labels = first(&layers, |l| l.labels.as_ref())
        .map(|(_, labels)| labels.clone())
        .unwrap_or_default();
    let intent = ExecutionIntent {
        auth_profile: profile,
        provider: provider.clone(),
        model: model.clone(),
        isolation,
        labels,
    };
    intent.validate()?;
    Ok(Resolved {
        intent,
        auth_profile: profile_source,
        provider: provider_source,
        model: model_source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(profile: Option<&str>, provider: Option<&str>, model: Option<&str>) -> IntentLayer {
        IntentLayer {
            auth_profile: profile.map(Into::into),
            provider: provider.map(Into::into),
            model: model.map(Into::into),
            ..IntentLayer::default()
        }
    }

    #[test]
    fn each_part_comes_from_the_highest_layer_that_names_it() {
        let explicit = layer(None, Some("flag-p"), None);
        let session = layer(None, Some("session-p"), Some("session-m"));
        let config = layer(Some("team"), Some("cfg-p"), Some("cfg-m"));
        let resolved = resolve(&explicit, &session, &config, &IntentLayer::runner_default()).expect("resolves");
        assert_eq!(resolved.intent, ExecutionIntent::new("team", "flag-p", "session-m"));
        assert_eq!(
            (resolved.auth_profile, resolved.provider, resolved.model),
            (Source::Config, Source::Explicit, Source::Session)
        );
    }

    #[test]
    fn the_runner_default_profile_is_the_last_resort() {
        let none = IntentLayer::default();
        let config = layer(None, Some("p"), Some("m"));
        let resolved = resolve(&none, &none, &config, &IntentLayer::runner_default()).expect("resolves");
        assert_eq!(resolved.intent.auth_profile, "default");
        assert_eq!(resolved.auth_profile, Source::RunnerDefault);
        assert_eq!(resolved.provider, Source::Config);
    }

    #[test]
    fn isolation_and_labels_follow_the_same_order() {
        let explicit = IntentLayer {
            labels: Some(vec!["gpu".into()]),
            ..layer(None, Some("p"), Some("m"))
        };
        let config = IntentLayer {
            isolation: Some(IsolationMode::Bwrap),
            labels: Some(vec!["cpu".into()]),
            ..IntentLayer::default()
        };
        let none = IntentLayer::default();
        let resolved = resolve(&explicit, &none, &config, &none).expect("resolves");
        assert_eq!(resolved.intent.isolation, Some(IsolationMode::Bwrap));
        assert_eq!(resolved.intent.labels, ["gpu"]);
    }

    #[test]
    fn settle_names_each_part_and_its_layer_without_requiring_any() {
        let session = IntentLayer {
            isolation: Some(IsolationMode::Bwrap),
            ..layer(None, None, Some("session-m"))
        };
        let config = layer(None, Some("cfg-p"), Some("cfg-m"));
        let none = IntentLayer::default();
        let settled = settle(&none, &session, &config, &IntentLayer::runner_default());
        let shown: Vec<(&str, Option<(Source, &str)>)> = settled
            .iter()
            .map(|s| (s.part, s.value.as_ref().map(|(source, v)| (*source, v.as_str()))))
            .collect();
        assert_eq!(
            shown,
            [
                ("auth profile", Some((Source::RunnerDefault, "default"))),
                ("provider", Some((Source::Config, "cfg-p"))),
                ("model", Some((Source::Session, "session-m"))),
                ("isolation", Some((Source::Session, "bwrap"))),
                ("labels", None),
            ]
        );
        assert!(settle(&none, &none, &none, &none).iter().all(|s| s.value.is_none()));
    }

    #[test]
    fn a_layer_is_checked_part_by_part_and_overlaid_part_by_part() {
        layer(Some("team"), None, Some("m")).validate().expect("valid parts");
        IntentLayer::default().validate().expect("an empty layer is valid");
        assert!(matches!(
            layer(None, Some("-x"), None).validate(),
            Err(IntentError::BadCharacter { field: "provider", .. })
        ));
        let labelled = IntentLayer {
            labels: Some(vec!["a b".into()]),
            ..IntentLayer::default()
        };
        assert!(matches!(
            labelled.validate(),
            Err(IntentError::BadCharacter { field: "label", .. })
        ));
        let base = IntentLayer {
            labels: Some(vec!["gpu".into()]),
            ..layer(Some("team"), Some("p"), None)
        };
        let over = layer(None, Some("q"), Some("m"));
        let merged = base.overlaid(&over);
        assert_eq!(
            merged,
            IntentLayer {
                labels: Some(vec!["gpu".into()]),
                ..layer(Some("team"), Some("q"), Some("m"))
            }
        );
        assert!(IntentLayer::default().is_empty() && !merged.is_empty());
    }

    #[test]
    fn provider_and_model_have_no_default() {
        let none = IntentLayer::default();
        let runner = IntentLayer::runner_default();
        assert_eq!(
            resolve(&layer(None, None, Some("m")), &none, &none, &runner),
            Err(ResolveError::NoProvider)
        );
        let error = resolve(&layer(None, Some("p"), None), &none, &none, &runner).expect_err("no model");
        assert!(error.to_string().contains("--model"), "{error}");
        let error = resolve(&layer(None, Some("-x"), Some("m")), &none, &none, &runner).expect_err("flag-like");
        assert!(matches!(error, ResolveError::Invalid(IntentError::BadCharacter { .. })));
    }
}
