//! The way in for every client write and linearizable read, on any node.
//!
//! ```text
//!  write ─▶ leader? ──yes──▶ batcher ── one Proposal per batch ──▶ raft.client_write ─▶ outcome
//!             │no                (requests queued while earlier batches are in flight
//!             ▼                   ride together: one log entry, one fsync, one round)
//!          Forward RPC to the leader (which proposes locally, never forwards again)
//! ```
//!
//! Writes always carry a request id (the client's, or one minted here), so every retry in this
//! module — after a leader change, a lost forward, a timeout — is answered once by apply's
//! session table, never applied twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use paddock_api::forward::{ForwardReply, ForwardRequest};
use paddock_api::pb::raft_client::RaftClient;
use paddock_api::pb::RaftMessage;
use paddock_model::{
    codec, ClientRequest, Command, Outcome, Proposal, Query, QueryResult, RequestId,
};
use paddock_raft::network::Routes;
use paddock_raft::{NodeId, Raft, SharedState};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::{Channel, ClientTlsConfig};

use crate::metrics::NodeMetrics;

/// How long a write or read keeps retrying (leader changes, forwarding) before giving up.
const REQUEST_DEADLINE: Duration = Duration::from_secs(8);
/// Most client requests in one log entry.
const MAX_BATCH: usize = 512;
/// Most log entries proposed and not yet committed at once by this leader.
const MAX_IN_FLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader could be reached within {0:?}: a majority of the cluster may be down or partitioned; the write may or may not have been applied, retry it with the same request id")]
    Unavailable(Duration),
    #[error("this node is not the leader")]
    NotLeader,
    #[error("this node is shutting down; retry on another node")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ProposeError> for tonic::Status {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Internal(_) => tonic::Status::internal(e.to_string()),
            _ => tonic::Status::unavailable(e.to_string()),
        }
    }
}

struct PendingWrite {
    request: ClientRequest,
    queued: Instant,
    reply: oneshot::Sender<Result<Outcome, ProposeError>>,
}

/// Submits writes and reads for this node (see the module docs).
pub struct Proposer {
    raft: Raft,
    node_id: NodeId,
    shared: SharedState,
    batcher: mpsc::UnboundedSender<PendingWrite>,
    tls: ClientTlsConfig,
    /// Where to dial peers whose address is overridden (`--route`).
    routes: Routes,
    /// Channels to other nodes by address, reused across forwards.
    peers: Mutex<HashMap<String, Channel>>,
    metrics: Arc<NodeMetrics>,
    /// (term, last log index) when this process first served a read as leader of that term:
    /// see [`Proposer::read_floor`].
    read_floor: Mutex<Option<(u64, u64)>>,
}

impl Proposer {
    pub fn new(
        raft: Raft,
        node_id: NodeId,
        shared: SharedState,
        tls: ClientTlsConfig,
        routes: Routes,
        metrics: Arc<NodeMetrics>,
    ) -> Arc<Proposer> {
        let (batcher, queue) = mpsc::unbounded_channel();
        tokio::spawn(run_batcher(raft.clone(), queue, metrics.clone()));
        Arc::new(Proposer {
            raft,
            node_id,
            shared,
            batcher,
            tls,
            routes,
            peers: Mutex::default(),
            metrics,
            read_floor: Mutex::default(),
        })
    }

    /// The log index a leader must have applied before its first linearizable read in a term.
    ///
    /// openraft's read index is `max(first entry of this leader's term, commit index)`. That is
    /// only right while the leader knows the true commit index. A leader restored at startup
    /// (openraft brings a node back as leader at once when it restarts with a committed vote
    /// for itself) knows only the commit index it last persisted, which can be older than what
    /// clients were already told; it would answer reads from a state missing acknowledged
    /// writes. Every committed entry is in the leader's log (leader completeness), so having
    /// applied up to the leader's last log index at its first read in a term is enough; reads
    /// after that are covered by the commit index this process has seen advance itself.
    fn read_floor(&self) -> u64 {
        let metrics = self.raft.metrics().borrow().clone();
        let Ok(mut floor) = self.read_floor.lock() else {
            return metrics.last_log_index.unwrap_or(0);
        };
        match *floor {
            Some((term, index)) if term == metrics.current_term => index,
            _ => {
                let index = metrics.last_log_index.unwrap_or(0);
                *floor = Some((metrics.current_term, index));
                index
            }
        }
    }

    /// The leader as this node knows it: its id and address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some((leader, self.routes.address(node).to_string()))
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The leader's address when another node leads.
    pub fn leader_elsewhere(&self) -> Option<String> {
        self.leader()
            .filter(|(id, _)| *id != self.node_id)
            .map(|(_, address)| address)
    }

    /// A channel to the node at `address`.
    pub fn channel(&self, address: &str) -> Result<Channel, ProposeError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = peers.get(address) {
            return Ok(channel.clone());
        }
        let channel = paddock_raft::network::channel_to(address, &self.tls)
            .map_err(ProposeError::Internal)?;
        peers.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Applies `request` through the leader, wherever it is, retrying until the deadline.
    pub async fn write(&self, mut request: ClientRequest) -> Result<Outcome, ProposeError> {
        if let Err(rejection) = request.command.validate() {
            return Ok(Err(rejection));
        }
        if request.id.is_none() {
            // A session of its own: concurrent id-less writes must not look like one client's
            // out-of-order retries. Sessions are capped and expire, see the model.
            request.id = Some(RequestId {
                client: fastrand::u64(1..),
                seq: 1,
            });
        }
        let result = self
            .until_answered(
                ForwardRequest::Write(Box::new(request)),
                |reply| match reply {
                    ForwardReply::Written(outcome) => Some(outcome),
                    ForwardReply::Read(_) => None,
                },
            )
            .await;
        self.metrics.count_write(match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "rejected",
            Err(_) => "error",
        });
        result
    }

    /// Answers `query` linearizably (read-index on the leader), or from this replica if `stale`.
    pub async fn read(&self, query: Query, stale: bool) -> Result<QueryResult, ProposeError> {
        if stale {
            return Ok(self.shared.read().state.query(&query));
        }
        self.until_answered(ForwardRequest::Read(query), |reply| match reply {
            ForwardReply::Read(result) => Some(result),
            ForwardReply::Written(_) => None,
        })
        .await
    }

    async fn until_answered<T>(
        &self,
        request: ForwardRequest,
        pick: impl Fn(ForwardReply) -> Option<T>,
    ) -> Result<T, ProposeError> {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        let mut metrics = self.raft.metrics();
        loop {
            let attempt = match self.leader() {
                Some((leader, _)) if leader == self.node_id => {
                    self.serve_as_leader(request.clone()).await
                }
                Some((_, address)) => self.forward(&address, &request).await,
                None => Err(ProposeError::NotLeader),
            };
            match attempt {
                Ok(reply) => {
                    return pick(reply).ok_or_else(|| {
                        ProposeError::Internal("leader answered another request kind".into())
                    })
                }
                Err(ProposeError::ShuttingDown) => return Err(ProposeError::ShuttingDown),
                Err(_) if Instant::now() >= deadline => {
                    return Err(ProposeError::Unavailable(REQUEST_DEADLINE))
                }
                Err(_) => {
                    // Wait for news about the leader, but not long: a forward may have failed
                    // for reasons metrics do not show.
                    let wait = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(50));
                    let _ = tokio::time::timeout(wait, metrics.changed()).await;
                }
            }
        }
    }

    /// Proposes a decision of this node's own leadership (a node declared down, a migration
    /// timed out): only while this node leads, and never forwarded. A deposed leader (one
    /// that was paused, say) must not have its stale view committed by the next leader.
    pub async fn write_as_leader(&self, command: Command) -> Result<Outcome, ProposeError> {
        if self.leader().map(|(leader, _)| leader) != Some(self.node_id) {
            return Err(ProposeError::NotLeader);
        }
        if let Err(rejection) = command.validate() {
            return Ok(Err(rejection));
        }
        let request = ClientRequest {
            id: Some(RequestId {
                client: fastrand::u64(1..),
                seq: 1,
            }),
            command,
            caller: None,
        };
        match self
            .serve_as_leader(ForwardRequest::Write(Box::new(request)))
            .await?
        {
            ForwardReply::Written(outcome) => Ok(outcome),
            ForwardReply::Read(_) => Err(ProposeError::Internal(
                "leader answered another request kind".into(),
            )),
        }
    }

    /// Serves a request on this node, which must be the leader (a forwarded request, or one
    /// of our own clients'). Never forwards.
    pub async fn serve_as_leader(
        &self,
        request: ForwardRequest,
    ) -> Result<ForwardReply, ProposeError> {
        match request {
            ForwardRequest::Write(request) => {
                let (reply, answer) = oneshot::channel();
                self.batcher
                    .send(PendingWrite {
                        request: *request,
                        queued: Instant::now(),
                        reply,
                    })
                    .map_err(|_| ProposeError::ShuttingDown)?;
                match tokio::time::timeout(REQUEST_DEADLINE, answer).await {
                    Ok(Ok(result)) => result.map(ForwardReply::Written),
                    Ok(Err(_)) => Err(ProposeError::NotLeader),
                    Err(_) => Err(ProposeError::Unavailable(REQUEST_DEADLINE)),
                }
            }
            ForwardRequest::Read(query) => {
                let floor = self.read_floor();
                let confirmed = async {
                    let read_index =
                        self.raft.ensure_linearizable().await.map_err(|e| match e {
                            RaftError::Fatal(_) => ProposeError::ShuttingDown,
                            RaftError::APIError(_) => ProposeError::NotLeader,
                        })?;
                    if read_index.map_or(0, |id| id.index) < floor {
                        self.raft
                            .wait(None)
                            .applied_index_at_least(Some(floor), "read floor")
                            .await
                            .map_err(|_| ProposeError::ShuttingDown)?;
                    }
                    Ok(())
                };
                match tokio::time::timeout(REQUEST_DEADLINE, confirmed).await {
                    Ok(Ok(())) => Ok(ForwardReply::Read(self.shared.read().state.query(&query))),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(ProposeError::Unavailable(REQUEST_DEADLINE)),
                }
            }
        }
    }

    async fn forward(
        &self,
        address: &str,
        request: &ForwardRequest,
    ) -> Result<ForwardReply, ProposeError> {
        self.metrics.forwarded.inc();
        let data = codec::encode(request).map_err(|e| ProposeError::Internal(e.to_string()))?;
        let mut client = RaftClient::new(self.channel(address)?);
        let mut message = tonic::Request::new(RaftMessage { data });
        message.set_timeout(REQUEST_DEADLINE);
        let reply = client.forward(message).await.map_err(|status| {
            tracing::debug!(%address, %status, "forward to the leader failed");
            ProposeError::NotLeader
        })?;
        codec::decode(&reply.into_inner().data).map_err(|e| ProposeError::Internal(e.to_string()))
    }
}

/// Collects queued writes into proposals: waits for a free in-flight slot, then takes
/// everything queued (up to [`MAX_BATCH`]) as one log entry.
async fn run_batcher(
    raft: Raft,
    mut queue: mpsc::UnboundedReceiver<PendingWrite>,
    metrics: Arc<NodeMetrics>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        metrics.batch_size.observe(batch.len() as f64);
        metrics.proposer_queue.set(queue.len() as i64);
        metrics
            .proposals_in_flight
            .set((MAX_IN_FLIGHT - slots.available_permits()) as i64);
        let raft = raft.clone();
        let metrics = metrics.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            let proposal = Proposal {
                at_ms: wall_clock_ms(),
                requests: batch.iter().map(|p| p.request.clone()).collect(),
            };
            let result = raft.client_write(proposal).await;
            match result {
                Ok(response) if response.data.len() == batch.len() => {
                    for (pending, outcome) in batch.into_iter().zip(response.data) {
                        metrics
                            .commit_seconds
                            .observe(pending.queued.elapsed().as_secs_f64());
                        let _ = pending.reply.send(Ok(outcome));
                    }
                }
                Ok(_) => {
                    for pending in batch {
                        let _ = pending.reply.send(Err(ProposeError::Internal(
                            "apply answered a different number of outcomes".into(),
                        )));
                    }
                }
                Err(error) => {
                    let shutting_down = matches!(error, RaftError::Fatal(_));
                    if !matches!(
                        error,
                        RaftError::APIError(ClientWriteError::ForwardToLeader(_))
                    ) {
                        tracing::debug!(%error, "proposal failed");
                    }
                    for pending in batch {
                        let _ = pending.reply.send(Err(if shutting_down {
                            ProposeError::ShuttingDown
                        } else {
                            ProposeError::NotLeader
                        }));
                    }
                }
            }
            drop(slot);
            metrics
                .proposals_in_flight
                .set((MAX_IN_FLIGHT - slots.available_permits()) as i64);
        });
    }
}

/// The proposer's wall clock, stamped into each proposal (apply never reads a clock).
pub(crate) fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
