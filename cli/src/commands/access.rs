//! `paddock role`, `paddock user`, `paddock whoami`, `paddock auth can`: who may do what.

use clap::{Args, Subcommand};
use paddock_api::pb;
use serde_json::json;

use super::{client_failure, print_json, Global};
use crate::output::{exit, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Make a custom role allowing these actions (`paddock role actions` lists them).
    Create {
        name: String,
        /// Comma-separated action names, e.g. vm.start,vm.stop,vm.read.
        #[arg(long, value_delimiter = ',', required = true)]
        allow: Vec<String>,
    },
    /// Built-in and custom roles, with what each allows.
    List,
    /// Delete a custom role (refused while a user or token uses it).
    Delete { name: String },
    /// Every action a role may allow, with what it does.
    Actions,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Bind a user (a certificate's common name) to a role, optionally only for VMs with a
    /// label: `paddock user bind alice web-operator --scope team=web`.
    Bind {
        name: String,
        role: String,
        #[arg(long)]
        scope: Option<String>,
    },
    /// Remove one binding (give the same scope it was made with).
    Unbind {
        name: String,
        role: String,
        #[arg(long)]
        scope: Option<String>,
    },
    /// Users and their bindings.
    List,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Whether you (or --as USER) may do ACTION (to --on VM), and why. Exits 0 when allowed,
    /// 9 when not.
    Can(CanArgs),
}

#[derive(Debug, Args)]
pub struct CanArgs {
    /// An action, e.g. vm.migrate.
    action: String,
    /// The VM it would be done to.
    #[arg(long)]
    on: Option<String>,
    /// Ask for another user (needs user.read); only the roles bound to the name count.
    #[arg(long = "as", id = "as_user", value_name = "USER")]
    as_user: Option<String>,
}

fn scope_text(scope: &str) -> String {
    if scope.is_empty() {
        "all VMs".into()
    } else {
        format!("VMs with {scope}")
    }
}

pub async fn role(command: RoleCommand, global: &Global) -> Result<(), Failure> {
    let mut client = global.client()?;
    match command {
        RoleCommand::Create { name, allow } => {
            client
                .role_create(&name, allow.clone())
                .await
                .map_err(client_failure)?;
            eprintln!("role {name} made: {}", allow.join(", "));
        }
        RoleCommand::Delete { name } => {
            client.role_delete(&name).await.map_err(client_failure)?;
            eprintln!("role {name} deleted");
        }
        RoleCommand::List => {
            let roles = client.roles().await.map_err(client_failure)?;
            match global.output {
                Output::Json => print_json(&json!(roles
                    .roles
                    .iter()
                    .map(|r| json!({
                        "name": r.name,
                        "builtin": r.builtin,
                        "allow": r.allow,
                        "created_by": r.created_by,
                    }))
                    .collect::<Vec<_>>())),
                Output::Table => {
                    println!("{:<18} {:<8} ALLOWS", "ROLE", "KIND");
                    for r in roles.roles {
                        let kind = if r.builtin { "built-in" } else { "custom" };
                        let allows = if r.name == "node" {
                            "everything, cluster-internal calls included (members only)".into()
                        } else {
                            r.allow.join(", ")
                        };
                        println!("{:<18} {kind:<8} {allows}", r.name);
                    }
                }
            }
        }
        RoleCommand::Actions => {
            let roles = client.roles().await.map_err(client_failure)?;
            match global.output {
                Output::Json => print_json(&json!(roles
                    .actions
                    .iter()
                    .map(|a| json!({"name": a.name, "description": a.description}))
                    .collect::<Vec<_>>())),
                Output::Table => {
                    for a in roles.actions {
                        println!("{:<24} {}", a.name, a.description);
                    }
                }
            }
        }
    }
    Ok(())
}

pub async fn user(command: UserCommand, global: &Global) -> Result<(), Failure> {
    let mut client = global.client()?;
    match command {
        UserCommand::Bind { name, role, scope } => {
            let scope = scope.unwrap_or_default();
            client
                .user_binding(
                    true,
                    pb::BindRequest {
                        user: name.clone(),
                        role: role.clone(),
                        scope: scope.clone(),
                    },
                )
                .await
                .map_err(client_failure)?;
            eprintln!("{name} bound to {role} for {}", scope_text(&scope));
        }
        UserCommand::Unbind { name, role, scope } => {
            let scope = scope.unwrap_or_default();
            client
                .user_binding(
                    false,
                    pb::BindRequest {
                        user: name.clone(),
                        role: role.clone(),
                        scope: scope.clone(),
                    },
                )
                .await
                .map_err(client_failure)?;
            eprintln!(
                "{name} no longer bound to {role} for {}",
                scope_text(&scope)
            );
        }
        UserCommand::List => {
            let users = client.users().await.map_err(client_failure)?;
            match global.output {
                Output::Json => print_json(&json!(users
                    .iter()
                    .map(|u| json!({
                        "name": u.name,
                        "bindings": u.bindings.iter().map(|b| json!({"role": b.role, "scope": b.scope})).collect::<Vec<_>>(),
                    }))
                    .collect::<Vec<_>>())),
                Output::Table => {
                    println!("{:<24} {:<18} SCOPE", "USER", "ROLE");
                    for u in users {
                        for b in &u.bindings {
                            println!("{:<24} {:<18} {}", u.name, b.role, scope_text(&b.scope));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

pub async fn whoami(global: &Global) -> Result<(), Failure> {
    let mut client = global.client()?;
    let me = client.whoami().await.map_err(client_failure)?;
    match global.output {
        Output::Json => print_json(&json!({
            "name": me.name,
            "via": me.via,
            "grants": me.grants.iter().map(|g| json!({"role": g.role, "scope": g.scope, "source": g.source})).collect::<Vec<_>>(),
            "allowed": me.allowed,
        })),
        Output::Table => {
            println!("{} (by {})", me.name, me.via);
            for g in &me.grants {
                println!(
                    "  role {:<16} for {:<24} from {}",
                    g.role,
                    scope_text(&g.scope),
                    g.source
                );
            }
            println!("  may: {}", me.allowed.join(", "));
        }
    }
    Ok(())
}

pub async fn auth(command: AuthCommand, global: &Global) -> Result<(), Failure> {
    let AuthCommand::Can(args) = command;
    let mut client = global.client()?;
    let answer = client
        .can(pb::CanRequest {
            action: args.action,
            vm: args.on.unwrap_or_default(),
            user: args.as_user.unwrap_or_default(),
        })
        .await
        .map_err(client_failure)?;
    match global.output {
        Output::Json => print_json(&json!({
            "allowed": answer.allowed,
            "explanation": answer.explanation,
        })),
        Output::Table => println!("{}", answer.explanation),
    }
    if answer.allowed {
        Ok(())
    } else {
        Err(Failure::new(exit::PERMISSION_DENIED, "not allowed"))
    }
}
