//! The per-task credential proxy: model keys never enter the sandbox.
//!
//! For each attempt the runner serves the task's provider on a local port
//! (127.0.0.1, where the sandbox shares the host's network namespace) or on
//! a Unix socket in the task directory (where it has a network of its own:
//! bwrap's `network = "none"`, docker's bridge), which a relay inside the
//! sandbox serves on the sandbox's own 127.0.0.1 ([`relay`]), and gives Pi
//! a configuration that points the provider there with a random
//! per-attempt token in place of the key ([`plan::Plan`]).
//! Every request must carry the token; it must be one of the provider API's
//! model calls, for the task's model (the intent, enforced on the wire);
//! and the task's cost budget must not be used up. Then the real key goes
//! in, the request goes to the real provider (TLS for https), and the
//! answer streams back unchanged while its usage is metered ([`meter`]).
//! Refusals answer with an error Pi reports, and a `log` event says why.
//! The token dies with the attempt: the server stops with it.
//!
//! `api` and `meter` are the logic (no I/O); `server` is the transport.

pub mod api;
pub mod meter;
pub mod plan;
pub mod relay;
mod server;

use std::path::{Path, PathBuf};

use std::sync::Arc;

use axum::http::StatusCode;
use embark_core::NewEvent;
use embark_core::event::LogLevel;
use subtle::ConstantTimeEq;

use crate::bundle::ProxiedPi;
use crate::events::log_event;
use crate::profile::{Credentials, Profile};
use crate::redact::Redactor;
use crate::reporter::EventSender;
use meter::{Meter, Tokens};
use plan::Plan;
use server::{Bound, Server};

/// Random bytes in a token (hex in the task's configuration).
const TOKEN_BYTES: usize = 32;

/// A request the proxy will not forward: the status and the sentence Pi
/// (or the tool that made the request) gets back.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

/// What the proxy checks each request against, and where it reports.
pub struct Gate {
    plan: Plan,
    token: String,
    meter: Meter,
    events: EventSender,
    http: reqwest::Client,
}

impl Gate {
    fn check_token(&self, presented: Option<&str>) -> Result<(), Refusal> {
        let ok = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(self.token.as_bytes())));
        if ok {
            return Ok(());
        }
        self.refuse(
            StatusCode::UNAUTHORIZED,
            "embark credential proxy: the request does not carry this task's token; only the task's own Pi configuration may call the provider",
        )
    }

    /// The request must be a model call for the task's model, within budget,
    /// while the profile's OAuth token (if it has one) is valid.
    fn check_call(&self, method: &str, path: &str, body: &[u8]) -> Result<(), Refusal> {
        let plan = &self.plan;
        if let Some(why) = plan.expired_at(std::time::SystemTime::now()) {
            return self.refuse(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "embark credential proxy: refused a model call for provider {}: {why}",
                    plan.provider
                ),
            );
        }
        let base = if path.starts_with(&plan.base_path) {
            ""
        } else {
            "(outside the provider's base path) "
        };
        match plan.api.requested_model(method, path, body) {
            Err(why) => {
                return self.refuse(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "embark credential proxy: refused {base}{why}; the task may only call {}/{}",
                        plan.provider, plan.model
                    ),
                );
            }
            Ok(model) if model != plan.model => {
                return self.refuse(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "embark credential proxy: refused a call for model {:?}: this task's intent is {}/{} and nothing else is forwarded",
                        embark_core::text::quote(&model),
                        plan.provider,
                        plan.model
                    ),
                );
            }
            Ok(_) => {}
        }
        if let Err(why) = self.meter.admit() {
            let message = format!("embark credential proxy: refused a model call: {why}");
            self.events.send(log_event(LogLevel::Error, &message));
            self.events.send(NewEvent::new(self.meter.snapshot()));
            return Err(Refusal {
                status: StatusCode::PAYMENT_REQUIRED,
                message,
            });
        }
        Ok(())
    }

    fn refuse(&self, status: StatusCode, message: &str) -> Result<(), Refusal> {
        self.meter.refused();
        self.events.send(log_event(LogLevel::Warning, message));
        self.events.send(NewEvent::new(self.meter.snapshot()));
        Err(Refusal {
            status,
            message: message.to_owned(),
        })
    }

    fn note_failure(&self, message: &str) {
        self.events.send(log_event(LogLevel::Warning, message));
    }

    /// A forwarded answer ended: its usage counts.
    fn answered(&self, tokens: Tokens) {
        self.meter.record(tokens);
        self.events.send(NewEvent::new(self.meter.snapshot()));
    }
}

/// A running proxy for one attempt; it stops (and its token with it) when
/// dropped.
pub struct CredentialProxy {
    gate: Arc<Gate>,
    server: Server,
}

/// Where the proxy listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A free port on 127.0.0.1: the sandbox shares the host's network.
    Loopback,
    /// A Unix socket at this host path in the task directory, for a
    /// sandbox with a network of its own (relayed inside, [`relay`]).
    Socket(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot start the task's credential proxy on {0}")]
    Bind(String, #[source] std::io::Error),
    #[error("cannot build the credential proxy's HTTP client")]
    Client(#[source] reqwest::Error),
}

impl CredentialProxy {
    /// Starts serving `plan` with a fresh token; `max_cost` is the task's
    /// budget; refusals and usage are reported through `events`.
    pub async fn start(plan: Plan, max_cost: Option<f64>, events: EventSender) -> Result<CredentialProxy, ProxyError> {
        CredentialProxy::start_on(plan, max_cost, events, &Listen::Loopback).await
    }

    /// [`CredentialProxy::start`], listening where `listen` says.
    pub async fn start_on(
        plan: Plan,
        max_cost: Option<f64>,
        events: EventSender,
        listen: &Listen,
    ) -> Result<CredentialProxy, ProxyError> {
        let bytes: [u8; TOKEN_BYTES] = rand::random();
        let token = format!(
            "{}{}",
            plan.token_prefix(),
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        // No overall timeout: an answer streams as long as the model writes.
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ProxyError::Client)?;
        let meter = Meter::new(plan.prices, max_cost);
        let gate = Arc::new(Gate {
            plan,
            token,
            meter,
            events,
            http,
        });
        let server = Server::start(gate.clone(), listen).await.map_err(|e| {
            let place = match listen {
                Listen::Loopback => "127.0.0.1".to_owned(),
                Listen::Socket(path) => format!(
                    "the socket {} (a Unix socket path holds at most 107 bytes: use a shorter --spaces path)",
                    path.display()
                ),
            };
            ProxyError::Bind(place, e)
        })?;
        Ok(CredentialProxy { gate, server })
    }

    /// The origin Pi calls: `http://127.0.0.1:PORT`, the proxy's own port
    /// or, for a socket, the relay's inside the sandbox.
    pub fn origin(&self) -> String {
        match &self.server.bound {
            Bound::Loopback(addr) => format!("http://{addr}"),
            Bound::Socket(_) => format!("http://127.0.0.1:{}", relay::RELAY_PORT),
        }
    }

    /// The socket it serves (host path), when it serves one.
    pub fn socket(&self) -> Option<&Path> {
        match &self.server.bound {
            Bound::Loopback(_) => None,
            Bound::Socket(path) => Some(path),
        }
    }

    /// The attempt's token, which Pi's configuration holds in place of the key.
    pub fn token(&self) -> &str {
        &self.gate.token
    }

    pub fn plan(&self) -> &Plan {
        &self.gate.plan
    }

    /// Whether a call was refused for the budget, or the budget was reached.
    pub fn budget_exceeded(&self) -> bool {
        self.gate.meter.budget_exceeded()
    }

    /// The attempt's metered totals so far.
    pub fn usage(&self) -> embark_core::event::MeteredUsage {
        self.gate.meter.snapshot()
    }
}

/// How a task's model credentials reach Pi, set up before its bundle.
pub struct TaskCredentials {
    /// The attempt's proxy; `None` for a profile that materialises its keys.
    pub proxy: Option<CredentialProxy>,
    /// The Pi configuration the bundle gets instead of the profile's
    /// credential files; `None` when they are materialised.
    pub pi: Option<ProxiedPi>,
    /// Every credential value of the profile, for redaction.
    pub redactor: Redactor,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskCredentialsError {
    #[error(transparent)]
    Profile(#[from] crate::bundle::BundleError),
    #[error(transparent)]
    Unproxiable(#[from] plan::Unproxiable),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

impl TaskCredentialsError {
    /// The `pre_launch:<step>` of the failure.
    pub fn step(&self) -> &'static str {
        match self {
            TaskCredentialsError::Profile(_) => "bundle",
            TaskCredentialsError::Unproxiable(_) | TaskCredentialsError::Proxy(_) => "proxy",
        }
    }
}

impl TaskCredentials {
    /// Reads the profile, and (unless it materialises its keys) starts the
    /// attempt's proxy for `provider`/`model` with the smaller of the
    /// runner's and the profile's budgets.
    pub async fn set_up(
        profile: &Profile,
        (provider, model): (&str, &str),
        runner_max_cost: Option<f64>,
        listen: &Listen,
        events: EventSender,
    ) -> Result<TaskCredentials, TaskCredentialsError> {
        let files = crate::bundle::profile_files(profile)?;
        if profile.policy.credentials == Credentials::Materialise {
            let secrets = plan::credential_values(&files, None, &[]);
            return Ok(TaskCredentials {
                proxy: None,
                pi: None,
                redactor: Redactor::new(secrets.iter().map(String::as_str)),
            });
        }
        let plan = Plan::new(&profile.name, provider, model, files)?;
        let max_cost = match (runner_max_cost, profile.policy.max_cost) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let redactor = Redactor::new(plan.secrets.iter().map(String::as_str));
        let proxy = CredentialProxy::start_on(plan, max_cost, events, listen).await?;
        let pi = ProxiedPi {
            models_json: proxy.plan().models_json(&proxy.origin(), proxy.token()),
            env: proxy.plan().pi_env(),
        };
        Ok(TaskCredentials {
            proxy: Some(proxy),
            pi: Some(pi),
            redactor,
        })
    }

    /// The reason the task fails with when the proxy refused a call for
    /// the budget.
    pub fn budget_refusal(&self) -> Option<String> {
        let proxy = self.proxy.as_ref().filter(|p| p.budget_exceeded())?;
        let usage = proxy.usage();
        Some(format!(
            "the task's cost budget of {} was used up ({:.6} spent over {} model calls): the credential proxy refused further calls",
            usage.max_cost.unwrap_or_default(),
            usage.cost,
            usage.calls
        ))
    }
}
