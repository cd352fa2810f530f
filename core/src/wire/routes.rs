//! Every route of the broker API, as data: the broker builds its router from
//! [`ROUTES`], `schemas/v1/broker.openapi.json` is generated from it, and the
//! broker's route test probes the running broker with it. A route exists
//! only if it is in this table.
//!
//! Statuses are the ones the broker really answers; every non-2xx answer
//! carries an [`ApiError`] body. A route's refusals of bad input are not
//! listed by hand: they come from the [`Rule`]s of its path, query and body
//! types ([`Route::rules`]), the ones the broker checks, and from the limits
//! its connection layer keeps ([`Route::limits`]). Besides these, any route
//! answers 405 to a method it does not have, any path not here answers 404,
//! and a broker at its connection limit or shutting down answers 503.
//!
//! A route is plain HTTP/JSON or a WebSocket ([`Kind`]): a live tail is a
//! `GET` that upgrades, checked like any other request first, whose
//! messages are [`LiveFrame`](super::live::LiveFrame)s.

use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::control::ControlFrame;
use super::live::{LiveClose, LiveFrame, SessionTailQuery, TaskTailQuery};
use super::rules::{Check, Rule};
use super::{
    ApiError, AppendEvents, BlobBody, BlobsQuery, Claim, ClaimRequest, CompleteTask, CreateTask, EnrollRunner,
    EventPage, EventPageQuery, EventsAppended, Health, Lease, MissingBlobs, PeekRequest, QueuedRepos, RunnerEnrolled,
    RunnerList, Task, TaskCancel, TaskList, TaskListQuery,
};
use crate::manifest::ContentHash;
use crate::schema::{SchemaFn, schema};
use crate::task::TaskId;

/// The HTTP methods the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

/// The bearer credential a route needs (`Authorization: Bearer <credential>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// A client credential (sidecars): the broker's client secret, an
    /// operator credential that sees every task, or a named client token
    /// (`embark-broker tokens add`), which sees only the tasks it created.
    ClientSecret,
    /// The broker's runner enrollment secret, exchanged for a runner token.
    EnrollmentSecret,
    /// A runner token from enrollment.
    RunnerToken,
    /// The callback token of a task's current attempt, minted by its claim.
    CallbackToken,
}

impl Credential {
    pub const ALL: [Credential; 4] = [
        Credential::ClientSecret,
        Credential::EnrollmentSecret,
        Credential::RunnerToken,
        Credential::CallbackToken,
    ];

    /// How people and the broker's 401 messages name it: `Bearer <client secret>`.
    pub fn label(self) -> &'static str {
        match self {
            Credential::ClientSecret => "client token or client secret",
            Credential::EnrollmentSecret => "runner enrollment secret",
            Credential::RunnerToken => "runner token",
            Credential::CallbackToken => "callback token",
        }
    }

    /// The name of its OpenAPI security scheme.
    pub fn scheme(self) -> &'static str {
        match self {
            Credential::ClientSecret => "clientSecret",
            Credential::EnrollmentSecret => "enrollmentSecret",
            Credential::RunnerToken => "runnerToken",
            Credential::CallbackToken => "callbackToken",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Credential::ClientSecret => {
                "A client token (`embark_ct_…`, from `embark-broker tokens add NAME`) or the broker's client secret (EMBARK_CLIENT_SECRET): create, list, read, follow and cancel tasks. A token sees only the tasks it created (others answer 404, a listing leaves them out); the client secret is the operator's and sees every task."
            }
            Credential::EnrollmentSecret => {
                "The broker's runner enrollment secret (EMBARK_RUNNER_ENROLLMENT_SECRET), exchanged for a runner token."
            }
            Credential::RunnerToken => {
                "A runner token (`embark_rt_…`) from POST /v1/runners/enroll: claim tasks, hear of their cancels. `embark-broker runners revoke NAME` revokes it: its requests, and its attempts' callback tokens, then answer 401."
            }
            Credential::CallbackToken => {
                "The callback token (`embark_cb_…`) a claim returned: valid for that task and only while that attempt is the task's current one."
            }
        }
    }
}

/// What a route does; the broker maps each to its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Health,
    CreateTask,
    ListTasks,
    GetTask,
    ReadEvents,
    EnrollRunner,
    ListRunners,
    ClaimTask,
    PeekQueue,
    AppendEvents,
    Heartbeat,
    CompleteTask,
    TailTask,
    TailSession,
    PutBlob,
    HeadBlob,
    GetBlob,
    MissingBlobs,
    Healthz,
    Readyz,
    Metrics,
    CancelTask,
    RunnerControl,
    PutArtifact,
    GetArtifact,
}

impl Operation {
    pub const ALL: [Operation; 25] = [
        Operation::Health,
        Operation::CreateTask,
        Operation::ListTasks,
        Operation::GetTask,
        Operation::ReadEvents,
        Operation::EnrollRunner,
        Operation::ListRunners,
        Operation::ClaimTask,
        Operation::PeekQueue,
        Operation::AppendEvents,
        Operation::Heartbeat,
        Operation::CompleteTask,
        Operation::TailTask,
        Operation::TailSession,
        Operation::PutBlob,
        Operation::HeadBlob,
        Operation::GetBlob,
        Operation::MissingBlobs,
        Operation::Healthz,
        Operation::Readyz,
        Operation::Metrics,
        Operation::CancelTask,
        Operation::RunnerControl,
        Operation::PutArtifact,
        Operation::GetArtifact,
    ];

    /// This operation's entry in [`ROUTES`].
    pub fn route(self) -> &'static Route {
        ROUTES
            .iter()
            .find(|route| route.operation == self)
            .expect("every operation has a route in ROUTES (checked by a test)")
    }

    /// The OpenAPI `operationId`.
    pub fn id(self) -> &'static str {
        match self {
            Operation::Health => "health",
            Operation::CreateTask => "createTask",
            Operation::ListTasks => "listTasks",
            Operation::GetTask => "getTask",
            Operation::ReadEvents => "readEvents",
            Operation::EnrollRunner => "enrollRunner",
            Operation::ListRunners => "listRunners",
            Operation::ClaimTask => "claimTask",
            Operation::PeekQueue => "peekQueue",
            Operation::AppendEvents => "appendEvents",
            Operation::Heartbeat => "heartbeat",
            Operation::CompleteTask => "completeTask",
            Operation::TailTask => "tailTask",
            Operation::TailSession => "tailSession",
            Operation::PutBlob => "putBlob",
            Operation::HeadBlob => "headBlob",
            Operation::GetBlob => "getBlob",
            Operation::MissingBlobs => "missingBlobs",
            Operation::Healthz => "healthz",
            Operation::Readyz => "readyz",
            Operation::Metrics => "metrics",
            Operation::CancelTask => "cancelTask",
            Operation::RunnerControl => "runnerControl",
            Operation::PutArtifact => "putArtifact",
            Operation::GetArtifact => "getArtifact",
        }
    }
}

/// The inline object schema of a query type; each property is one query parameter.
fn inline<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// How a request body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// `application/json` (queries are JSON-shaped too).
    Json,
    /// `application/octet-stream`: the bytes as they are.
    Bytes,
}

impl Media {
    pub fn content_type(self) -> &'static str {
        match self {
            Media::Json => "application/json",
            Media::Bytes => "application/octet-stream",
        }
    }
}

/// A request's body or query: its type's schema and the rules the broker checks it against.
#[derive(Clone, Copy, Debug)]
pub struct Input {
    pub schema: SchemaFn,
    pub media: Media,
    /// The type's own rules ([`Check::RULES`]), besides those of reading it.
    pub rules: &'static [Rule],
}

/// A JSON body of type `T`.
pub const fn body<T: JsonSchema + Check>() -> Input {
    Input {
        schema: schema::<T>,
        media: Media::Json,
        rules: T::RULES,
    }
}

fn binary(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "string", "format": "binary"})
}

/// A raw body whose rules are `T`'s.
pub const fn bytes<T: Check>() -> Input {
    Input {
        schema: binary,
        media: Media::Bytes,
        rules: T::RULES,
    }
}

/// A query string of type `T`: its schema is the inline object, each property one parameter.
pub const fn query<T: JsonSchema + Check>() -> Input {
    Input {
        schema: inline::<T>,
        media: Media::Json,
        rules: T::RULES,
    }
}

/// A `{name}` segment of a route's path.
#[derive(Clone, Copy, Debug)]
pub struct PathParam {
    pub name: &'static str,
    pub schema: SchemaFn,
    pub description: &'static str,
    /// What a bad value breaks.
    pub rule: Rule,
}

/// What an answer's body is.
#[derive(Clone, Copy, Debug)]
pub enum Body {
    Empty,
    /// JSON of this type.
    Json(SchemaFn),
    /// Text of this media type (e.g. Prometheus' exposition format).
    Text(&'static str),
}

/// One answer a route can give.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Body,
    pub description: &'static str,
}

/// How a route talks once its request was accepted.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// One request, one JSON answer.
    Http,
    /// A `GET` that upgrades to a WebSocket (answering 101) whose text
    /// messages are JSON of `frames`, ended by one of `closes`.
    WebSocket {
        frames: SchemaFn,
        closes: &'static [LiveClose],
    },
}

/// One method on one path.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub operation: Operation,
    pub method: Method,
    /// The path as axum and OpenAPI write it, e.g. `/v1/tasks/{id}`.
    pub path: &'static str,
    pub summary: &'static str,
    /// `None`: open to anyone.
    pub credential: Option<Credential>,
    pub path_params: &'static [PathParam],
    /// The query string's type (see [`query`]).
    pub query: Option<Input>,
    /// The JSON request body's type (see [`body`]).
    pub request: Option<Input>,
    pub kind: Kind,
    /// Every answer besides the refusals under [`Route::rules`] and
    /// [`Route::limits`]: success, credential, and what the store decides.
    pub replies: &'static [Reply],
}

impl Route {
    /// Every rule the broker checks this route's request against, in the
    /// order it checks them: path, query, body.
    pub fn rules(&self) -> Vec<Rule> {
        let mut rules: Vec<Rule> = self.path_params.iter().map(|param| param.rule).collect();
        if let Some(query) = self.query {
            rules.extend([Rule::QueryEncoding, Rule::QueryShape]);
            rules.extend(query.rules);
        }
        if let Some(body) = self.request {
            match body.media {
                Media::Json => rules.extend(Rule::BODY),
                Media::Bytes => rules.extend(Rule::BYTES_BODY),
            }
            rules.extend(body.rules);
        }
        if let Kind::WebSocket { .. } = self.kind {
            rules.push(Rule::Upgrade);
        }
        rules
    }

    /// The limits the broker keeps on how this route's requests arrive: the
    /// connection's ([`Rule::CONNECTION`]), the body's time where there is a
    /// body, and the credential's rate where there is a credential.
    pub fn limits(&self) -> Vec<Rule> {
        let mut limits = Rule::CONNECTION.to_vec();
        if self.request.is_some() {
            limits.push(Rule::BodyTimeout);
        }
        if self.credential.is_some() {
            limits.push(Rule::RateLimit);
        }
        limits
    }

    /// Every status the route answers: its replies', its rules' and its limits'.
    pub fn statuses(&self) -> Vec<u16> {
        let mut statuses: Vec<u16> = self.replies.iter().map(|reply| reply.status).collect();
        statuses.extend(self.rules().iter().map(|rule| rule.status()));
        statuses.extend(self.limits().iter().map(|rule| rule.status()));
        statuses.sort_unstable();
        statuses.dedup();
        statuses
    }

    /// The path with each `{name}` segment replaced by the next of `values`,
    /// in order, e.g. `/v1/tasks/{id}` with `[id]` → `/v1/tasks/0190…`.
    /// Callers pass path-safe values (task ids are UUIDs).
    pub fn path_with(&self, values: &[&str]) -> String {
        let mut out = String::with_capacity(self.path.len() + 40);
        let mut values = values.iter();
        for (index, segment) in self.path.split('/').enumerate() {
            if index > 0 {
                out.push('/');
            }
            if segment.starts_with('{') && segment.ends_with('}') {
                let value = values
                    .next()
                    .unwrap_or_else(|| panic!("{} needs a value for {segment}", self.path));
                out.push_str(value);
            } else {
                out.push_str(segment);
            }
        }
        assert!(
            values.next().is_none(),
            "{} got more values than it has segments",
            self.path
        );
        out
    }
}

const TASK_ID: PathParam = PathParam {
    name: "id",
    schema: schema::<TaskId>,
    description: "The task's id: the full UUID, not a short prefix.",
    rule: Rule::TaskId,
};

const BLOB_HASH: PathParam = PathParam {
    name: "hash",
    schema: schema::<ContentHash>,
    description: "The blob's blake3 hash: 64 lowercase hex digits.",
    rule: Rule::BlobHash,
};

const ARTIFACT_NOT_FOUND: Reply = error(
    404,
    "No such task, one this client may not see, or an artifact the task does not name.",
);

const BLOB_NOT_FOUND: Reply = error(404, "The broker holds no blob with this hash.");

const fn ok(status: u16, body: SchemaFn, description: &'static str) -> Reply {
    Reply {
        status,
        body: Body::Json(body),
        description,
    }
}

const fn error(status: u16, description: &'static str) -> Reply {
    Reply {
        status,
        body: Body::Json(schema::<ApiError>),
        description,
    }
}

/// The 101 of a live tail: its messages are [`LiveFrame`]s.
const UPGRADED: Reply = Reply {
    status: 101,
    body: Body::Json(schema::<LiveFrame>),
    description: "Switching to the WebSocket: every text message is one LiveFrame (JSON). The tail replays from the cursor, sends a `live` frame, then follows live; the close code says whether to reconnect with the last seq seen (x-websocket).",
};

/// How a tail ends: every close but 1000 asks the reader to reconnect with its cursor.
const TAIL_CLOSES: &[LiveClose] = &[
    LiveClose::Finished,
    LiveClose::ShuttingDown,
    LiveClose::Internal,
    LiveClose::TooSlow,
];
const SESSION_TAIL_CLOSES: &[LiveClose] = &[LiveClose::ShuttingDown, LiveClose::Internal, LiveClose::TooSlow];
/// The control channel never finishes: every close asks the runner to connect again.
const CONTROL_CLOSES: &[LiveClose] = SESSION_TAIL_CLOSES;

const UNAUTHORIZED: Reply = error(401, "The credential is missing, malformed or wrong for this route.");
const CALLBACK_UNAUTHORIZED: Reply = error(
    401,
    "The credential is missing or is not the callback token of this task's current attempt (an unknown task included).",
);
const TASK_NOT_FOUND: Reply = error(
    404,
    "No such task, or one the caller's client token did not create (whether it exists is not told).",
);
const INTERNAL: Reply = error(500, "The broker's database failed; the broker log has the details.");

/// Every route the broker serves.
pub const ROUTES: &[Route] = &[
    Route {
        operation: Operation::Health,
        method: Method::Get,
        path: "/v1/health",
        summary: "Whether the broker is up, and its version.",
        credential: None,
        path_params: &[],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[ok(200, schema::<Health>, "The broker is up.")],
    },
    Route {
        operation: Operation::CreateTask,
        method: Method::Post,
        path: "/v1/tasks",
        summary: "Queue a task.",
        credential: Some(Credential::ClientSecret),
        path_params: &[],
        query: None,
        request: Some(body::<CreateTask>()),
        kind: Kind::Http,
        replies: &[
            ok(201, schema::<Task>, "The task, queued."),
            ok(
                200,
                schema::<Task>,
                "A retry: this credential already created a task with this client_request_id and the same body; the task as it is now.",
            ),
            UNAUTHORIZED,
            error(
                409,
                "`request_id_conflict`: this credential already created a task with this client_request_id from a different body.",
            ),
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::ListTasks,
        method: Method::Get,
        path: "/v1/tasks",
        summary: "A session's tasks, newest first.",
        credential: Some(Credential::ClientSecret),
        path_params: &[],
        query: Some(query::<TaskListQuery>()),
        request: None,
        kind: Kind::Http,
        replies: &[
            ok(
                200,
                schema::<TaskList>,
                "The session's tasks, newest first (for a client token, only those it created).",
            ),
            UNAUTHORIZED,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::GetTask,
        method: Method::Get,
        path: "/v1/tasks/{id}",
        summary: "One task.",
        credential: Some(Credential::ClientSecret),
        path_params: &[TASK_ID],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[
            ok(200, schema::<Task>, "The task."),
            UNAUTHORIZED,
            TASK_NOT_FOUND,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::ReadEvents,
        method: Method::Get,
        path: "/v1/tasks/{id}/events",
        summary: "A page of a task's events with seq > after, oldest first.",
        credential: Some(Credential::ClientSecret),
        path_params: &[TASK_ID],
        query: Some(query::<EventPageQuery>()),
        request: None,
        kind: Kind::Http,
        replies: &[
            ok(
                200,
                schema::<EventPage>,
                "The events with seq > after, oldest first; `last_seq` is the task's newest seq at read time.",
            ),
            UNAUTHORIZED,
            TASK_NOT_FOUND,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::EnrollRunner,
        method: Method::Post,
        path: "/v1/runners/enroll",
        summary: "Exchange the enrollment secret for a runner token.",
        credential: Some(Credential::EnrollmentSecret),
        path_params: &[],
        query: None,
        request: Some(body::<EnrollRunner>()),
        kind: Kind::Http,
        replies: &[
            ok(
                200,
                schema::<RunnerEnrolled>,
                "The runner's id and token (shown once, stored hashed).",
            ),
            UNAUTHORIZED,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::ListRunners,
        method: Method::Get,
        path: "/v1/runners",
        summary: "The enrolled runners and what each can run, oldest first.",
        credential: Some(Credential::ClientSecret),
        path_params: &[],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[
            ok(
                200,
                schema::<RunnerList>,
                "Every enrolled runner with its advertised capabilities (none for a runner that advertised nothing).",
            ),
            UNAUTHORIZED,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::ClaimTask,
        method: Method::Post,
        path: "/v1/runners/claim",
        summary: "Long-poll for the oldest queued task the runner can serve (of one of `repos`, when given), for up to min(wait_ms, 30000) ms.",
        credential: Some(Credential::RunnerToken),
        path_params: &[],
        query: None,
        request: Some(body::<ClaimRequest>()),
        kind: Kind::Http,
        replies: &[
            ok(
                200,
                schema::<Claim>,
                "The claimed task (now running), its attempt number and the attempt's callback token.",
            ),
            Reply {
                status: 204,
                body: Body::Empty,
                description: "No task came within the wait, or the broker is shutting down.",
            },
            UNAUTHORIZED,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::PeekQueue,
        method: Method::Post,
        path: "/v1/runners/peek",
        summary: "Long-poll, for up to min(wait_ms, 30000) ms, for the repositories of the queued tasks the runner can serve (but those in `exclude_repos`), without claiming any: a runner checks it can read them, then claims with `repos`.",
        credential: Some(Credential::RunnerToken),
        path_params: &[],
        query: None,
        request: Some(body::<PeekRequest>()),
        kind: Kind::Http,
        replies: &[
            ok(
                200,
                schema::<QueuedRepos>,
                "The repositories of queued tasks the runner can serve, the oldest task's first.",
            ),
            Reply {
                status: 204,
                body: Body::Empty,
                description: "No such task came within the wait, or the broker is shutting down.",
            },
            UNAUTHORIZED,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::AppendEvents,
        method: Method::Post,
        path: "/v1/tasks/{id}/events",
        summary: "Append a batch of events to a running task (idempotent per batch_id).",
        credential: Some(Credential::CallbackToken),
        path_params: &[TASK_ID],
        query: None,
        request: Some(body::<AppendEvents>()),
        kind: Kind::Http,
        replies: &[
            ok(
                200,
                schema::<EventsAppended>,
                "The batch's seqs; the original ones for a batch id already appended.",
            ),
            CALLBACK_UNAUTHORIZED,
            error(
                409,
                "The task is not running (for a new batch id), or the batch id belongs to an earlier attempt. A superseded attempt (the task was requeued or claimed again) gets code `superseded`: stop Pi and report nothing more.",
            ),
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::Heartbeat,
        method: Method::Post,
        path: "/v1/tasks/{id}/heartbeat",
        summary: "Renew the attempt's lease (every report renews it; heartbeat while nothing else is reported). A stale task becomes running again.",
        credential: Some(Credential::CallbackToken),
        path_params: &[TASK_ID],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[
            ok(200, schema::<Lease>, "The renewed lease."),
            CALLBACK_UNAUTHORIZED,
            error(
                409,
                "The attempt no longer holds the task: code `superseded` when the task was requeued or claimed again, `conflict` when it ended. Stop Pi and report nothing more.",
            ),
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::CompleteTask,
        method: Method::Post,
        path: "/v1/tasks/{id}/complete",
        summary: "Finish a running task's attempt: succeeded or failed.",
        credential: Some(Credential::CallbackToken),
        path_params: &[TASK_ID],
        query: None,
        request: Some(body::<CompleteTask>()),
        kind: Kind::Http,
        replies: &[
            ok(
                200,
                schema::<Task>,
                "The finished task with its outcome; the same task again when the same result is repeated.",
            ),
            CALLBACK_UNAUTHORIZED,
            error(
                409,
                "The task is not running (and did not already end with this result). A superseded attempt (the task was requeued or claimed again) gets code `superseded`.",
            ),
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::TailTask,
        method: Method::Get,
        path: "/v1/tasks/{id}/events/live",
        summary: "Follow one task over a WebSocket: its events after the cursor, then live, and its state changes; closed with 1000 once it finished and every event was sent.",
        credential: Some(Credential::ClientSecret),
        path_params: &[TASK_ID],
        query: Some(query::<TaskTailQuery>()),
        request: None,
        kind: Kind::WebSocket {
            frames: schema::<LiveFrame>,
            closes: TAIL_CLOSES,
        },
        replies: &[UPGRADED, UNAUTHORIZED, TASK_NOT_FOUND, INTERNAL],
    },
    Route {
        operation: Operation::TailSession,
        method: Method::Get,
        path: "/v1/events/live",
        summary: "Follow every task of a session over a WebSocket: a state frame per task, the events after each named cursor, then every event and state change live, tasks created later included.",
        credential: Some(Credential::ClientSecret),
        path_params: &[],
        query: Some(query::<SessionTailQuery>()),
        request: None,
        kind: Kind::WebSocket {
            frames: schema::<LiveFrame>,
            closes: SESSION_TAIL_CLOSES,
        },
        replies: &[UPGRADED, UNAUTHORIZED, INTERNAL],
    },
    Route {
        operation: Operation::CancelTask,
        method: Method::Post,
        path: "/v1/tasks/{id}/cancel",
        summary: "Cancel a task: a queued one at once (it never starts), a running one by telling its runner to stop Pi; idempotent.",
        credential: Some(Credential::ClientSecret),
        path_params: &[TASK_ID],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[
            ok(
                200,
                schema::<TaskCancel>,
                "What the cancel did (`cancel`) and the task after it: `cancelled` (it was queued), `requested` (its runner was told), `already_requested` or `already_cancelled` (a repeat: nothing changed).",
            ),
            UNAUTHORIZED,
            TASK_NOT_FOUND,
            error(
                409,
                "The task already succeeded or failed (code `already_finished`); its state is unchanged.",
            ),
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::RunnerControl,
        method: Method::Get,
        path: "/v1/runners/control",
        summary: "The runner's control channel over a WebSocket: every pending cancel request of its running tasks, a `live` frame, then each new one as a client makes it (on any replica).",
        credential: Some(Credential::RunnerToken),
        path_params: &[],
        query: None,
        request: None,
        kind: Kind::WebSocket {
            frames: schema::<ControlFrame>,
            closes: CONTROL_CLOSES,
        },
        replies: &[
            Reply {
                status: 101,
                body: Body::Json(schema::<ControlFrame>),
                description: "Switching to the WebSocket: every text message is one ControlFrame (JSON). Every close asks the runner to connect again (x-websocket).",
            },
            UNAUTHORIZED,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::Healthz,
        method: Method::Get,
        path: "/healthz",
        summary: "Liveness: the process is up and serving (it does not look at the database).",
        credential: None,
        path_params: &[],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[ok(200, schema::<Health>, "The broker process is up.")],
    },
    Route {
        operation: Operation::Readyz,
        method: Method::Get,
        path: "/readyz",
        summary: "Readiness: the database answers and every migration this broker knows is applied.",
        credential: None,
        path_params: &[],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[
            ok(200, schema::<Health>, "Ready to serve: status `ready`."),
            error(
                503,
                "Not ready: the database does not answer, lacks a migration, or the broker is shutting down.",
            ),
        ],
    },
    Route {
        operation: Operation::Metrics,
        method: Method::Get,
        path: "/metrics",
        summary: "Prometheus metrics: tasks by state, claim waits, events appended, live clients, connections, rate-limited requests, reaper actions.",
        credential: None,
        path_params: &[],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[
            Reply {
                status: 200,
                body: Body::Text("text/plain; version=0.0.4; charset=utf-8"),
                description: "The metrics in Prometheus' text exposition format.",
            },
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::PutBlob,
        method: Method::Put,
        path: "/v1/blobs/{hash}",
        summary: "Store a blob (an overlay file, a symlink target, a bundle) under its blake3 hash; storing one again changes nothing.",
        credential: Some(Credential::ClientSecret),
        path_params: &[BLOB_HASH],
        query: None,
        request: Some(bytes::<BlobBody>()),
        kind: Kind::Http,
        replies: &[
            Reply {
                status: 204,
                body: Body::Empty,
                description: "The blob is stored (or already was).",
            },
            UNAUTHORIZED,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::HeadBlob,
        method: Method::Head,
        path: "/v1/blobs/{hash}",
        summary: "Whether the broker holds a blob; its size in Content-Length.",
        credential: Some(Credential::ClientSecret),
        path_params: &[BLOB_HASH],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[
            Reply {
                status: 200,
                body: Body::Empty,
                description: "The broker holds the blob; Content-Length is its size.",
            },
            UNAUTHORIZED,
            BLOB_NOT_FOUND,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::GetBlob,
        method: Method::Get,
        path: "/v1/blobs/{hash}",
        summary: "A blob's bytes, for a runner hydrating a task's workspace; verify them against the hash.",
        credential: Some(Credential::RunnerToken),
        path_params: &[BLOB_HASH],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[
            Reply {
                status: 200,
                body: Body::Text("application/octet-stream"),
                description: "The blob's bytes.",
            },
            UNAUTHORIZED,
            BLOB_NOT_FOUND,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::MissingBlobs,
        method: Method::Post,
        path: "/v1/blobs/missing",
        summary: "Which of these blobs the broker lacks: upload only those.",
        credential: Some(Credential::ClientSecret),
        path_params: &[],
        query: None,
        request: Some(body::<BlobsQuery>()),
        kind: Kind::Http,
        replies: &[
            ok(200, schema::<MissingBlobs>, "The hashes the broker does not hold."),
            UNAUTHORIZED,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::PutArtifact,
        method: Method::Put,
        path: "/v1/tasks/{id}/artifacts/{hash}",
        summary: "Store an artifact of the attempt (its result bundle, Pi's session file) under its blake3 hash, before the verdict names it.",
        credential: Some(Credential::CallbackToken),
        path_params: &[TASK_ID, BLOB_HASH],
        query: None,
        request: Some(bytes::<BlobBody>()),
        kind: Kind::Http,
        replies: &[
            Reply {
                status: 204,
                body: Body::Empty,
                description: "The artifact's blob is stored (or already was).",
            },
            CALLBACK_UNAUTHORIZED,
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::GetArtifact,
        method: Method::Get,
        path: "/v1/tasks/{id}/artifacts/{hash}",
        summary: "An artifact of a task this client may see (one its artifacts list names); verify the bytes against the hash.",
        credential: Some(Credential::ClientSecret),
        path_params: &[TASK_ID, BLOB_HASH],
        query: None,
        request: None,
        kind: Kind::Http,
        replies: &[
            Reply {
                status: 200,
                body: Body::Text("application/octet-stream"),
                description: "The artifact's bytes.",
            },
            UNAUTHORIZED,
            ARTIFACT_NOT_FOUND,
            INTERNAL,
        ],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_exactly_one_route() {
        for operation in Operation::ALL {
            let count = ROUTES.iter().filter(|r| r.operation == operation).count();
            assert_eq!(count, 1, "{operation:?}");
            assert_eq!(operation.route().operation, operation);
        }
        assert_eq!(ROUTES.len(), Operation::ALL.len());
    }

    #[test]
    fn refusals_of_bad_input_come_from_rules_only() {
        for route in ROUTES {
            let rule_statuses: Vec<u16> = route.rules().iter().map(|rule| rule.status()).collect();
            for reply in route.replies {
                assert!(
                    !rule_statuses.contains(&reply.status),
                    "{} {}: {} is a rule's status; it is documented from the rules",
                    route.method.as_str(),
                    route.path,
                    reply.status
                );
            }
        }
        let create = Operation::CreateTask.route();
        assert_eq!(
            create.statuses(),
            [200, 201, 400, 401, 408, 409, 413, 414, 415, 422, 429, 431, 500]
        );
        assert_eq!(
            Operation::GetTask.route().statuses(),
            [200, 400, 401, 404, 408, 414, 422, 429, 431, 500]
        );
        assert_eq!(
            Operation::TailTask.route().statuses(),
            [101, 400, 401, 404, 408, 414, 422, 426, 429, 431, 500]
        );
    }

    #[test]
    fn paths_are_filled_in_order() {
        let id = TaskId::new();
        assert_eq!(Operation::Health.route().path_with(&[]), "/v1/health");
        assert_eq!(
            Operation::AppendEvents.route().path_with(&[&id.to_string()]),
            format!("/v1/tasks/{id}/events")
        );
    }

    #[test]
    #[should_panic(expected = "needs a value")]
    fn a_missing_value_is_a_bug() {
        let _ = Operation::GetTask.route().path_with(&[]);
    }
}
