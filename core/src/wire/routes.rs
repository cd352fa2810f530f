//! Every route of the broker API, as data: the broker builds its router from
//! [`ROUTES`], `schemas/v1/broker.openapi.json` is generated from it, and the
//! broker's route test probes the running broker with it. A route exists
//! only if it is in this table.
//!
//! Statuses are the ones the broker really answers; every non-2xx answer
//! carries an [`ApiError`] body. Besides these, any route answers 405 to a
//! method it does not have, and any path not here answers 404.

use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::{
    ApiError, AppendEvents, Claim, ClaimRequest, CompleteTask, CreateTask, EnrollRunner, EventPage, EventPageQuery,
    EventsAppended, Health, RunnerEnrolled, Task, TaskList, TaskListQuery,
};
use crate::schema::{SchemaFn, schema};
use crate::task::TaskId;

/// The HTTP methods the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// The bearer credential a route needs (`Authorization: Bearer <credential>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The broker's client secret (sidecars).
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
            Credential::ClientSecret => "client secret",
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
                "The broker's client secret (EMBARK_CLIENT_SECRET), held by sidecars: create, list and read tasks."
            }
            Credential::EnrollmentSecret => {
                "The broker's runner enrollment secret (EMBARK_RUNNER_ENROLLMENT_SECRET), exchanged for a runner token."
            }
            Credential::RunnerToken => "A runner token (`embark_rt_…`) from POST /v1/runners/enroll: claim tasks.",
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
    ClaimTask,
    AppendEvents,
    CompleteTask,
}

impl Operation {
    pub const ALL: [Operation; 9] = [
        Operation::Health,
        Operation::CreateTask,
        Operation::ListTasks,
        Operation::GetTask,
        Operation::ReadEvents,
        Operation::EnrollRunner,
        Operation::ClaimTask,
        Operation::AppendEvents,
        Operation::CompleteTask,
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
            Operation::ClaimTask => "claimTask",
            Operation::AppendEvents => "appendEvents",
            Operation::CompleteTask => "completeTask",
        }
    }
}

/// The inline object schema of a query type; each property is one query parameter.
pub fn query<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    T::json_schema(generator)
}

/// A `{name}` segment of a route's path.
#[derive(Clone, Copy, Debug)]
pub struct PathParam {
    pub name: &'static str,
    pub schema: SchemaFn,
    pub description: &'static str,
}

/// One answer a route can give.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub status: u16,
    /// The JSON body's type; `None` for an empty body.
    pub body: Option<SchemaFn>,
    pub description: &'static str,
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
    pub query: Option<SchemaFn>,
    /// The JSON request body's type.
    pub request: Option<SchemaFn>,
    pub replies: &'static [Reply],
}

impl Route {
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
};

const fn ok(status: u16, body: SchemaFn, description: &'static str) -> Reply {
    Reply {
        status,
        body: Some(body),
        description,
    }
}

const fn error(status: u16, description: &'static str) -> Reply {
    Reply {
        status,
        body: Some(schema::<ApiError>),
        description,
    }
}

const MALFORMED_JSON: Reply = error(400, "The body is not JSON.");
const BAD_QUERY: Reply = error(
    400,
    "The query misses a required field, has an unknown one, or has a value of the wrong type.",
);
const UNAUTHORIZED: Reply = error(401, "The credential is missing, malformed or wrong for this route.");
const CALLBACK_UNAUTHORIZED: Reply = error(
    401,
    "The credential is missing or is not the callback token of this task's current attempt (an unknown task included).",
);
const TASK_NOT_FOUND: Reply = error(404, "No such task.");
const TOO_LARGE: Reply = error(
    413,
    "The request is larger than the broker accepts (see embark_core::limits).",
);
const NOT_JSON: Reply = error(415, "The body is not sent as `Content-Type: application/json`.");
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
        request: Some(schema::<CreateTask>),
        replies: &[
            ok(201, schema::<Task>, "The task, queued."),
            MALFORMED_JSON,
            UNAUTHORIZED,
            TOO_LARGE,
            NOT_JSON,
            error(
                422,
                "The task fails validation (CreateTask::validate, e.g. a repo_url carrying a credential), or the body has an unknown or missing field.",
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
        query: Some(query::<TaskListQuery>),
        request: None,
        replies: &[
            ok(200, schema::<TaskList>, "The session's tasks, newest first."),
            BAD_QUERY,
            UNAUTHORIZED,
            error(422, "`limit` is 0."),
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
        replies: &[
            ok(200, schema::<Task>, "The task."),
            UNAUTHORIZED,
            TASK_NOT_FOUND,
            error(422, "The id is not a UUID."),
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
        query: Some(query::<EventPageQuery>),
        request: None,
        replies: &[
            ok(
                200,
                schema::<EventPage>,
                "The events with seq > after, oldest first; `last_seq` is the task's newest seq at read time.",
            ),
            BAD_QUERY,
            UNAUTHORIZED,
            TASK_NOT_FOUND,
            error(422, "The id is not a UUID, or `limit` is 0."),
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
        request: Some(schema::<EnrollRunner>),
        replies: &[
            ok(
                200,
                schema::<RunnerEnrolled>,
                "The runner's id and token (shown once, stored hashed).",
            ),
            MALFORMED_JSON,
            UNAUTHORIZED,
            TOO_LARGE,
            NOT_JSON,
            error(
                422,
                "The runner name is empty, too long or holds control characters, or the body has an unknown or missing field.",
            ),
            INTERNAL,
        ],
    },
    Route {
        operation: Operation::ClaimTask,
        method: Method::Post,
        path: "/v1/runners/claim",
        summary: "Long-poll for the oldest queued task, for up to min(wait_ms, 30000) ms.",
        credential: Some(Credential::RunnerToken),
        path_params: &[],
        query: None,
        request: Some(schema::<ClaimRequest>),
        replies: &[
            ok(
                200,
                schema::<Claim>,
                "The claimed task (now running), its attempt number and the attempt's callback token.",
            ),
            Reply {
                status: 204,
                body: None,
                description: "No task came within the wait, or the broker is shutting down.",
            },
            MALFORMED_JSON,
            UNAUTHORIZED,
            TOO_LARGE,
            NOT_JSON,
            error(422, "The body has an unknown or missing field."),
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
        request: Some(schema::<AppendEvents>),
        replies: &[
            ok(
                200,
                schema::<EventsAppended>,
                "The batch's seqs; the original ones for a batch id already appended.",
            ),
            MALFORMED_JSON,
            CALLBACK_UNAUTHORIZED,
            error(
                409,
                "The task is not running (for a new batch id), or the batch id belongs to an earlier attempt.",
            ),
            error(
                413,
                "The body, the batch (more than 500 events) or an event's payload (more than 256 KiB) is too large.",
            ),
            NOT_JSON,
            error(
                422,
                "The id is not a UUID, the batch_id is not acceptable, the batch is empty, or the body has an unknown or missing field.",
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
        request: Some(schema::<CompleteTask>),
        replies: &[
            ok(
                200,
                schema::<Task>,
                "The finished task with its outcome; the same task again when the same result is repeated.",
            ),
            MALFORMED_JSON,
            CALLBACK_UNAUTHORIZED,
            error(
                409,
                "The task is not running (and did not already end with this result).",
            ),
            error(
                413,
                "The body, or its final_text or reason (more than 1 MiB each), is too large.",
            ),
            NOT_JSON,
            error(
                422,
                "The id is not a UUID, or the body has an unknown or missing field.",
            ),
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
