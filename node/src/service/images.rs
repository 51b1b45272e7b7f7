//! The Images service: import an image into this node's store (then the cluster's), serve
//! held copies to peers, list and delete.

use std::pin::Pin;
use std::sync::Arc;

use paddock_api::client::IMAGE_CHUNK;
use paddock_api::convert::image_info;
use paddock_api::pb::{self, images_server};
use paddock_model::image::{validate_image_name, validate_sha256, MAX_IMAGE_BYTES};
use paddock_model::{Command, Query, QueryResult};
use tonic::{Request, Response, Status, Streaming};

use super::{authorized, caller, member, refused, reply, unexpected};
use crate::images::{ImageStore, StoreError};
use crate::ops::auth::Action;
use crate::ops::Ops;

pub struct ImagesService {
    pub ops: Arc<Ops>,
    pub node: String,
    pub store: ImageStore,
}

type FetchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ImageChunk, Status>> + Send>>;

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(e) => Status::internal(format!(
                "this node cannot write its image store: {e}; check the free space and permissions of DATA/images"
            )),
            StoreError::Refused(reason) => Status::invalid_argument(reason),
        }
    }
}

#[tonic::async_trait]
impl images_server::Images for ImagesService {
    async fn import(
        &self,
        request: Request<Streaming<pb::ImageChunk>>,
    ) -> Result<Response<pb::ImageInfo>, Status> {
        authorized(&self.ops, &request, Action::ImageImport).await?;
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an import starts with the image's name"))?;
        let name = first.name.clone();
        validate_image_name(&name).map_err(Status::invalid_argument)?;
        if first.size == 0 || first.size > MAX_IMAGE_BYTES {
            return Err(Status::invalid_argument(format!(
                "an image must be 1 byte–1 TiB, not {} bytes",
                first.size
            )));
        }
        if let Some(existing) = self.ops.shared().read().state.images.get(&name) {
            if existing.size_bytes != first.size {
                return Err(Status::already_exists(format!(
                    "image {name} exists with other content; delete it first (`paddock image delete {name}`) or import under another name"
                )));
            }
        }
        let mut writer = self.store.writer()?;
        let mut data = first.data;
        loop {
            tokio::task::block_in_place(|| writer.write(&data))?;
            if writer.written() > first.size {
                return Err(Status::invalid_argument(format!(
                    "more bytes arrived than the {} announced",
                    first.size
                )));
            }
            match chunks.message().await? {
                Some(next) => data = next.data,
                None => break,
            }
        }
        let size = first.size;
        let stored = tokio::task::spawn_blocking(move || writer.finish(size, None))
            .await
            .map_err(|e| Status::internal(format!("storing the image: {e}")))??;
        let registered = self
            .ops
            .proposer()
            .write(paddock_model::ClientRequest {
                id: None,
                command: Command::ImageRegister {
                    name: name.clone(),
                    format: stored.format.to_string(),
                    size_bytes: stored.size_bytes,
                    sha256: stored.sha256.clone(),
                    node: self.node.clone(),
                },
                caller: None,
            })
            .await
            .map_err(crate::ops::OpError::from)?;
        if let Err(rejection) = registered {
            // Another image's file may be the same bytes: keep it if any image names them.
            let named = self
                .ops
                .shared()
                .read()
                .state
                .images
                .values()
                .any(|i| i.sha256 == stored.sha256);
            if !named {
                let _ = self.store.remove(&stored.sha256);
            }
            return Err(refused(rejection));
        }
        tracing::info!(image = %name, sha256 = %stored.sha256, bytes = stored.size_bytes, "image imported");
        let info = {
            let shared = self.ops.shared().read();
            shared.state.images.get(&name).map(|i| image_info(&name, i))
        };
        Ok(reply(
            self.ops.proposer(),
            info.unwrap_or(pb::ImageInfo {
                name,
                format: stored.format.to_string(),
                size_bytes: stored.size_bytes,
                sha256: stored.sha256,
                imported_ms: 0,
                holders: vec![self.node.clone()],
            }),
        ))
    }

    type FetchStream = FetchStream;

    async fn fetch(
        &self,
        request: Request<pb::ImageFetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        member(&request)?;
        let r = request.into_inner();
        validate_sha256(&r.sha256).map_err(Status::invalid_argument)?;
        let path = self.store.path_of(&r.sha256);
        let file = std::fs::File::open(&path).map_err(|e| {
            Status::not_found(format!(
                "{} holds no copy of image {} ({e}); ask another holder",
                self.node, r.name
            ))
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = file;
            loop {
                let mut data = vec![0; IMAGE_CHUNK];
                let mut filled = 0;
                while filled < data.len() {
                    match file.read(&mut data[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => {
                            let _ = tx.blocking_send(Err(Status::internal(format!(
                                "reading the image: {e}"
                            ))));
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                data.truncate(filled);
                let chunk = pb::ImageChunk {
                    name: String::new(),
                    size: 0,
                    data,
                };
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list(
        &self,
        request: Request<pb::ImageListRequest>,
    ) -> Result<Response<pb::ImageListResponse>, Status> {
        let who = caller(&request)?;
        let stale = request.into_inner().stale;
        match self.ops.read(&who, Query::Images, stale).await? {
            QueryResult::Images(images) => Ok(reply(
                self.ops.proposer(),
                pb::ImageListResponse {
                    images: images.iter().map(|(n, i)| image_info(n, i)).collect(),
                },
            )),
            other => Err(unexpected(&other)),
        }
    }

    async fn delete(
        &self,
        request: Request<pb::ImageDeleteRequest>,
    ) -> Result<Response<pb::ImageDeleteResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        self.ops
            .done(&who, r.request_id.map(Into::into), r.command())
            .await?;
        Ok(reply(self.ops.proposer(), pb::ImageDeleteResponse {}))
    }
}
