//! How apply authorizes a caller's request, records it in the audit log, and applies the
//! access-control commands (tokens, roles, bindings, audit notes).

use std::collections::BTreeMap;

use super::{action_of, decide, grants, Binding, Caller, CustomRole, Decision, Target};
use crate::audit;
use crate::command::{Command, Outcome, Rejection, Response};
use crate::events::EventKind;
use crate::state::ClusterState;

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl ClusterState {
    /// Whether `caller` may do `command` against this state at `at_ms`, and why: the one
    /// decision, made by the receiving node before proposing and again by apply.
    pub fn authorize(&self, caller: &Caller, command: &Command, at_ms: u64) -> Decision {
        let action = action_of(command);
        let held = grants(&self.access, &self.tokens, caller, at_ms);
        let mut decision = None;
        self.each_target(command, |target| {
            let d = decide(&self.access, &caller.name, &held, action, target);
            let allowed = d.allowed;
            decision = Some(d);
            allowed
        });
        decision
            .unwrap_or_else(|| decide(&self.access, &caller.name, &held, action, Target::Cluster))
    }

    /// [`Self::authorize`]'s answer without its explanation, and without allocating: what
    /// every allowed request costs.
    pub fn allows(&self, caller: &Caller, command: &Command, at_ms: u64) -> bool {
        let action = action_of(command);
        self.each_target(command, |target| {
            super::allows(&self.access, &self.tokens, caller, at_ms, action, target)
        })
    }

    /// Calls `check` with each target of `command` until one is refused; whether all passed.
    fn each_target(&self, command: &Command, mut check: impl FnMut(Target<'_>) -> bool) -> bool {
        match command {
            Command::VmCreate { name, spec, .. } => check(Target::Vm {
                name,
                labels: &spec.labels,
            }),
            Command::VmCreateMany { vms } if !vms.is_empty() => vms.iter().all(|vm| {
                check(Target::Vm {
                    name: &vm.name,
                    labels: &vm.spec.labels,
                })
            }),
            Command::VmSetDesired { name, .. }
            | Command::VmDelete { name }
            | Command::MigrationCreate { vm: name, .. } => check(self.vm_target(name)),
            Command::MigrationCancel { id } => match self.migrations.get(id) {
                Some(m) => check(self.vm_target(&m.vm)),
                None => check(Target::Cluster),
            },
            _ => check(Target::Cluster),
        }
    }

    /// A VM as an authorization target (a VM that does not exist has no labels).
    pub fn vm_target<'a>(&'a self, name: &'a str) -> Target<'a> {
        Target::Vm {
            name,
            labels: self.vms.get(name).map_or(&NO_LABELS, |vm| &vm.spec.labels),
        }
    }

    /// A caller's request: authorized against the committed state, applied, and recorded.
    pub(crate) fn apply_as(
        &mut self,
        caller: &Caller,
        command: &Command,
        at_ms: u64,
        apply: impl FnOnce(&mut ClusterState) -> Outcome,
    ) -> Outcome {
        let outcome = if matches!(command, Command::AuditNote { .. }) {
            // What the receiving node noted (a refusal before proposing, a login): recorded
            // as it was decided there.
            command.validate().map(|()| Response::Done)
        } else if self.allows(caller, command, at_ms) {
            apply(self)
        } else {
            Err(Rejection::PermissionDenied {
                reason: self.authorize(caller, command, at_ms).explanation,
            })
        };
        let (action, outcome_text) = match command {
            Command::AuditNote {
                action, outcome, ..
            } => (action.clone(), outcome.clone()),
            _ => (
                action_of(command).name().to_string(),
                match &outcome {
                    Ok(_) => "ok".to_string(),
                    Err(rejection) => format!("refused: {rejection}"),
                },
            ),
        };
        let (keep, max_age) = (
            self.settings.audit_keep as usize,
            self.settings.audit_max_age_ms,
        );
        self.audit.append(
            at_ms,
            audit::Entry {
                who: caller.name.clone(),
                via: caller.via(),
                from: caller.from.clone(),
                action,
                target: super::target_of(command),
                outcome: outcome_text,
                request: caller.request.clone(),
            },
            keep,
            max_age,
        );
        outcome
    }

    /// Tokens, roles, bindings and audit notes.
    pub(crate) fn apply_access_command(&mut self, command: &Command, at_ms: u64) -> Outcome {
        match command {
            Command::TokenCreate {
                name,
                role,
                sha256,
                ttl_ms,
                by,
                scope,
            } => {
                if self.tokens.contains_key(name) {
                    return Err(Rejection::AlreadyExists {
                        kind: "token".into(),
                        name: name.clone(),
                    });
                }
                self.check_role_for_grant(role)?;
                if self.tokens.len() >= crate::token::MAX_TOKENS {
                    return Err(Rejection::FailedPrecondition {
                        reason: format!(
                            "the cluster holds {} tokens, the most it keeps; revoke unused ones with `paddock token revoke NAME`",
                            crate::token::MAX_TOKENS
                        ),
                    });
                }
                self.tokens.insert(
                    name.clone(),
                    crate::token::ApiToken {
                        role: role.clone(),
                        sha256: sha256.clone(),
                        created_ms: at_ms,
                        expires_ms: ttl_ms.map(|ttl| at_ms.saturating_add(ttl)),
                        created_by: by.clone(),
                        scope: scope.clone(),
                    },
                );
                Ok(Response::Done)
            }
            Command::TokenRevoke { name } => match self.tokens.remove(name) {
                Some(_) => Ok(Response::Done),
                None => Err(Rejection::not_found("token", name)),
            },
            Command::RoleCreate { name, allow, by } => {
                let allow = super::validate_role(name, allow)?;
                if self.access.roles.contains_key(name) {
                    return Err(Rejection::AlreadyExists {
                        kind: "role".into(),
                        name: name.clone(),
                    });
                }
                if self.access.roles.len() >= super::MAX_ROLES {
                    return Err(Rejection::precondition(format!(
                        "the cluster holds {} custom roles, the most it keeps; delete unused ones with `paddock role delete NAME`",
                        super::MAX_ROLES
                    )));
                }
                let names: Vec<&str> = allow.iter().map(|a| a.name()).collect();
                let message = format!("role {name} created by {by}: {}", names.join(", "));
                self.access.roles.insert(
                    name.clone(),
                    CustomRole {
                        allow,
                        created_ms: at_ms,
                        created_by: by.clone(),
                    },
                );
                self.events
                    .push(at_ms, EventKind::AccessChanged, name, message);
                Ok(Response::Done)
            }
            Command::RoleDelete { name } => {
                if !self.access.roles.contains_key(name) {
                    return Err(Rejection::not_found("role", name));
                }
                let users = self.access.users_of(name);
                let tokens: Vec<&str> = self
                    .tokens
                    .iter()
                    .filter(|(_, t)| &t.role == name)
                    .map(|(n, _)| n.as_str())
                    .collect();
                if !users.is_empty() || !tokens.is_empty() {
                    return Err(Rejection::precondition(format!(
                        "role {name} is in use (users: {}; tokens: {}); unbind the users and revoke the tokens first",
                        or_none(&users),
                        or_none(&tokens)
                    )));
                }
                self.access.roles.remove(name);
                self.events.push(
                    at_ms,
                    EventKind::AccessChanged,
                    name,
                    format!("role {name} deleted"),
                );
                Ok(Response::Done)
            }
            Command::UserBind { user, role, scope } => {
                self.check_role_for_grant(role)?;
                let bindings = self.access.users.get(user);
                if bindings.is_none() && self.access.users.len() >= super::MAX_USERS {
                    return Err(Rejection::precondition(format!(
                        "the cluster holds bindings for {} users, the most it keeps",
                        super::MAX_USERS
                    )));
                }
                if bindings.is_some_and(|b| b.len() >= super::MAX_BINDINGS) {
                    return Err(Rejection::precondition(format!(
                        "{user} has {} bindings, the most one user may have",
                        super::MAX_BINDINGS
                    )));
                }
                let binding = Binding {
                    role: role.clone(),
                    scope: scope.clone(),
                };
                if !self
                    .access
                    .users
                    .entry(user.clone())
                    .or_default()
                    .insert(binding)
                {
                    return Err(Rejection::AlreadyExists {
                        kind: "binding".into(),
                        name: super::target_of(command),
                    });
                }
                self.events.push(
                    at_ms,
                    EventKind::AccessChanged,
                    user,
                    format!("{user} bound to {}", described(role, scope)),
                );
                Ok(Response::Done)
            }
            Command::UserUnbind { user, role, scope } => {
                let binding = Binding {
                    role: role.clone(),
                    scope: scope.clone(),
                };
                let removed = self
                    .access
                    .users
                    .get_mut(user)
                    .is_some_and(|b| b.remove(&binding));
                if !removed {
                    return Err(Rejection::not_found("binding", super::target_of(command)));
                }
                if self.access.users.get(user).is_some_and(|b| b.is_empty()) {
                    self.access.users.remove(user);
                }
                self.events.push(
                    at_ms,
                    EventKind::AccessChanged,
                    user,
                    format!("{user} no longer bound to {}", described(role, scope)),
                );
                Ok(Response::Done)
            }
            // Without a caller there is nobody to record; with one, `apply_as` records it.
            Command::AuditNote { .. } => Ok(Response::Done),
            other => Err(Rejection::Invalid {
                reason: format!("not an access command: {other:?}"),
            }),
        }
    }

    /// A role a binding or token may name: one that exists, and not `node`.
    fn check_role_for_grant(&self, role: &str) -> Result<(), Rejection> {
        if role == "node" {
            return Err(Rejection::Invalid {
                reason: "the node role is for cluster members' certificates only".into(),
            });
        }
        if !self.access.role_exists(role) {
            return Err(Rejection::Invalid {
                reason: format!(
                    "no role {role:?}: use admin, operator, viewer or a role from `paddock role list`"
                ),
            });
        }
        Ok(())
    }
}

fn or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn described(role: &str, scope: &Option<super::Scope>) -> String {
    match scope {
        Some(scope) => format!("role {role} scoped to {scope}"),
        None => format!("role {role}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Credential, Scope};
    use super::*;
    use crate::command::{ClientRequest, Proposal};
    use crate::vm::{Desired, VmSpec};

    fn caller(name: &str, role: &str) -> Caller {
        Caller {
            name: name.into(),
            credential: Credential::Certificate { role: role.into() },
            from: "127.0.0.1:9".into(),
            request: "r1".into(),
        }
    }

    fn run(state: &mut ClusterState, at_ms: u64, who: &Caller, command: Command) -> Outcome {
        state
            .apply(&Proposal {
                at_ms,
                requests: vec![ClientRequest {
                    id: None,
                    command,
                    caller: Some(who.clone()),
                }],
            })
            .remove(0)
    }

    fn spec(team: &str) -> VmSpec {
        VmSpec {
            cpus: 1,
            memory_mib: 64,
            disks: Vec::new(),
            labels: [("team".to_string(), team.to_string())].into(),
            ha: false,
            priority: 0,
            constraints: Default::default(),
            guest: Default::default(),
        }
    }

    #[test]
    fn apply_enforces_roles_and_scopes_and_records_every_request() {
        let mut state = ClusterState::default();
        let root = caller("root", "admin");
        let alice = caller("alice", "viewer");
        let create_role = Command::RoleCreate {
            name: "web-operator".into(),
            allow: vec!["vm.create".into(), "vm.start".into(), "vm.read".into()],
            by: "root".into(),
        };
        assert_eq!(run(&mut state, 1, &root, create_role), Ok(Response::Done));
        let bind = Command::UserBind {
            user: "alice".into(),
            role: "web-operator".into(),
            scope: Some(Scope::parse("team=web").expect("scope")),
        };
        // alice may not bind herself.
        let denied = run(&mut state, 2, &alice, bind.clone()).expect_err("denied");
        assert!(
            matches!(denied, Rejection::PermissionDenied { .. }),
            "{denied}"
        );
        assert_eq!(run(&mut state, 3, &root, bind), Ok(Response::Done));
        let create = |name: &str, team: &str| Command::VmCreate {
            name: name.into(),
            spec: spec(team),
            desired: Desired::Stopped,
        };
        assert!(run(&mut state, 4, &alice, create("web-1", "web")).is_ok());
        let refused = run(&mut state, 5, &alice, create("db-1", "db")).expect_err("scope");
        assert_eq!(
            refused.to_string(),
            "alice may not vm.create db-1: role web-operator (binding) is scoped to team=web, db-1 has team=db"
        );
        assert!(run(&mut state, 6, &root, create("db-1", "db")).is_ok());
        let start_db = Command::VmSetDesired {
            name: "db-1".into(),
            desired: Desired::Running,
        };
        assert!(run(&mut state, 7, &alice, start_db).is_err());
        // Every request is in the audit log, refusals included, and the chain holds.
        let outcomes: Vec<(&str, &str, bool)> = state
            .audit
            .records
            .iter()
            .map(|r| (r.who.as_str(), r.action.as_str(), r.ok()))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                ("root", "role.write", true),
                ("alice", "user.bind", false),
                ("root", "user.bind", true),
                ("alice", "vm.create", true),
                ("alice", "vm.create", false),
                ("root", "vm.create", true),
                ("alice", "vm.start", false),
            ]
        );
        assert_eq!(state.audit.verify(None).expect("chain").records, 7);
        // Requests without a caller (nodes' own) are neither checked nor recorded.
        state.apply(&Proposal {
            at_ms: 8,
            requests: vec![ClientRequest::internal(Command::VmDelete {
                name: "web-1".into(),
            })],
        });
        assert_eq!(state.audit.records.len(), 7);
    }

    #[test]
    fn a_revoked_or_expired_token_stops_working_in_log_order() {
        let mut state = ClusterState::default();
        let root = caller("root", "admin");
        let token = Command::TokenCreate {
            name: "ci".into(),
            role: "operator".into(),
            sha256: "0".repeat(64),
            ttl_ms: Some(1_000),
            by: "root".into(),
            scope: None,
        };
        assert_eq!(run(&mut state, 10, &root, token), Ok(Response::Done));
        let ci = Caller {
            name: "token:ci".into(),
            credential: Credential::Token { token: "ci".into() },
            from: "127.0.0.1:9".into(),
            request: "r2".into(),
        };
        let put = |v: &str| Command::KvPut {
            key: "k".into(),
            value: v.into(),
        };
        assert!(run(&mut state, 20, &ci, put("a")).is_ok());
        // Expired at 1010.
        assert!(run(&mut state, 1_010, &ci, put("b")).is_err());
        assert_eq!(state.kv.get("k").map(String::as_str), Some("a"));
    }

    #[test]
    fn a_retry_of_an_applied_write_gets_its_answer_even_after_a_revocation() {
        let mut state = ClusterState::default();
        let root = caller("root", "admin");
        let token = Command::TokenCreate {
            name: "ci".into(),
            role: "operator".into(),
            sha256: "0".repeat(64),
            ttl_ms: None,
            by: "root".into(),
            scope: None,
        };
        run(&mut state, 1, &root, token).expect("token");
        let ci = Caller {
            name: "token:ci".into(),
            credential: Credential::Token { token: "ci".into() },
            from: "127.0.0.1:9".into(),
            request: "r".into(),
        };
        let put = ClientRequest {
            id: Some(crate::RequestId { client: 7, seq: 1 }),
            command: Command::KvPut {
                key: "k".into(),
                value: "v".into(),
            },
            caller: Some(ci.clone()),
        };
        let apply = |state: &mut ClusterState, at_ms, request: &ClientRequest| {
            state
                .apply(&Proposal {
                    at_ms,
                    requests: vec![request.clone()],
                })
                .remove(0)
        };
        let first = apply(&mut state, 2, &put);
        assert!(first.is_ok());
        run(
            &mut state,
            3,
            &root,
            Command::TokenRevoke { name: "ci".into() },
        )
        .expect("revoked");
        // The lost answer's retry is answered from the record, not refused.
        assert_eq!(apply(&mut state, 4, &put), first);
        let records = state.audit.records.len();
        // A new request with the revoked token is refused (and recorded).
        let mut next = put.clone();
        next.id = Some(crate::RequestId { client: 7, seq: 2 });
        assert!(matches!(
            apply(&mut state, 5, &next),
            Err(Rejection::PermissionDenied { .. })
        ));
        assert_eq!(state.audit.records.len(), records + 1);
    }

    #[test]
    fn roles_in_use_are_not_deleted_and_grants_name_existing_roles() {
        let mut state = ClusterState::default();
        let root = caller("root", "admin");
        let bind = |role: &str| Command::UserBind {
            user: "bob".into(),
            role: role.into(),
            scope: None,
        };
        assert!(matches!(
            run(&mut state, 1, &root, bind("nope")),
            Err(Rejection::Invalid { .. })
        ));
        assert!(matches!(
            run(&mut state, 1, &root, bind("node")),
            Err(Rejection::Invalid { .. })
        ));
        run(
            &mut state,
            2,
            &root,
            Command::RoleCreate {
                name: "r".into(),
                allow: vec!["kv.read".into()],
                by: "root".into(),
            },
        )
        .expect("role");
        run(&mut state, 3, &root, bind("r")).expect("bound");
        let busy = run(
            &mut state,
            4,
            &root,
            Command::RoleDelete { name: "r".into() },
        )
        .expect_err("in use");
        assert!(busy.to_string().contains("users: bob"), "{busy}");
        run(
            &mut state,
            5,
            &root,
            Command::UserUnbind {
                user: "bob".into(),
                role: "r".into(),
                scope: None,
            },
        )
        .expect("unbound");
        assert!(state.access.users.is_empty());
        run(
            &mut state,
            6,
            &root,
            Command::RoleDelete { name: "r".into() },
        )
        .expect("deleted");
    }
}
