//! The Access service: custom roles, users' bindings, `whoami` and `auth can`.

use std::sync::Arc;

use paddock_api::pb::{self, access_server};
use paddock_model::access::{self, Action, Caller, BUILTIN_ROLES};
use paddock_model::{Command, Query, QueryResult};
use tonic::{Request, Response, Status};

use super::tokens::parse_scope;
use super::{caller, reply, unexpected};
use crate::ops::auth;
use crate::ops::Ops;

pub struct AccessService {
    pub ops: Arc<Ops>,
}

fn grant_info(g: &access::Grant) -> pb::GrantInfo {
    pb::GrantInfo {
        role: g.role.clone(),
        scope: g.scope.as_ref().map(|s| s.to_string()).unwrap_or_default(),
        source: g.source.clone(),
    }
}

impl AccessService {
    async fn access(&self, who: &Caller) -> Result<access::Access, Status> {
        match self.ops.read(who, Query::Access, false).await? {
            QueryResult::Access(access) => Ok(access),
            other => Err(unexpected(&other)),
        }
    }

    async fn binding(&self, request: Request<pb::BindRequest>, bind: bool) -> Result<(), Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let scope = parse_scope(&r.scope)?;
        let command = if bind {
            Command::UserBind {
                user: r.user,
                role: r.role,
                scope,
            }
        } else {
            Command::UserUnbind {
                user: r.user,
                role: r.role,
                scope,
            }
        };
        Ok(self.ops.done(&who, None, command).await?)
    }
}

#[tonic::async_trait]
impl access_server::Access for AccessService {
    async fn create_role(
        &self,
        request: Request<pb::RoleCreateRequest>,
    ) -> Result<Response<pb::AccessResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let command = Command::RoleCreate {
            name: r.name,
            allow: r.allow,
            by: who.name.clone(),
        };
        self.ops.done(&who, None, command).await?;
        Ok(reply(self.ops.proposer(), pb::AccessResponse {}))
    }

    async fn delete_role(
        &self,
        request: Request<pb::RoleDeleteRequest>,
    ) -> Result<Response<pb::AccessResponse>, Status> {
        let who = caller(&request)?;
        let name = request.into_inner().name;
        self.ops
            .done(&who, None, Command::RoleDelete { name })
            .await?;
        Ok(reply(self.ops.proposer(), pb::AccessResponse {}))
    }

    async fn roles(
        &self,
        request: Request<pb::RolesRequest>,
    ) -> Result<Response<pb::RolesResponse>, Status> {
        let who = caller(&request)?;
        let access = self.access(&who).await?;
        let names = |allow: Vec<Action>| allow.iter().map(|a| a.name().to_string()).collect();
        let mut roles: Vec<pb::RoleInfo> = BUILTIN_ROLES
            .iter()
            .map(|name| pb::RoleInfo {
                name: name.to_string(),
                builtin: true,
                allow: names(access.allowed_by(name)),
                created_by: String::new(),
                created_ms: 0,
            })
            .collect();
        roles.extend(access.roles.iter().map(|(name, role)| pb::RoleInfo {
            name: name.clone(),
            builtin: false,
            allow: role.allow.iter().map(|a| a.name().to_string()).collect(),
            created_by: role.created_by.clone(),
            created_ms: role.created_ms,
        }));
        let actions = Action::ALL
            .iter()
            .filter(|a| **a != Action::Internal)
            .map(|a| pb::ActionInfo {
                name: a.name().to_string(),
                description: a.describe().to_string(),
            })
            .collect();
        Ok(reply(
            self.ops.proposer(),
            pb::RolesResponse { roles, actions },
        ))
    }

    async fn bind(
        &self,
        request: Request<pb::BindRequest>,
    ) -> Result<Response<pb::AccessResponse>, Status> {
        self.binding(request, true).await?;
        Ok(reply(self.ops.proposer(), pb::AccessResponse {}))
    }

    async fn unbind(
        &self,
        request: Request<pb::BindRequest>,
    ) -> Result<Response<pb::AccessResponse>, Status> {
        self.binding(request, false).await?;
        Ok(reply(self.ops.proposer(), pb::AccessResponse {}))
    }

    async fn users(
        &self,
        request: Request<pb::UsersRequest>,
    ) -> Result<Response<pb::UsersResponse>, Status> {
        let who = caller(&request)?;
        self.ops.authorize(&who, Action::UserRead).await?;
        let access = self.access(&who).await?;
        let users = access
            .users
            .iter()
            .map(|(name, bindings)| pb::UserInfo {
                name: name.clone(),
                bindings: bindings
                    .iter()
                    .map(|b| pb::GrantInfo {
                        role: b.role.clone(),
                        scope: b.scope.as_ref().map(|s| s.to_string()).unwrap_or_default(),
                        source: "binding".into(),
                    })
                    .collect(),
            })
            .collect();
        Ok(reply(self.ops.proposer(), pb::UsersResponse { users }))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let who = caller(&request)?;
        let state = &self.ops.shared().read().state;
        let grants = auth::grants_of(state, &who);
        let allowed = Action::ALL
            .iter()
            .filter(|a| {
                grants
                    .iter()
                    .any(|g| state.access.role_allows(&g.role, **a) == Some(true))
            })
            .map(|a| a.name().to_string())
            .collect();
        Ok(Response::new(pb::WhoAmIResponse {
            name: who.name.clone(),
            via: who.via(),
            grants: grants.iter().map(grant_info).collect(),
            allowed,
        }))
    }

    async fn can(
        &self,
        request: Request<pb::CanRequest>,
    ) -> Result<Response<pb::CanResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        let action = Action::parse(&r.action).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown action {:?}; `paddock role list` shows every action",
                r.action
            ))
        })?;
        let other = !r.user.is_empty() && r.user != who.name;
        if other {
            // Explaining someone else's permissions shows their bindings: user.read.
            self.ops.authorize(&who, Action::UserRead).await?;
        }
        let state = &self.ops.shared().read().state;
        if !r.vm.is_empty() && !state.vms.contains_key(&r.vm) {
            return Err(Status::not_found(format!("VM {} does not exist", r.vm)));
        }
        let target = if r.vm.is_empty() {
            access::Target::Cluster
        } else {
            state.vm_target(&r.vm)
        };
        let decision = if other {
            // Another user: the roles bound to the name (the role in their certificate is
            // not known to the cluster; it shows in their own `paddock whoami`).
            let grants: Vec<access::Grant> = state
                .access
                .users
                .get(&r.user)
                .into_iter()
                .flatten()
                .map(|b| access::Grant {
                    role: b.role.clone(),
                    scope: b.scope.clone(),
                    source: "binding".into(),
                })
                .collect();
            access::decide(&state.access, &r.user, &grants, action, target)
        } else {
            auth::decide(state, &who, action, target)
        };
        Ok(Response::new(pb::CanResponse {
            allowed: decision.allowed,
            explanation: decision.explanation,
        }))
    }
}
