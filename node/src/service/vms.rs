//! The Vms service: VM lifecycle. Writes become commands in the log; reads are linearizable
//! unless `stale`.

use std::sync::Arc;

use paddock_api::pb::{self, vms_server};
use paddock_model::{Query, QueryResult};
use tonic::{Request, Response, Status, Streaming};

use super::{authorized, caller, refused, reply, unexpected};
use crate::drivers::Driver;
use crate::ops::auth::Action;
use crate::ops::Ops;

pub struct VmsService {
    pub ops: Arc<Ops>,
    /// This node's name and driver: `Logs` reads the consoles this node keeps.
    pub node: String,
    pub driver: Arc<dyn Driver>,
}

/// Most bytes one `Logs` call returns.
const MAX_LOG_CHUNK: u64 = 1 << 20;

/// Reads `[offset, offset + max)` of `path` (or its last `max` bytes), with the offset the
/// next read continues at. A log shorter than `offset` was recreated: read it from the start.
fn read_chunk(
    path: &std::path::Path,
    offset: u64,
    from_end: bool,
    max: u64,
) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = match (from_end, offset > len) {
        (true, _) => len.saturating_sub(max),
        (false, true) => 0,
        (false, false) => offset,
    };
    file.seek(SeekFrom::Start(start))?;
    let mut data = Vec::new();
    file.take(max).read_to_end(&mut data)?;
    let next = start + data.len() as u64;
    Ok((data, next))
}

impl VmsService {
    /// The node `vm` is assigned to, and its address.
    fn locate(&self, vm: &str) -> Result<(String, Option<String>), Status> {
        let shared = self.ops.shared().read();
        let state = &shared.state;
        let found = state
            .vms
            .get(vm)
            .ok_or_else(|| Status::not_found(format!("no VM named {vm}; see `paddock vm list`")))?;
        let node = found
            .assignment
            .as_ref()
            .map(|a| a.node.clone())
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{vm} is not placed on any node, so no node keeps its console"
                ))
            })?;
        let address = state.members.get(&node).map(|m| m.address.clone());
        Ok((node, address))
    }

    /// The console of a VM of this node, pumped between the caller's stream and the driver.
    async fn console_here(
        &self,
        first: pb::ConsoleInput,
        mut input: Streaming<pb::ConsoleInput>,
        out: tokio::sync::mpsc::Sender<Result<pb::ConsoleOutput, Status>>,
    ) -> Result<(), Status> {
        let driver = self.driver.clone();
        let name = first.name.clone();
        let session = tokio::task::spawn_blocking(move || driver.console(&name))
            .await
            .map_err(|e| Status::internal(format!("opening the console: {e}")))?
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let crate::drivers::ConsoleSession {
            mut output,
            input: typed,
        } = session;
        let _ = out
            .send(Ok(pb::ConsoleOutput {
                node: self.node.clone(),
                data: Vec::new(),
            }))
            .await;
        let closed = out.clone();
        tokio::spawn(async move {
            if !first.data.is_empty() {
                let _ = typed.send(first.data).await;
            }
            while let Ok(Some(next)) = input.message().await {
                if typed.send(next.data).await.is_err() {
                    return;
                }
            }
            // The caller stopped typing but may still read: keep the console until it goes.
            closed.closed().await;
            drop(typed);
        });
        tokio::spawn(async move {
            while let Some(data) = output.recv().await {
                let message = pb::ConsoleOutput {
                    node: String::new(),
                    data,
                };
                if out.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// The console of a VM of another node: one stream to that node, relayed both ways.
    async fn console_there(
        &self,
        address: &str,
        first: pb::ConsoleInput,
        mut input: Streaming<pb::ConsoleInput>,
        out: tokio::sync::mpsc::Sender<Result<pb::ConsoleOutput, Status>>,
    ) -> Result<(), Status> {
        let channel = self
            .ops
            .proposer()
            .channel(address)
            .map_err(|e| Status::unavailable(format!("cannot reach the VM's node: {e}")))?;
        let (up, up_rx) = tokio::sync::mpsc::channel(64);
        let _ = up
            .send(pb::ConsoleInput {
                forwarded: true,
                ..first
            })
            .await;
        let mut remote = pb::vms_client::VmsClient::new(channel)
            .console(tokio_stream::wrappers::ReceiverStream::new(up_rx))
            .await?
            .into_inner();
        tokio::spawn(async move {
            while let Ok(Some(next)) = input.message().await {
                if up.send(next).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let next = match remote.message().await {
                    Ok(Some(message)) => Ok(message),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = next.is_err();
                if out.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(())
    }
}

type ConsoleStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ConsoleOutput, Status>> + Send>>;

#[tonic::async_trait]
impl vms_server::Vms for VmsService {
    type ConsoleStream = ConsoleStream;

    async fn console(
        &self,
        request: Request<Streaming<pb::ConsoleInput>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        authorized(&self.ops, &request, Action::VmConsole).await?;
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("a console starts with the VM's name"))?;
        let (node, address) = self.locate(&first.name)?;
        let (out, out_rx) = tokio::sync::mpsc::channel(64);
        if node == self.node {
            self.console_here(first, input, out).await?;
        } else if first.forwarded {
            return Err(Status::unavailable(format!(
                "{} runs on {node} by this node's replica, not here; retry",
                first.name
            )));
        } else {
            let address = address.ok_or_else(|| {
                Status::unavailable(format!(
                    "{node}, which runs {}, is not a member",
                    first.name
                ))
            })?;
            self.console_there(&address, first, input, out).await?;
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }

    async fn logs(
        &self,
        request: Request<pb::VmLogsRequest>,
    ) -> Result<Response<pb::VmLogsResponse>, Status> {
        authorized(&self.ops, &request, Action::VmConsole).await?;
        let r = request.into_inner();
        let max = match u64::from(r.max_bytes) {
            0 => 64 << 10,
            n => n.min(MAX_LOG_CHUNK),
        };
        let (node, address) = self.locate(&r.name)?;
        if node == self.node {
            let path = self.driver.console_log(&r.name).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "the {} driver keeps no console log (only libvirt VMs have one)",
                    self.driver.name()
                ))
            })?;
            let (data, next_offset) =
                tokio::task::spawn_blocking(move || read_chunk(&path, r.offset, r.from_end, max))
                    .await
                    .map_err(|e| Status::internal(format!("reading the console log: {e}")))?
                    .map_err(|e| Status::internal(format!("cannot read the console log: {e}")))?;
            return Ok(Response::new(pb::VmLogsResponse {
                node,
                data,
                next_offset,
            }));
        }
        if r.forwarded {
            return Err(Status::unavailable(format!(
                "{} runs on {node} by this node's replica, not here; retry",
                r.name
            )));
        }
        let address = address.ok_or_else(|| {
            Status::unavailable(format!(
                "{node}, which keeps the console of {}, is not a member",
                r.name
            ))
        })?;
        let channel = self
            .ops
            .proposer()
            .channel(&address)
            .map_err(|e| Status::unavailable(format!("cannot reach {node}: {e}")))?;
        let forwarded = pb::VmLogsRequest {
            forwarded: true,
            ..r
        };
        vms_client_logs(channel, forwarded).await
    }

    async fn create(
        &self,
        request: Request<pb::VmCreateRequest>,
    ) -> Result<Response<pb::VmCreateResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let command = r.command().map_err(refused)?;
        self.ops
            .done(&who, r.request_id.map(Into::into), command)
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmCreateResponse {}))
    }

    async fn create_many(
        &self,
        request: Request<pb::VmCreateManyRequest>,
    ) -> Result<Response<pb::VmCreateResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let command = r.command().map_err(refused)?;
        self.ops
            .done(&who, r.request_id.map(Into::into), command)
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmCreateResponse {}))
    }

    async fn list(
        &self,
        request: Request<pb::VmListRequest>,
    ) -> Result<Response<pb::VmListResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let (query, stale) = (r.query(), r.stale);
        match self.ops.read(&who, query, stale).await? {
            QueryResult::Vms { vms, more } => Ok(reply(
                self.ops.proposer(),
                pb::VmListResponse {
                    vms: vms.iter().map(Into::into).collect(),
                    more,
                },
            )),
            other => Err(unexpected(&other)),
        }
    }

    async fn get(
        &self,
        request: Request<pb::VmGetRequest>,
    ) -> Result<Response<pb::VmDetail>, Status> {
        let who = caller(&request)?;
        let pb::VmGetRequest { name, stale } = request.into_inner();
        match self
            .ops
            .read(&who, Query::VmGet { name: name.clone() }, stale)
            .await?
        {
            QueryResult::Vm(Some(vm)) => Ok(reply(self.ops.proposer(), vm.as_ref().into())),
            QueryResult::Vm(None) => Err(Status::not_found(format!(
                "VM {name} does not exist; see `paddock vm list`"
            ))),
            other => Err(unexpected(&other)),
        }
    }

    async fn set_desired(
        &self,
        request: Request<pb::VmSetDesiredRequest>,
    ) -> Result<Response<pb::VmSetDesiredResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        self.ops
            .done(&who, r.request_id.map(Into::into), r.command())
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmSetDesiredResponse {}))
    }

    async fn delete(
        &self,
        request: Request<pb::VmDeleteRequest>,
    ) -> Result<Response<pb::VmDeleteResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        self.ops
            .done(&who, r.request_id.map(Into::into), r.command())
            .await?;
        Ok(reply(self.ops.proposer(), pb::VmDeleteResponse {}))
    }
}

/// Asks the VM's node for its console log (the caller here is this node, role `node`).
async fn vms_client_logs(
    channel: tonic::transport::Channel,
    request: pb::VmLogsRequest,
) -> Result<Response<pb::VmLogsResponse>, Status> {
    let answer = pb::vms_client::VmsClient::new(channel)
        .logs(request)
        .await?;
    Ok(Response::new(answer.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::read_chunk;

    #[test]
    fn log_chunks_follow_offsets_and_survive_a_recreated_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        assert_eq!(
            read_chunk(&path, 0, false, 10).expect("missing"),
            (vec![], 0)
        );
        std::fs::write(&path, b"0123456789abcdef").expect("write");
        assert_eq!(
            read_chunk(&path, 0, false, 10).expect("head"),
            (b"0123456789".to_vec(), 10)
        );
        assert_eq!(
            read_chunk(&path, 10, false, 10).expect("rest"),
            (b"abcdef".to_vec(), 16)
        );
        assert_eq!(
            read_chunk(&path, 16, false, 10).expect("nothing new"),
            (vec![], 16)
        );
        assert_eq!(
            read_chunk(&path, 0, true, 4).expect("tail"),
            (b"cdef".to_vec(), 16)
        );
        // Recreated shorter than the offset: read from the start again.
        std::fs::write(&path, b"new").expect("rewrite");
        assert_eq!(
            read_chunk(&path, 16, false, 10).expect("restart"),
            (b"new".to_vec(), 3)
        );
    }
}
