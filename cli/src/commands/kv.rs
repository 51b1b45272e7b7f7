//! `paddock kv`: the cluster key/value space.

use clap::Subcommand;
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
            let previous = client.kv_put(&key, &value).await.map_err(client_failure)?;
            if json {
                print_json(&json!({"key": key, "previous": previous}));
            } else {
                println!("OK");
            }
        }
        KvCommand::Get { key, stale } => {
            match client.kv_get(&key, stale).await.map_err(client_failure)? {
                Some(value) if json => print_json(&json!({"key": key, "value": value})),
                Some(value) => println!("{value}"),
                None => {
                    if json {
                        print_json(&json!({"key": key, "value": null}));
                    }
                    return Err(Failure::new(
                        exit::NOT_FOUND,
                        format!("key {key:?} not found"),
                    ));
                }
            }
        }
        KvCommand::Cas {
            key,
            expect,
            expect_absent: _,
            value,
        } => {
            let outcome = client
                .kv_cas(&key, expect.as_deref(), &value)
                .await
                .map_err(client_failure)?;
            if json {
                print_json(
                    &json!({"key": key, "swapped": outcome.swapped, "current": outcome.current}),
                );
            } else if outcome.swapped {
                println!("OK");
            }
            if !outcome.swapped {
                let found = match outcome.current {
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
            let existed = client.kv_delete(&key).await.map_err(client_failure)?;
            if json {
                print_json(&json!({"key": key, "existed": existed}));
            } else {
                println!("{}", if existed { "OK" } else { "OK (did not exist)" });
            }
        }
        KvCommand::List { prefix, stale } => {
            let entries = client
                .kv_list(&prefix, stale)
                .await
                .map_err(client_failure)?;
            if json {
                print_json(&serde_json::Value::Array(
                    entries
                        .iter()
                        .map(|(k, v)| json!({"key": k, "value": v}))
                        .collect(),
                ));
            } else {
                for (k, v) in entries {
                    println!("{k}\t{v}");
                }
            }
        }
    }
    Ok(())
}
