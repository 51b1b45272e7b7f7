//! `paddock token`: API tokens for the HTTPS API and the dashboard (admin).

use clap::Subcommand;
use serde_json::json;

use super::{client_failure, print_json, Global};
use crate::output::{exit, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; prints it once (only its hash is kept).
    Create {
        name: String,
        /// admin, operator, viewer or a custom role (`paddock role list`).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Only VMs with this label (KEY=VALUE), for the VM actions the role allows.
        #[arg(long)]
        scope: Option<String>,
        /// How long it lives, e.g. 12h or 30d [default: until revoked].
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Every token: name, role, expiry (never the secret).
    List,
    /// Revoke a token: every node refuses it from then on.
    Revoke { name: String },
}

pub async fn run(command: TokenCommand, global: &Global) -> Result<(), Failure> {
    let mut client = global.client()?;
    match command {
        TokenCommand::Create {
            name,
            role,
            ttl,
            scope,
        } => {
            let ttl_secs = match ttl {
                Some(text) => paddock_model::duration::parse(&text)
                    .map_err(|e| Failure::new(exit::INVALID, format!("--ttl: {e}")))?
                    .as_secs()
                    .max(1),
                None => 0,
            };
            let created = client
                .token_create(&name, &role, ttl_secs, scope.as_deref().unwrap_or_default())
                .await
                .map_err(client_failure)?;
            match global.output {
                Output::Json => print_json(&json!({
                    "name": created.name,
                    "token": created.token,
                    "expires_ms": created.expires_ms,
                })),
                Output::Table => {
                    println!("{}", created.token);
                    eprintln!(
                        "token {} ({role}) made; it is shown only now. Use it as `Authorization: Bearer TOKEN` or to log in to the dashboard.",
                        created.name
                    );
                }
            }
        }
        TokenCommand::List => {
            let tokens = client.token_list().await.map_err(client_failure)?;
            match global.output {
                Output::Json => print_json(&json!(tokens
                    .iter()
                    .map(|t| json!({
                        "name": t.name,
                        "role": t.role,
                        "created_ms": t.created_ms,
                        "expires_ms": t.expires_ms,
                        "created_by": t.created_by,
                        "expired": t.expired,
                        "scope": t.scope,
                    }))
                    .collect::<Vec<_>>())),
                Output::Table => {
                    println!(
                        "{:<20} {:<14} {:<14} {:<16} {:<24} EXPIRES",
                        "NAME", "ROLE", "SCOPE", "BY", "CREATED"
                    );
                    for t in tokens {
                        let expires = match (t.expires_ms, t.expired) {
                            (_, true) => "expired".to_string(),
                            (Some(ms), false) => crate::output::time_of(ms),
                            (None, false) => "never".to_string(),
                        };
                        println!(
                            "{:<20} {:<14} {:<14} {:<16} {:<24} {expires}",
                            t.name,
                            t.role,
                            if t.scope.is_empty() { "-" } else { &t.scope },
                            t.created_by,
                            crate::output::time_of(t.created_ms)
                        );
                    }
                }
            }
        }
        TokenCommand::Revoke { name } => {
            client.token_revoke(&name).await.map_err(client_failure)?;
            eprintln!("token {name} revoked");
        }
    }
    Ok(())
}
