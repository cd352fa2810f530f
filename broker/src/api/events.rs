//! Event routes: append (callback token of the current attempt), read (a
//! client credential that may see the task).

use axum::Json;
use axum::extract::State;
use embark_core::limits;
use embark_core::wire::{AppendEvents, EventPage, EventPageQuery, EventsAppended};

use super::App;
use super::error::ApiFailure;
use super::extract::{ApiJson, ApiQuery, CallbackCaller, ClientCaller, TaskPath};
use super::tasks::page_limit;
use crate::access::visible_task;
use crate::store::{EncodedEvent, Seen, Store};

const DEFAULT_PAGE_LIMIT: u32 = 100;

pub async fn append<S: Store>(
    CallbackCaller(token): CallbackCaller,
    State(app): State<App<S>>,
    TaskPath(id): TaskPath,
    ApiJson(request): ApiJson<AppendEvents>,
) -> Result<Json<EventsAppended>, ApiFailure> {
    // Each payload serialized once, as it is stored.
    let events: Vec<EncodedEvent> = request.events.iter().map(EncodedEvent::new).collect();
    let appended = app.store.append_events(id, &token, &request.batch_id, &events).await?;
    app.hub.touch(id);
    app.metrics.events_appended(events.len());
    tracing::debug!(
        task = %id,
        batch = %request.batch_id,
        first = appended.first_seq,
        last = appended.last_seq,
        "events appended"
    );
    Ok(Json(appended))
}

pub async fn read<S: Store>(
    ClientCaller(caller): ClientCaller,
    State(app): State<App<S>>,
    TaskPath(id): TaskPath,
    ApiQuery(query): ApiQuery<EventPageQuery>,
) -> Result<Json<EventPage>, ApiFailure> {
    visible_task(&app.store, &caller, id).await?;
    let limit = page_limit(query.limit, DEFAULT_PAGE_LIMIT, limits::MAX_EVENTS_PER_PAGE);
    let page = app.store.events_after(id, query.after.unwrap_or(0), limit).await?;
    app.seen.mark(&app.store, &app.clock, Seen::Task(id)).await;
    Ok(Json(page))
}
