//! The Settings service: cluster-wide settings, read by anyone, written by admins.

use std::sync::Arc;

use paddock_api::pb::{self, settings_server};
use paddock_model::{Command, Query, QueryResult};
use tonic::{Request, Response, Status};

use super::{caller, done, reply, unexpected};
use crate::proposer::Proposer;

pub struct SettingsService {
    pub proposer: Arc<Proposer>,
}

#[tonic::async_trait]
impl settings_server::Settings for SettingsService {
    async fn list(
        &self,
        request: Request<pb::SettingsListRequest>,
    ) -> Result<Response<pb::SettingsListResponse>, Status> {
        caller(&request)?;
        match self.proposer.read(Query::Settings, false).await? {
            QueryResult::Settings(settings) => Ok(reply(
                &self.proposer,
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
        super::require_admin(&request)?;
        let pb::SettingSetRequest {
            key,
            value,
            request_id,
        } = request.into_inner();
        // Check here too, so a bad value never reaches the log.
        paddock_model::settings::Settings::default()
            .set(&key, &value)
            .map_err(Status::invalid_argument)?;
        done(
            &self.proposer,
            request_id,
            Command::SettingSet { key, value },
        )
        .await?;
        Ok(reply(&self.proposer, pb::SettingSetResponse {}))
    }
}
