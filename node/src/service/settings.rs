//! The Settings service: cluster-wide settings, read by anyone, written by admins.

use std::sync::Arc;

use paddock_api::pb::{self, settings_server};
use paddock_model::{Query, QueryResult};
use tonic::{Request, Response, Status};

use super::{caller, reply, unexpected};
use crate::ops::Ops;

pub struct SettingsService {
    pub ops: Arc<Ops>,
}

#[tonic::async_trait]
impl settings_server::Settings for SettingsService {
    async fn list(
        &self,
        request: Request<pb::SettingsListRequest>,
    ) -> Result<Response<pb::SettingsListResponse>, Status> {
        let who = caller(&request)?;
        match self.ops.read(&who, Query::Settings, false).await? {
            QueryResult::Settings(settings) => Ok(reply(
                self.ops.proposer(),
                pb::SettingsListResponse {
                    settings: settings.into_iter().collect(),
                },
            )),
            other => Err(unexpected(&other)),
        }
    }

    async fn set(
        &self,
        request: Request<pb::SettingSetRequest>,
    ) -> Result<Response<pb::SettingSetResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        self.ops
            .done(&who, r.request_id.map(Into::into), r.command())
            .await?;
        Ok(reply(self.ops.proposer(), pb::SettingSetResponse {}))
    }
}
