//! A client of the Paddock API that tries several endpoints in turn.
//!
//! Any node serves any request, so a client only needs one reachable node. When a call fails in
//! a way that says nothing about the request (node down, connection refused, timeout, no leader
//! yet), the client moves on to the next endpoint and retries until its deadline. Writes carry a
//! [`RequestId`] that stays the same across these retries, so a write whose answer was lost is
//! answered from the cluster's record instead of being applied twice.

use std::future::Future;
use std::time::{Duration, Instant};

use paddock_model::RequestId;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::pb::{
    self, access_client::AccessClient, audit_client::AuditClient, cluster_client::ClusterClient,
    events_client::EventsClient, kv_client::KvClient, migrations_client::MigrationsClient,
    nodes_client::NodesClient, settings_client::SettingsClient, tokens_client::TokensClient,
    vms_client::VmsClient,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no endpoint given: pass --endpoint HOST:PORT or set PADDOCK_ENDPOINT")]
    NoEndpoints,
    #[error("invalid endpoint {endpoint:?}: expected HOST:PORT, for example 127.0.0.1:7001")]
    BadEndpoint { endpoint: String },
    #[error("{message}")]
    Refused { code: Code, message: String },
    #[error("no node answered within {waited:?} (tried {endpoints}); last error: {last}. Check that the nodes run, that --endpoint is right, and that --certs-dir holds certificates of this cluster's CA")]
    Unreachable {
        waited: Duration,
        endpoints: String,
        last: String,
    },
}

impl ClientError {
    /// The gRPC code the server answered, when the server refused the request.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Connections to one cluster, one lazily connected channel per endpoint.
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    /// Index of the endpoint that answered last; calls start there.
    current: usize,
    client_id: u64,
    next_seq: u64,
    /// How long one call keeps retrying before giving up.
    deadline: Duration,
}

impl Client {
    /// Prepares channels to `endpoints` (`host:port`); nothing is connected until the first call.
    pub fn new(
        endpoints: &[String],
        tls: ClientTlsConfig,
        deadline: Duration,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let attempt = deadline.min(Duration::from_secs(5));
        let channels = endpoints
            .iter()
            .map(|endpoint| {
                let bad = || ClientError::BadEndpoint {
                    endpoint: endpoint.clone(),
                };
                if endpoint.contains("://") || !endpoint.contains(':') {
                    return Err(bad());
                }
                Ok(Endpoint::from_shared(format!("https://{endpoint}"))
                    .map_err(|_| bad())?
                    .tls_config(tls.clone())
                    .map_err(|_| bad())?
                    .connect_timeout(Duration::from_millis(1000).min(attempt))
                    .timeout(attempt)
                    .tcp_nodelay(true)
                    .connect_lazy())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Client {
            endpoints: endpoints.to_vec(),
            channels,
            current: fastrand::usize(..endpoints.len()),
            client_id: fastrand::u64(1..),
            next_seq: 1,
            deadline,
        })
    }

    /// A fresh request id for the next write; reuse it for every retry of that write.
    pub fn next_request_id(&mut self) -> RequestId {
        let id = RequestId {
            client: self.client_id,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        id
    }

    /// Runs `call` against the endpoints until one answers or the deadline passes. `call` gets
    /// a channel and must be safe to repeat (reads, or writes carrying a request id).
    ///
    /// A follower that served a request names the leader in the `paddock-leader` response
    /// header; later calls go straight to the leader, saving the forwarding hop.
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut failures_in_round = 0;
        loop {
            let channel = self.channels[self.current].clone();
            let remaining = self.deadline.saturating_sub(started.elapsed());
            let last = match tokio::time::timeout(remaining, call(channel)).await {
                Ok(Ok(response)) => {
                    if let Some(leader) = response.metadata().get(LEADER_HEADER) {
                        if let Ok(leader) = leader.to_str() {
                            self.prefer(leader);
                        }
                    }
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) if !is_retryable(&status) => {
                    return Err(ClientError::Refused {
                        code: status.code(),
                        message: status.message().to_string(),
                    })
                }
                Ok(Err(status)) => describe(&status),
                Err(_) => "timed out".to_string(),
            };
            if started.elapsed() >= self.deadline {
                return Err(ClientError::Unreachable {
                    waited: self.deadline,
                    endpoints: self.endpoints.join(", "),
                    last: format!("{}: {last}", self.endpoints[self.current]),
                });
            }
            self.current = (self.current + 1) % self.channels.len();
            failures_in_round += 1;
            if failures_in_round >= self.channels.len() {
                // Every endpoint failed once: wait a little (an election may be under way).
                failures_in_round = 0;
                tokio::time::sleep(backoff.min(self.deadline.saturating_sub(started.elapsed())))
                    .await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// Response header in which a follower names the leader's address.
pub const LEADER_HEADER: &str = "paddock-leader";

impl Client {
    /// Makes `address` the endpoint tried first, if it is one of ours (a client only talks to
    /// the endpoints it was given).
    fn prefer(&mut self, address: &str) {
        if let Some(i) = self.endpoints.iter().position(|e| e == address) {
            self.current = i;
        }
    }
}

/// Failures that say nothing about the request itself: another node, or later, may succeed.
/// Bytes per message of an image transfer.
pub const IMAGE_CHUNK: usize = 1 << 20;

/// An import's messages: the name and size first, then the file in [`IMAGE_CHUNK`]s.
fn image_chunks(
    name: String,
    size: u64,
    file: tokio::fs::File,
) -> impl futures::Stream<Item = pb::ImageChunk> {
    use tokio::io::AsyncReadExt;
    let first = pb::ImageChunk {
        name,
        size,
        data: Vec::new(),
    };
    let rest = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut data = vec![0; IMAGE_CHUNK];
        let mut filled = 0;
        while filled < data.len() {
            match file.read(&mut data[filled..]).await {
                Ok(0) => break,
                Ok(n) => filled += n,
                // The server sees a short upload and refuses it (size mismatch).
                Err(_) => return None,
            }
        }
        if filled == 0 {
            return None;
        }
        data.truncate(filled);
        let chunk = pb::ImageChunk {
            name: String::new(),
            size: 0,
            data,
        };
        Some((chunk, Some(file)))
    });
    futures::StreamExt::chain(futures::stream::once(async move { first }), rest)
}

fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
    )
}

fn describe(status: &Status) -> String {
    use std::error::Error;
    let mut text = status.message().to_string();
    let mut source = status.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    if text.is_empty() {
        format!("{:?}", status.code())
    } else {
        text
    }
}

/// The answer to a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    pub swapped: bool,
    /// When not swapped: the value found instead (`None`: absent).
    pub current: Option<String>,
}

/// Typed calls. Writes get a fresh request id, kept across this call's retries.
impl Client {
    /// The value of `key`, linearizable unless `stale`.
    pub async fn kv_get(&mut self, key: &str, stale: bool) -> Result<Option<String>, ClientError> {
        let request = pb::GetRequest {
            key: key.to_string(),
            stale,
        };
        let reply = self
            .call(|channel| {
                let request = request.clone();
                async move { KvClient::new(channel).get(request).await }
            })
            .await?;
        Ok(reply.found.then_some(reply.value))
    }

    /// Sets `key`; returns the previous value.
    pub async fn kv_put(&mut self, key: &str, value: &str) -> Result<Option<String>, ClientError> {
        let request = pb::PutRequest {
            key: key.to_string(),
            value: value.to_string(),
            request_id: Some(self.next_request_id().into()),
        };
        let reply = self
            .call(|channel| {
                let request = request.clone();
                async move { KvClient::new(channel).put(request).await }
            })
            .await?;
        Ok(reply.had_previous.then_some(reply.previous))
    }

    /// Sets `key` to `value` if its value is `expect` (`None`: if absent).
    pub async fn kv_cas(
        &mut self,
        key: &str,
        expect: Option<&str>,
        value: &str,
    ) -> Result<CasOutcome, ClientError> {
        let request = pb::CasRequest {
            key: key.to_string(),
            expect_absent: expect.is_none(),
            expect: expect.unwrap_or_default().to_string(),
            value: value.to_string(),
            request_id: Some(self.next_request_id().into()),
        };
        let reply = self
            .call(|channel| {
                let request = request.clone();
                async move { KvClient::new(channel).cas(request).await }
            })
            .await?;
        Ok(CasOutcome {
            swapped: reply.swapped,
            current: reply.current_found.then_some(reply.current),
        })
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn kv_delete(&mut self, key: &str) -> Result<bool, ClientError> {
        let request = pb::DeleteRequest {
            key: key.to_string(),
            request_id: Some(self.next_request_id().into()),
        };
        let reply = self
            .call(|channel| {
                let request = request.clone();
                async move { KvClient::new(channel).delete(request).await }
            })
            .await?;
        Ok(reply.existed)
    }

    /// Every key and value under `prefix`, paging through the server's limit.
    pub async fn kv_list(
        &mut self,
        prefix: &str,
        stale: bool,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let mut entries = Vec::new();
        let mut start_after = String::new();
        loop {
            let request = pb::ListRequest {
                prefix: prefix.to_string(),
                start_after: start_after.clone(),
                limit: 0,
                stale,
            };
            let reply = self
                .call(|channel| {
                    let request = request.clone();
                    async move { KvClient::new(channel).list(request).await }
                })
                .await?;
            if let Some(last) = reply.entries.last() {
                start_after = last.key.clone();
            }
            entries.extend(reply.entries.into_iter().map(|e| (e.key, e.value)));
            if !reply.more {
                return Ok(entries);
            }
        }
    }

    /// Cluster status; `local`: the answering node's own view only.
    pub async fn status(&mut self, local: bool) -> Result<pb::ClusterStatus, ClientError> {
        self.call(|channel| async move {
            ClusterClient::new(channel)
                .status(pb::StatusRequest { local })
                .await
        })
        .await
    }

    /// Removes the member `name`.
    pub async fn remove_member(&mut self, name: &str) -> Result<(), ClientError> {
        let request = pb::RemoveMemberRequest {
            name: name.to_string(),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { ClusterClient::new(channel).remove_member(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Every node of the inventory.
    pub async fn node_list(&mut self, stale: bool) -> Result<Vec<pb::NodeInfo>, ClientError> {
        let request = pb::NodeListRequest { stale };
        let reply = self
            .call(|channel| async move { NodesClient::new(channel).list(request).await })
            .await?;
        Ok(reply.nodes)
    }

    pub async fn node_cordon(&mut self, name: &str, cordoned: bool) -> Result<(), ClientError> {
        let request = pb::CordonRequest {
            name: name.to_string(),
            cordoned,
            request_id: Some(self.next_request_id().into()),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { NodesClient::new(channel).cordon(request).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn node_maintenance(&mut self, name: &str, on: bool) -> Result<(), ClientError> {
        let request = pb::MaintenanceRequest {
            name: name.to_string(),
            on,
            request_id: Some(self.next_request_id().into()),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { NodesClient::new(channel).maintenance(request).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn vm_create(
        &mut self,
        name: &str,
        spec: pb::VmSpec,
        stopped: bool,
    ) -> Result<(), ClientError> {
        let request = pb::VmCreateRequest {
            name: name.to_string(),
            spec: Some(spec),
            stopped,
            request_id: Some(self.next_request_id().into()),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { VmsClient::new(channel).create(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Creates `vms` (name, spec) in one log entry, all or none.
    pub async fn vm_create_many(
        &mut self,
        vms: Vec<(String, pb::VmSpec)>,
        stopped: bool,
    ) -> Result<(), ClientError> {
        let request = pb::VmCreateManyRequest {
            vms: vms
                .into_iter()
                .map(|(name, spec)| pb::VmCreateRequest {
                    name,
                    spec: Some(spec),
                    stopped,
                    request_id: None,
                })
                .collect(),
            request_id: Some(self.next_request_id().into()),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { VmsClient::new(channel).create_many(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Every VM, paging through the server's limit.
    pub async fn vm_list(&mut self, stale: bool) -> Result<Vec<pb::VmSummary>, ClientError> {
        let mut vms = Vec::new();
        let mut start_after = String::new();
        loop {
            let request = pb::VmListRequest {
                start_after: start_after.clone(),
                limit: 0,
                stale,
                ..Default::default()
            };
            let reply = self
                .call(|channel| {
                    let request = request.clone();
                    async move { VmsClient::new(channel).list(request).await }
                })
                .await?;
            if let Some(last) = reply.vms.last() {
                start_after = last.name.clone();
            }
            vms.extend(reply.vms);
            if !reply.more {
                return Ok(vms);
            }
        }
    }

    pub async fn vm_get(&mut self, name: &str, stale: bool) -> Result<pb::VmDetail, ClientError> {
        let request = pb::VmGetRequest {
            name: name.to_string(),
            stale,
        };
        self.call(|channel| {
            let request = request.clone();
            async move { VmsClient::new(channel).get(request).await }
        })
        .await
    }

    /// Start (`running`) or stop a VM.
    pub async fn vm_set_desired(&mut self, name: &str, running: bool) -> Result<(), ClientError> {
        let request = pb::VmSetDesiredRequest {
            name: name.to_string(),
            running,
            request_id: Some(self.next_request_id().into()),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { VmsClient::new(channel).set_desired(request).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn vm_delete(&mut self, name: &str) -> Result<(), ClientError> {
        let request = pb::VmDeleteRequest {
            name: name.to_string(),
            request_id: Some(self.next_request_id().into()),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { VmsClient::new(channel).delete(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Uploads the file at `path` as image `name` to one node (the first that takes it; an
    /// upload is not retried on another node once bytes went out, as the file may be large).
    /// That node hashes and registers it; the others fetch it from there.
    pub async fn image_import(
        &mut self,
        name: &str,
        path: &std::path::Path,
    ) -> Result<pb::ImageInfo, ClientError> {
        let size = std::fs::metadata(path)
            .map_err(|e| ClientError::Refused {
                code: Code::InvalidArgument,
                message: format!("cannot read {}: {e}", path.display()),
            })?
            .len();
        let mut last = String::new();
        for _ in 0..self.channels.len() {
            let channel = self.channels[self.current].clone();
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| ClientError::Refused {
                    code: Code::InvalidArgument,
                    message: format!("cannot open {}: {e}", path.display()),
                })?;
            let chunks = image_chunks(name.to_string(), size, file);
            match pb::images_client::ImagesClient::new(channel)
                .import(chunks)
                .await
            {
                Ok(answer) => return Ok(answer.into_inner()),
                Err(status) if !is_retryable(&status) => {
                    return Err(ClientError::Refused {
                        code: status.code(),
                        message: status.message().to_string(),
                    })
                }
                Err(status) => last = describe(&status),
            }
            self.current = (self.current + 1) % self.channels.len();
        }
        Err(ClientError::Unreachable {
            waited: Duration::ZERO,
            endpoints: self.endpoints.join(", "),
            last,
        })
    }

    pub async fn images(&mut self, stale: bool) -> Result<Vec<pb::ImageInfo>, ClientError> {
        let request = pb::ImageListRequest { stale };
        let reply = self
            .call(|channel| async move {
                pb::images_client::ImagesClient::new(channel)
                    .list(request)
                    .await
            })
            .await?;
        Ok(reply.images)
    }

    pub async fn image_delete(&mut self, name: &str) -> Result<(), ClientError> {
        let request = pb::ImageDeleteRequest {
            name: name.to_string(),
            request_id: Some(self.next_request_id().into()),
        };
        self.call(|channel| {
            let request = request.clone();
            async move {
                pb::images_client::ImagesClient::new(channel)
                    .delete(request)
                    .await
            }
        })
        .await
        .map(|_| ())
    }

    /// Opens `name`'s interactive serial console through any node: bytes sent on the
    /// returned sender are typed into it; the stream carries what the guest prints (its first
    /// message names the VM's node). Not retried: a console is a live session.
    pub async fn vm_console(
        &mut self,
        name: &str,
    ) -> Result<
        (
            tokio::sync::mpsc::Sender<Vec<u8>>,
            tonic::Streaming<pb::ConsoleOutput>,
        ),
        ClientError,
    > {
        let (typed, mut typed_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
        let first = pb::ConsoleInput {
            name: name.to_string(),
            forwarded: false,
            data: Vec::new(),
        };
        let input = futures::StreamExt::chain(
            futures::stream::once(async move { first }),
            futures::stream::poll_fn(move |cx| {
                typed_rx.poll_recv(cx).map(|data| {
                    data.map(|data| pb::ConsoleInput {
                        name: String::new(),
                        forwarded: false,
                        data,
                    })
                })
            }),
        );
        let channel = self.channels[self.current].clone();
        let output = VmsClient::new(channel)
            .console(input)
            .await
            .map_err(|status| ClientError::Refused {
                code: status.code(),
                message: describe(&status),
            })?
            .into_inner();
        Ok((typed, output))
    }

    /// A chunk of `name`'s serial console log from `offset` (or its last `max_bytes` with
    /// `from_end`), asked of any node (it asks the VM's node).
    pub async fn vm_logs(
        &mut self,
        name: &str,
        offset: u64,
        from_end: bool,
        max_bytes: u32,
    ) -> Result<pb::VmLogsResponse, ClientError> {
        let request = pb::VmLogsRequest {
            name: name.to_string(),
            offset,
            from_end,
            max_bytes,
            forwarded: false,
        };
        self.call(|channel| {
            let request = request.clone();
            async move { VmsClient::new(channel).logs(request).await }
        })
        .await
    }

    pub async fn settings(
        &mut self,
    ) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
        let reply = self
            .call(|channel| async move {
                SettingsClient::new(channel)
                    .list(pb::SettingsListRequest {})
                    .await
            })
            .await?;
        Ok(reply.settings.into_iter().collect())
    }

    pub async fn setting_set(&mut self, key: &str, value: &str) -> Result<(), ClientError> {
        let request = pb::SettingSetRequest {
            key: key.to_string(),
            value: value.to_string(),
            request_id: Some(self.next_request_id().into()),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { SettingsClient::new(channel).set(request).await }
        })
        .await
        .map(|_| ())
    }

    /// Cordons `name` and live-migrates its running VMs away (`evacuate`: stopped ones too,
    /// then maintenance).
    pub async fn node_drain(
        &mut self,
        name: &str,
        evacuate: bool,
    ) -> Result<pb::MigrationCreateResponse, ClientError> {
        let request = pb::DrainRequest {
            name: name.to_string(),
            evacuate,
            request_id: Some(self.next_request_id().into()),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { NodesClient::new(channel).drain(request).await }
        })
        .await
    }

    /// Asks for a live migration; `request.request_id` is filled here.
    pub async fn migration_create(
        &mut self,
        mut request: pb::MigrationCreateRequest,
    ) -> Result<pb::MigrationCreateResponse, ClientError> {
        request.request_id = Some(self.next_request_id().into());
        self.call(|channel| {
            let request = request.clone();
            async move { MigrationsClient::new(channel).create(request).await }
        })
        .await
    }

    pub async fn migration_list(
        &mut self,
        finished: bool,
    ) -> Result<Vec<pb::MigrationInfo>, ClientError> {
        let request = pb::MigrationListRequest { finished };
        let reply = self
            .call(|channel| async move { MigrationsClient::new(channel).list(request).await })
            .await?;
        Ok(reply.migrations)
    }

    pub async fn migration_get(&mut self, id: u64) -> Result<pb::MigrationInfo, ClientError> {
        let request = pb::MigrationGetRequest { id };
        self.call(|channel| async move { MigrationsClient::new(channel).get(request).await })
            .await
    }

    pub async fn migration_cancel(&mut self, id: u64) -> Result<(), ClientError> {
        let request = pb::MigrationCancelRequest {
            id,
            request_id: Some(self.next_request_id().into()),
        };
        self.call(|channel| async move { MigrationsClient::new(channel).cancel(request).await })
            .await
            .map(|_| ())
    }

    /// The migration's updates as they happen, until it ends.
    pub async fn migration_watch(
        &mut self,
        id: u64,
    ) -> Result<tonic::Streaming<pb::MigrationInfo>, ClientError> {
        let request = pb::MigrationGetRequest { id };
        self.call(|channel| async move { MigrationsClient::new(channel).watch(request).await })
            .await
    }

    /// Makes an API token; the answer holds the secret token (shown once).
    pub async fn token_create(
        &mut self,
        name: &str,
        role: &str,
        ttl_secs: u64,
        scope: &str,
    ) -> Result<pb::TokenCreated, ClientError> {
        let request = pb::TokenCreateRequest {
            name: name.to_string(),
            role: role.to_string(),
            ttl_secs,
            scope: scope.to_string(),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { TokensClient::new(channel).create(request).await }
        })
        .await
    }

    pub async fn token_list(&mut self) -> Result<Vec<pb::TokenInfo>, ClientError> {
        self.call(|channel| async move {
            TokensClient::new(channel)
                .list(pb::TokenListRequest {})
                .await
        })
        .await
        .map(|r| r.tokens)
    }

    pub async fn token_revoke(&mut self, name: &str) -> Result<(), ClientError> {
        let request = pb::TokenRevokeRequest {
            name: name.to_string(),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { TokensClient::new(channel).revoke(request).await }
        })
        .await
        .map(|_| ())
    }

    /// A page of the cluster's event log.
    pub async fn events(
        &mut self,
        request: pb::EventsRequest,
    ) -> Result<pb::EventsPage, ClientError> {
        self.call(|channel| {
            let request = request.clone();
            async move { EventsClient::new(channel).list(request).await }
        })
        .await
    }

    /// The event log from `request.after` on, live, from one node (reconnect with the last
    /// number seen to resume, on any node).
    pub async fn events_follow(
        &mut self,
        request: pb::EventsRequest,
    ) -> Result<tonic::Streaming<pb::Event>, ClientError> {
        self.call(|channel| {
            let request = request.clone();
            async move { EventsClient::new(channel).follow(request).await }
        })
        .await
    }

    pub async fn role_create(&mut self, name: &str, allow: Vec<String>) -> Result<(), ClientError> {
        let request = pb::RoleCreateRequest {
            name: name.to_string(),
            allow,
        };
        self.call(|channel| {
            let request = request.clone();
            async move { AccessClient::new(channel).create_role(request).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn role_delete(&mut self, name: &str) -> Result<(), ClientError> {
        let request = pb::RoleDeleteRequest {
            name: name.to_string(),
        };
        self.call(|channel| {
            let request = request.clone();
            async move { AccessClient::new(channel).delete_role(request).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn roles(&mut self) -> Result<pb::RolesResponse, ClientError> {
        self.call(
            |channel| async move { AccessClient::new(channel).roles(pb::RolesRequest {}).await },
        )
        .await
    }

    /// Binds (`bind`) or unbinds a user to a role, optionally scoped (`KEY=VALUE`).
    pub async fn user_binding(
        &mut self,
        bind: bool,
        request: pb::BindRequest,
    ) -> Result<(), ClientError> {
        self.call(|channel| {
            let request = request.clone();
            async move {
                let mut client = AccessClient::new(channel);
                if bind {
                    client.bind(request).await
                } else {
                    client.unbind(request).await
                }
            }
        })
        .await
        .map(|_| ())
    }

    pub async fn users(&mut self) -> Result<Vec<pb::UserInfo>, ClientError> {
        self.call(
            |channel| async move { AccessClient::new(channel).users(pb::UsersRequest {}).await },
        )
        .await
        .map(|r| r.users)
    }

    pub async fn whoami(&mut self) -> Result<pb::WhoAmIResponse, ClientError> {
        self.call(|channel| async move {
            AccessClient::new(channel)
                .who_am_i(pb::WhoAmIRequest {})
                .await
        })
        .await
    }

    pub async fn can(&mut self, request: pb::CanRequest) -> Result<pb::CanResponse, ClientError> {
        self.call(|channel| {
            let request = request.clone();
            async move { AccessClient::new(channel).can(request).await }
        })
        .await
    }

    pub async fn audit_list(
        &mut self,
        request: pb::AuditListRequest,
    ) -> Result<pb::AuditListResponse, ClientError> {
        self.call(|channel| {
            let request = request.clone();
            async move { AuditClient::new(channel).list(request).await }
        })
        .await
    }

    /// The audit chain as the node answering recomputes it (use a client of one endpoint to
    /// ask a given node).
    pub async fn audit_verify(
        &mut self,
        upto: u64,
    ) -> Result<pb::AuditVerifyResponse, ClientError> {
        self.call(|channel| async move {
            AuditClient::new(channel)
                .verify(pb::AuditVerifyRequest { upto })
                .await
        })
        .await
    }
}
