//! The Events service: the cluster's event log, read a page at a time or followed live.

use std::pin::Pin;
use std::sync::Arc;

use paddock_api::pb::{self, events_server};
use paddock_model::events::{ClusterEvent, EventKind, EventPage, MAX_EVENTS_PER_READ};
use paddock_model::{Query, QueryResult};
use tonic::{Request, Response, Status};

use super::{authorized, caller, reply, unexpected};
use crate::ops::{Action, Ops};

pub struct EventsService {
    pub ops: Arc<Ops>,
    pub raft: paddock_raft::Raft,
}

/// The query an events request is, or why it is invalid (an unknown kind).
pub fn events_query(r: &pb::EventsRequest) -> Result<Query, Status> {
    let mut kinds = Vec::new();
    for text in &r.kinds {
        let matching = EventKind::matching(text);
        if matching.is_empty() {
            let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
            return Err(Status::invalid_argument(format!(
                "no event kind is called {text:?}; kinds are {} (or a prefix such as vm)",
                known.join(", ")
            )));
        }
        kinds.extend(matching);
    }
    Ok(Query::Events {
        after: r.after,
        kinds,
        subject: (!r.subject.is_empty()).then(|| r.subject.clone()),
        limit: if r.limit == 0 {
            MAX_EVENTS_PER_READ
        } else {
            r.limit
        },
    })
}

pub fn event_message(e: &ClusterEvent) -> pb::Event {
    pb::Event {
        seq: e.seq,
        at_ms: e.at_ms,
        kind: e.kind.name().to_string(),
        subject: e.subject.clone(),
        message: e.message.clone(),
    }
}

pub fn page_message(page: &EventPage) -> pb::EventsPage {
    pb::EventsPage {
        events: page.events.iter().map(event_message).collect(),
        last_seq: page.last_seq,
        first_kept: page.first_kept,
    }
}

/// Follows this node's replica: every event after `after` that matches, as it is applied.
/// The numbers are the same on every replica, so a client that loses this node resumes on
/// another after the last number it received.
pub fn follow(
    ops: Arc<Ops>,
    raft: paddock_raft::Raft,
    query: Query,
) -> tokio::sync::mpsc::Receiver<pb::Event> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        let Query::Events {
            mut after,
            kinds,
            subject,
            ..
        } = query
        else {
            return;
        };
        let mut applied = raft.metrics();
        loop {
            let page = ops.shared().read().state.events.page(
                after,
                &kinds,
                subject.as_deref(),
                MAX_EVENTS_PER_READ,
            );
            // Skipped (filtered out) events still move the position on.
            let scanned_to = page
                .events
                .last()
                .map_or(page.last_seq, |e| e.seq)
                .max(after);
            let full = page.events.len() as u32 == MAX_EVENTS_PER_READ;
            for event in &page.events {
                if tx.send(event_message(event)).await.is_err() {
                    return;
                }
            }
            after = if full { scanned_to } else { page.last_seq };
            if full {
                continue;
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    rx
}

type FollowStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl events_server::Events for EventsService {
    async fn list(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<pb::EventsPage>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let query = events_query(&r)?;
        match self.ops.read(&who, query, r.stale).await? {
            QueryResult::Events(page) => Ok(reply(self.ops.proposer(), page_message(&page))),
            other => Err(unexpected(&other)),
        }
    }

    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        authorized(&self.ops, &request, Action::EventRead).await?;
        let query = events_query(request.get_ref())?;
        let events = follow(self.ops.clone(), self.raft.clone(), query);
        use tokio_stream::StreamExt;
        let stream = tokio_stream::wrappers::ReceiverStream::new(events).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }
}
