//! `paddock kv`: the cluster key/value space.

use clap::Subcommand;
use paddock_api::convert::join_option;
use paddock_api::pb::kv_client::KvClient;
use paddock_api::pb::{self};
use serde_json::json;

use super::{client_failure, print_json, Global};
use crate::output::{exit, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print the value of KEY (exit code 3 if absent).
    Get {
        key: String,
        /// Read this node's replica without a read-index round (may be behind).
        #[arg(long)]
        stale: bool,
    },
    /// Set KEY to VALUE only if its value is --expect (exit code 4 otherwise).
    Cas {
        key: String,
        /// The value KEY must have now.
        #[arg(
            long,
            conflicts_with = "expect_absent",
            required_unless_present = "expect_absent"
        )]
        expect: Option<String>,
        /// Swap only if KEY does not exist.
        #[arg(long)]
        expect_absent: bool,
        value: String,
    },
    /// Delete KEY.
    Del { key: String },
    /// List keys (and values) starting with PREFIX.
    List {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        stale: bool,
    },
}

pub async fn run(command: KvCommand, global: &Global) -> Result<(), Failure> {
    let mut client = global.client()?;
    let json = global.output == Output::Json;
    match command {
        KvCommand::Put { key, value } => {
            let request = pb::PutRequest {
                key: key.clone(),
                value,
                request_id: Some(client.next_request_id().into()),
            };
            let reply = client
                .call(|channel| {
                    let request = request.clone();
                    async move { KvClient::new(channel).put(request).await }
                })
                .await
                .map_err(client_failure)?;
            if json {
                print_json(
                    &json!({"key": key, "previous": join_option(reply.had_previous, reply.previous)}),
                );
            } else {
                println!("OK");
            }
        }
        KvCommand::Get { key, stale } => {
            let request = pb::GetRequest {
                key: key.clone(),
                stale,
            };
            let reply = client
                .call(|channel| {
                    let request = request.clone();
                    async move { KvClient::new(channel).get(request).await }
                })
                .await
                .map_err(client_failure)?;
            if !reply.found {
                if json {
                    print_json(&json!({"key": key, "value": null}));
                }
                return Err(Failure::new(
                    exit::NOT_FOUND,
                    format!("key {key:?} not found"),
                ));
            }
            if json {
                print_json(&json!({"key": key, "value": reply.value}));
            } else {
                println!("{}", reply.value);
            }
        }
        KvCommand::Cas {
            key,
            expect,
            expect_absent,
            value,
        } => {
            let request = pb::CasRequest {
                key: key.clone(),
                expect_absent,
                expect: expect.unwrap_or_default(),
                value,
                request_id: Some(client.next_request_id().into()),
            };
            let reply = client
                .call(|channel| {
                    let request = request.clone();
                    async move { KvClient::new(channel).cas(request).await }
                })
                .await
                .map_err(client_failure)?;
            let current = join_option(reply.current_found, reply.current.clone());
            if json {
                print_json(&json!({"key": key, "swapped": reply.swapped, "current": current}));
            } else if reply.swapped {
                println!("OK");
            }
            if !reply.swapped {
                let found = match current {
                    Some(v) => format!("{v:?}"),
                    None => "absent".to_string(),
                };
                return Err(Failure::new(
                    exit::CAS_MISMATCH,
                    format!("compare-and-swap failed: {key:?} is {found}"),
                ));
            }
        }
        KvCommand::Del { key } => {
            let request = pb::DeleteRequest {
                key: key.clone(),
                request_id: Some(client.next_request_id().into()),
            };
            let reply = client
                .call(|channel| {
                    let request = request.clone();
                    async move { KvClient::new(channel).delete(request).await }
                })
                .await
                .map_err(client_failure)?;
            if json {
                print_json(&json!({"key": key, "existed": reply.existed}));
            } else {
                println!(
                    "{}",
                    if reply.existed {
                        "OK"
                    } else {
                        "OK (did not exist)"
                    }
                );
            }
        }
        KvCommand::List { prefix, stale } => {
            let mut entries = Vec::new();
            let mut start_after = String::new();
            loop {
                let request = pb::ListRequest {
                    prefix: prefix.clone(),
                    start_after: start_after.clone(),
                    limit: 0,
                    stale,
                };
                let reply = client
                    .call(|channel| {
                        let request = request.clone();
                        async move { KvClient::new(channel).list(request).await }
                    })
                    .await
                    .map_err(client_failure)?;
                if let Some(last) = reply.entries.last() {
                    start_after = last.key.clone();
                }
                entries.extend(reply.entries);
                if !reply.more {
                    break;
                }
            }
            if json {
                print_json(&serde_json::Value::Array(
                    entries
                        .iter()
                        .map(|e| json!({"key": e.key, "value": e.value}))
                        .collect(),
                ));
            } else {
                for e in entries {
                    println!("{}\t{}", e.key, e.value);
                }
            }
        }
    }
    Ok(())
}
