//! Paddock's wire protocol: the gRPC services (`proto/paddock.proto`, compiled by protox at
//! build time, no system `protoc`), conversions between protobuf and model types, the cluster
//! certificates, and a client that tries several endpoints in turn.
//!
//! ```text
//!   paddock CLI ─┐                         ┌─ Cluster / Kv services   (clients and nodes)
//!   chaos, tests ┼─ gRPC, mutual TLS ─▶ paddockd
//!   other nodes ─┘                         └─ Raft service            (node certificates only)
//! ```

pub mod certs;
pub mod client;
pub mod convert;
pub mod forward;

/// Generated protobuf messages and tonic clients/servers.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("paddock.v1");
}
