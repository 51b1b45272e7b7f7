//! `paddock audit`: the replicated, hash-chained audit log.

use clap::Subcommand;
use paddock_api::pb;
use serde_json::json;

use super::{client_failure, print_json, Global};
use crate::output::{exit, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit records, oldest first: every caller's write and every refused request.
    List {
        /// Only this caller (certificate name, or token:NAME).
        #[arg(long)]
        user: Option<String>,
        /// Only the last DURATION, e.g. 30m or 7d.
        #[arg(long)]
        since: Option<String>,
        /// Only this action, or a prefix ending in '.' (vm.).
        #[arg(long)]
        action: Option<String>,
        /// Only refusals.
        #[arg(long)]
        refused: bool,
        /// Records after this number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many records (up to 10000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Recompute the chain on every member and compare their heads at a common record:
    /// reports the first broken link and any node that disagrees.
    Verify,
}

pub async fn run(command: AuditCommand, global: &Global) -> Result<(), Failure> {
    match command {
        AuditCommand::List {
            user,
            since,
            action,
            refused,
            after,
            limit,
        } => {
            let since_ms = match since {
                Some(text) => {
                    let ago = paddock_model::duration::parse(&text)
                        .map_err(|e| Failure::new(exit::INVALID, format!("--since: {e}")))?;
                    now_ms().saturating_sub(ago.as_millis() as u64)
                }
                None => 0,
            };
            if limit == 0 || limit > 10_000 {
                return Err(Failure::new(
                    exit::INVALID,
                    "--limit must be 1-10000; page with --after",
                ));
            }
            let mut client = global.client()?;
            let page = client
                .audit_list(pb::AuditListRequest {
                    after,
                    who: user.unwrap_or_default(),
                    action: action.unwrap_or_default(),
                    since_ms,
                    refused,
                    limit,
                    stale: false,
                })
                .await
                .map_err(client_failure)?;
            match global.output {
                Output::Json => print_json(&json!({
                    "records": page.records.iter().map(|r| json!({
                        "seq": r.seq, "at_ms": r.at_ms, "who": r.who, "via": r.via,
                        "from": r.from, "action": r.action, "target": r.target,
                        "outcome": r.outcome, "request": r.request, "hash": r.hash,
                    })).collect::<Vec<_>>(),
                    "more": page.more,
                    "pruned_through": page.pruned_through,
                    "last_seq": page.last_seq,
                })),
                Output::Table => {
                    println!(
                        "{:>7} {:<23} {:<18} {:<22} {:<20} OUTCOME",
                        "SEQ", "TIME", "WHO", "ACTION", "TARGET"
                    );
                    for r in &page.records {
                        println!(
                            "{:>7} {:<23} {:<18} {:<22} {:<20} {}",
                            r.seq,
                            crate::output::time_of(r.at_ms),
                            r.who,
                            r.action,
                            r.target,
                            r.outcome
                        );
                    }
                    if page.more {
                        let last = page.records.last().map_or(after, |r| r.seq);
                        eprintln!("more records follow: --after {last}");
                    }
                }
            }
        }
        AuditCommand::Verify => verify(global).await?,
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Each member recomputes its chain up to the newest record every member has; the heads must
/// be equal. A node that cannot be reached is reported, not skipped silently.
async fn verify(global: &Global) -> Result<(), Failure> {
    let members = global
        .client()?
        .status(false)
        .await
        .map_err(client_failure)?
        .members;
    let mut first = Vec::new();
    let mut problems = Vec::new();
    for member in &members {
        match global.client_for(&member.address)?.audit_verify(0).await {
            Ok(answer) => first.push((member.name.clone(), member.address.clone(), answer)),
            Err(e) => problems.push(format!("{}: not checked: {e}", member.name)),
        }
    }
    let Some(common) = first.iter().map(|(_, _, a)| a.newest_seq).min() else {
        return Err(Failure::new(
            exit::UNAVAILABLE,
            format!("no member could be asked: {}", problems.join("; ")),
        ));
    };
    let mut heads = Vec::new();
    for (name, address, answer) in &first {
        if answer.broken_at > 0 {
            problems.push(format!(
                "{name}: the chain breaks at record {} (its stored hash is not what the record and its predecessor give)",
                answer.broken_at
            ));
            continue;
        }
        // Again at the common record, so every node hashes the same span.
        let at = if answer.newest_seq == common {
            answer.clone()
        } else {
            match global.client_for(address)?.audit_verify(common).await {
                Ok(a) => a,
                Err(e) => {
                    problems.push(format!("{name}: not checked at {common}: {e}"));
                    continue;
                }
            }
        };
        heads.push((name.clone(), at));
    }
    let reference = heads.first().map(|(_, a)| a.head.clone());
    for (name, answer) in &heads {
        if Some(&answer.head) != reference.as_ref() {
            problems.push(format!(
                "{name}: head at record {common} is {}, other nodes have {}",
                answer.head,
                reference.clone().unwrap_or_default()
            ));
        }
    }
    match global.output {
        Output::Json => print_json(&json!({
            "common_seq": common,
            "nodes": heads.iter().map(|(n, a)| json!({
                "node": n, "records": a.records, "first_seq": a.first_seq, "last_seq": a.last_seq,
                "head": a.head, "newest_seq": a.newest_seq, "pruned_through": a.pruned_through,
            })).collect::<Vec<_>>(),
            "problems": problems,
        })),
        Output::Table => {
            for (name, a) in &heads {
                println!(
                    "{name:<12} records {}..{} ({} checked, {} pruned before), head {}",
                    a.first_seq, a.last_seq, a.records, a.pruned_through, a.head
                );
            }
            for problem in &problems {
                println!("PROBLEM {problem}");
            }
        }
    }
    if problems.is_empty() {
        eprintln!(
            "audit chain verified on {} members up to record {common}: heads agree",
            heads.len()
        );
        Ok(())
    } else {
        Err(Failure::new(
            exit::ERROR,
            format!("audit verification found {} problem(s)", problems.len()),
        ))
    }
}
