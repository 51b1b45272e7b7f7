//! The Raft network: one lazily connected gRPC channel per peer, over mutual TLS with the
//! node's own certificate. Payloads are openraft's messages in postcard behind the format
//! version; the receiving side is the node's Raft service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use paddock_api::pb::raft_client::RaftClient;
use paddock_api::pb::RaftMessage;
use paddock_model::codec;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::{MemberNode, NodeId, TypeConfig};

/// When each peer last answered a Raft RPC; the leader's view of who is reachable.
#[derive(Debug, Clone, Default)]
pub struct PeerContact {
    last_ok: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl PeerContact {
    fn record(&self, target: NodeId) {
        if let Ok(mut map) = self.last_ok.lock() {
            map.insert(target, Instant::now());
        }
    }

    /// Whether `target` answered within `window`.
    pub fn answered_within(&self, target: NodeId, window: Duration) -> bool {
        self.last_ok
            .lock()
            .ok()
            .and_then(|map| map.get(&target).map(|t| t.elapsed() <= window))
            .unwrap_or(false)
    }
}

/// Addresses this node dials instead of a peer's advertised one, by peer name (`--route`):
/// for networks where a peer is reached through a NAT or proxy, and for the chaos harness's
/// fault proxies.
#[derive(Debug, Clone, Default)]
pub struct Routes(Arc<std::collections::BTreeMap<String, String>>);

impl Routes {
    pub fn new(routes: std::collections::BTreeMap<String, String>) -> Routes {
        Routes(Arc::new(routes))
    }

    /// The address to dial for `node`.
    pub fn address<'a>(&'a self, node: &'a MemberNode) -> &'a str {
        self.0
            .get(&node.name)
            .map_or(node.address.as_str(), String::as_str)
    }
}

/// Builds connections to peers (openraft's network factory).
#[derive(Clone)]
pub struct Network {
    tls: ClientTlsConfig,
    contact: PeerContact,
    routes: Routes,
}

impl Network {
    pub fn new(tls: ClientTlsConfig, routes: Routes) -> Network {
        Network {
            tls,
            contact: PeerContact::default(),
            routes,
        }
    }

    pub fn contact(&self) -> PeerContact {
        self.contact.clone()
    }

    /// A lazily connected channel to a peer's gRPC endpoint, for Raft and forwarding.
    pub fn channel(&self, address: &str) -> Result<Channel, String> {
        channel_to(address, &self.tls)
    }
}

/// A lazily connected mutual-TLS channel to `address` (`host:port`).
pub fn channel_to(address: &str, tls: &ClientTlsConfig) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| format!("invalid peer address {address:?}: {e}"))?
        .tls_config(tls.clone())
        .map_err(|e| format!("TLS settings for {address}: {e}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> PeerConnection {
        PeerConnection {
            target,
            client: channel_to(self.routes.address(node), &self.tls).map(RaftClient::new),
            contact: self.contact.clone(),
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerConnection {
    target: NodeId,
    /// `Err` when the peer's address is unusable; every RPC then reports it unreachable.
    client: Result<RaftClient<Channel>, String>,
    contact: PeerContact,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: &'static str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, MemberNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(client) => client,
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                    e.clone(),
                ))))
            }
        };
        let data = codec::encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut message = tonic::Request::new(RaftMessage { data });
        message.set_timeout(option.hard_ttl());
        let reply = match rpc {
            "append" => client.append_entries(message).await,
            "vote" => client.vote(message).await,
            _ => client.install_snapshot(message).await,
        };
        let reply = reply.map_err(|status| {
            let error = TransportError(format!("{rpc} to node {:x}: {status}", self.target));
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown => {
                    RPCError::Unreachable(Unreachable::new(&error))
                }
                _ => RPCError::Network(NetworkError::new(&error)),
            }
        })?;
        self.contact.record(self.target);
        let result: Result<Resp, E> = codec::decode(&reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
