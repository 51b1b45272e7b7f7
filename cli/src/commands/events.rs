//! `paddock events`: the cluster's event log; `--follow` streams new events and, when the
//! node it follows goes away, resumes on another node after the last number it printed.

use std::time::Duration;

use clap::Args;
use paddock_api::pb;
use serde_json::json;

use super::{client_failure, Global};
use crate::output::{Failure, Output};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events as they are committed.
    #[arg(long, short)]
    pub follow: bool,
    /// Events after this number [default: the last 50, or all new ones with --follow].
    #[arg(long)]
    pub since: Option<u64>,
    /// Only these kinds (repeatable; a prefix such as `vm` or `node` works).
    #[arg(long)]
    pub kind: Vec<String>,
    /// Only events about this VM, node, member...
    #[arg(long)]
    pub subject: Option<String>,
}

fn print(event: &pb::Event, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            json!({
                "seq": event.seq,
                "at_ms": event.at_ms,
                "kind": event.kind,
                "subject": event.subject,
                "message": event.message,
            })
        ),
        Output::Table => println!(
            "{:>7}  {}  {:<17} {:<12} {}",
            event.seq,
            crate::output::time_of(event.at_ms),
            event.kind,
            event.subject,
            event.message
        ),
    }
}

pub async fn run(args: EventsArgs, global: &Global) -> Result<(), Failure> {
    let mut client = global.client()?;
    let mut request = pb::EventsRequest {
        after: args.since.unwrap_or(0),
        kinds: args.kind.clone(),
        subject: args.subject.clone().unwrap_or_default(),
        limit: 0,
        stale: false,
    };
    if args.since.is_none() {
        // The last 50 (or, following, only what comes next... after the last 50).
        let page = client
            .events(pb::EventsRequest {
                after: u64::MAX,
                ..request.clone()
            })
            .await
            .map_err(client_failure)?;
        request.after = page.last_seq.saturating_sub(50);
    }
    // Print the backlog page by page.
    loop {
        let page = client
            .events(request.clone())
            .await
            .map_err(client_failure)?;
        if page.first_kept > request.after + 1 && request.after > 0 {
            eprintln!(
                "(events {}–{} are no longer kept; showing from {})",
                request.after + 1,
                page.first_kept - 1,
                page.first_kept
            );
        }
        for event in &page.events {
            print(event, global.output);
        }
        let last = page.events.last().map(|e| e.seq);
        match last {
            Some(seq) if seq < page.last_seq => request.after = seq,
            _ => {
                request.after = page.last_seq;
                break;
            }
        }
    }
    if !args.follow {
        return Ok(());
    }
    // Follow; on a lost stream, reconnect (the client tries every endpoint) after the last
    // number printed: numbers are the same on every node, nothing committed is missed.
    loop {
        match client.events_follow(request.clone()).await {
            Ok(mut stream) => {
                while let Ok(Some(event)) = stream.message().await {
                    request.after = event.seq;
                    print(&event, global.output);
                }
            }
            Err(e) => {
                if !matches!(
                    e,
                    paddock_api::client::ClientError::Unreachable { .. }
                        | paddock_api::client::ClientError::Refused {
                            code: tonic::Code::Unavailable,
                            ..
                        }
                ) {
                    return Err(client_failure(e));
                }
            }
        }
        eprintln!("(stream lost after event {}; reconnecting)", request.after);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
