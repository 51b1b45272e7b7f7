//! `/events`: the cluster's event log, as JSON pages or as Server-Sent Events
//! (`Accept: text/event-stream`), each event's `id` its cluster-wide number so an
//! EventSource that reconnects — to this node or another — resumes with `Last-Event-ID`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use paddock_api::pb;
use paddock_api::pb::events_server::Events as _;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::problem::{Params, Problem};
use super::Api;
use crate::ops::Action;

pub fn routes() -> OpenApiRouter<Api> {
    OpenApiRouter::new().routes(routes!(events))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Events after this number (the last one seen); `Last-Event-ID` wins when both are given.
    pub since: Option<u64>,
    /// Comma-separated kinds or prefixes: `vm.failed,node` [default: all].
    pub kind: Option<String>,
    /// Only events about this VM, node, member, setting or image.
    pub subject: Option<String>,
    /// Events per page, 1–1000 [default: 1000] (JSON only).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The events after `since`: a JSON page, or with `Accept: text/event-stream` a live stream
/// (event `paddock`, `id` = sequence number, data = the event as JSON; a comment every 15 s
/// keeps proxies from closing it).
#[utoipa::path(get, path = "/events", tag = "events", params(EventParams,
        ("Last-Event-ID" = Option<String>, Header, description = "resume a stream after this number (what an EventSource sends back; ignored unless a number)")),
    responses((status = 200, content(
        (pb::EventsPage = "application/json"),
        (String = "text/event-stream")))))]
async fn events(
    State(api): State<Api>,
    caller: Caller,
    headers: HeaderMap,
    Params(params): Params<EventParams>,
) -> Result<Response, Problem> {
    // An EventSource sends back the last id it saw; one that is not a number is ignored.
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    // Numbers are int64 in the document (and far below its end in any cluster).
    if [last_event_id, params.since]
        .into_iter()
        .flatten()
        .any(|n| n > i64::MAX as u64)
    {
        return Err(Problem::bad_request(
            "since must be an event number below 2^63",
        ));
    }
    let limit = params.limit.unwrap_or(1000);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid(format!(
            "limit must be 1–1000, not {limit}"
        )));
    }
    let request = pb::EventsRequest {
        after: last_event_id.or(params.since).unwrap_or(0),
        kinds: params
            .kind
            .iter()
            .flat_map(|k| k.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect(),
        subject: params.subject.unwrap_or_default(),
        limit,
        stale: false,
    };
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_stream {
        let page = api.services.events.list(caller.request(request)).await?;
        return Ok(Json(page.into_inner()).into_response());
    }
    api.ops
        .authorize(&caller.who, Action::EventRead)
        .await
        .map_err(|e| Problem::from(tonic::Status::from(e)))?;
    let query = crate::service::events::events_query(&request)?;
    let events = crate::service::events::follow(api.ops.clone(), api.raft.clone(), query);
    let stream = futures::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        let data = serde_json::to_string(&event).unwrap_or_default();
        let sse = SseEvent::default()
            .event("paddock")
            .id(event.seq.to_string())
            .data(data);
        Some((Ok::<_, Infallible>(sse), events))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
