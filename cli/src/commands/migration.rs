//! `paddock migration` (list, show, watch, cancel) and the `vm migrate` / `node drain` /
//! `node evacuate` commands built on it. `--wait` and `watch` draw a live progress bar
//! (indicatif) from the leader's figures, then print one summary line.

use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use paddock_api::client::Client;
use paddock_api::pb::{self, MigrationInfo};
use paddock_model::resources::parse_mib;
use serde_json::json;

use super::{client_failure, print_json, Global};
use crate::output::{exit, parse_duration, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum MigrationCommand {
    /// Open migrations (and, with --all, the last 1000 finished ones), newest first.
    List {
        #[arg(long)]
        all: bool,
    },
    /// One migration with its figures.
    Show { id: u64 },
    /// Follow a migration live until it ends.
    Watch { id: u64 },
    /// Stop a migration before its ownership switch; the VM runs on at its source.
    Cancel { id: u64 },
}

/// `paddock vm migrate NAME ...`
#[derive(Debug, Args)]
pub struct MigrateArgs {
    pub name: String,
    /// Destination node [default: the scheduler's pick].
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, default_value = "auto", value_parser = ["auto", "precopy", "postcopy"])]
    pub mode: String,
    /// Wire bandwidth limit per second, e.g. 500MiB [default: unlimited].
    #[arg(long, value_parser = parse_mib)]
    pub bandwidth: Option<u64>,
    /// Longest pause of the VM at the switch, e.g. 50ms [default: the cluster's, 100ms].
    #[arg(long, value_parser = parse_duration)]
    pub max_downtime: Option<Duration>,
    /// Queue order among waiting migrations, 0–1000 (higher first).
    #[arg(long, default_value_t = 0)]
    pub priority: u32,
    /// Follow it with a progress bar, then print a summary.
    #[arg(long)]
    pub wait: bool,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn migration_json(m: &MigrationInfo) -> serde_json::Value {
    json!({
        "id": m.id,
        "vm": m.vm,
        "source": m.source,
        "destination": m.destination,
        "mode": m.mode,
        "phase": m.phase,
        "reason": m.reason,
        "error": (!m.error.is_empty()).then_some(&m.error),
        "priority": m.priority,
        "bandwidth": (m.bandwidth > 0).then_some(m.bandwidth),
        "max_downtime_ms": m.max_downtime_ms,
        "created_ms": m.created_ms,
        "started_ms": m.started_ms,
        "switched_ms": (m.switched_ms > 0).then_some(m.switched_ms),
        "ended_ms": (m.ended_ms > 0).then_some(m.ended_ms),
        "total_ms": m.total_ms,
        "downtime_ms": m.downtime_ms,
        "prepare_ms": m.prepare_ms,
        "bytes_transferred": m.bytes_transferred,
        "memory_bytes": m.memory_bytes,
        "memory_sent": m.memory_sent,
        "remaining_bytes": m.remaining_bytes,
        "rate_bps": m.rate_bps,
        "dirty_rate_bps": m.dirty_rate_bps,
        "round": m.round,
        "percent": m.percent,
        "compression_ratio": m.compression_ratio,
        "expected_downtime_ms": m.expected_downtime_ms,
        "eta_secs": m.eta_secs,
        "postcopy": m.postcopy,
        "throttle": m.throttle,
        "source_epoch": m.source_epoch,
        "target_epoch": m.target_epoch,
        "counter_at_pause": m.counter_at_pause,
        "digest": (!m.digest.is_empty()).then_some(&m.digest),
        "source_verified": m.source_verified,
        "live": m.live,
    })
}

/// The line printed when a migration ended.
pub fn summary(m: &MigrationInfo) -> String {
    let to = if m.destination.is_empty() {
        "?"
    } else {
        &m.destination
    };
    match m.phase.as_str() {
        "completed" => format!(
            "migration {} of {} {} → {}: completed in {:.2} s, downtime {}, {:.1} MiB on the wire for {:.1} MiB of memory ({:.0} MiB/s of memory){}",
            m.id,
            m.vm,
            m.source,
            to,
            m.total_ms as f64 / 1000.0,
            m.downtime_ms
                .map_or("unknown".to_string(), |d| format!("{d} ms")),
            mib(m.bytes_transferred),
            mib(m.memory_bytes),
            if m.total_ms > 0 {
                mib(m.memory_bytes) / (m.total_ms as f64 / 1000.0)
            } else {
                0.0
            },
            if m.postcopy { ", post-copy" } else { "" }
        ),
        phase => format!(
            "migration {} of {} {} → {}: {phase}{}",
            m.id,
            m.vm,
            m.source,
            to,
            if m.error.is_empty() {
                String::new()
            } else {
                format!(": {}", m.error)
            }
        ),
    }
}

fn print_table(list: &[MigrationInfo]) {
    println!(
        "{:>5} {:<20} {:<10} {:<10} {:<9} {:<12} {:>6} {:>9} {:>9}  REASON",
        "ID", "VM", "SOURCE", "DEST", "MODE", "PHASE", "DONE", "TOTAL", "DOWNTIME"
    );
    for m in list {
        println!(
            "{:>5} {:<20} {:<10} {:<10} {:<9} {:<12} {:>5.0}% {:>8.2}s {:>9}  {}",
            m.id,
            m.vm,
            m.source,
            if m.destination.is_empty() {
                "-"
            } else {
                &m.destination
            },
            m.mode,
            m.phase,
            m.percent,
            m.total_ms as f64 / 1000.0,
            m.downtime_ms.map_or("-".into(), |d| format!("{d}ms")),
            if m.error.is_empty() {
                &m.reason
            } else {
                &m.error
            },
        );
    }
}

/// Follows migration `id` until it ends; a progress bar on a terminal, lines otherwise.
/// Fails (non-zero exit) unless it completed.
pub async fn follow(client: &mut Client, id: u64) -> Result<MigrationInfo, Failure> {
    let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("migration {id}"));
    let mut last = None;
    loop {
        let mut stream = client.migration_watch(id).await.map_err(client_failure)?;
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    bar.set_position((m.percent * 10.0) as u64);
                    bar.set_message(progress_message(&m));
                    let ended = m.ended_ms > 0;
                    last = Some(m);
                    if ended {
                        break;
                    }
                }
                Ok(None) => break,
                Err(status) if status.code() == tonic::Code::NotFound => {
                    bar.abandon();
                    return Err(Failure::new(exit::NOT_FOUND, status.message().to_string()));
                }
                // The node answering went away: watch again through another.
                Err(_) => break,
            }
        }
        if last.as_ref().is_some_and(|m| m.ended_ms > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    let m = last.unwrap_or_default();
    if m.phase == "completed" {
        Ok(m)
    } else {
        Err(Failure::new(exit::ERROR, summary(&m)))
    }
}

fn progress_message(m: &MigrationInfo) -> String {
    let phase = if m.live && !m.engine_phase.is_empty() {
        format!("{} / {}", m.phase, m.engine_phase)
    } else {
        m.phase.clone()
    };
    let mut parts = vec![phase];
    if m.memory_sent > 0 {
        parts.push(format!(
            "{:.0}/{:.0} MiB",
            mib(m.memory_sent),
            mib(m.memory_bytes)
        ));
        parts.push(format!("{:.0} MiB/s", mib(m.rate_bps)));
        parts.push(format!("round {}", m.round));
        parts.push(format!("ratio {:.2}", m.compression_ratio));
    }
    if m.dirty_rate_bps > 0 {
        parts.push(format!("dirty {:.0} MiB/s", mib(m.dirty_rate_bps)));
    }
    if m.expected_downtime_ms > 0 {
        parts.push(format!("expected downtime {} ms", m.expected_downtime_ms));
    }
    if let Some(eta) = m.eta_secs {
        parts.push(format!("ETA {eta:.1}s"));
    }
    if m.throttle > 0 {
        parts.push(format!("throttle {}%", m.throttle));
    }
    parts.join(", ")
}

pub async fn migrate(args: MigrateArgs, global: &Global) -> Result<(), Failure> {
    let mut client = global.client()?;
    let request = pb::MigrationCreateRequest {
        vm: args.name.clone(),
        to: args.to.unwrap_or_default(),
        mode: args.mode,
        bandwidth: args.bandwidth.map_or(0, |mib| mib << 20),
        // 0 asks for the cluster's default.
        max_downtime_ms: args.max_downtime.map_or(0, |d| d.as_millis().max(1) as u64),
        priority: args.priority,
        request_id: None,
    };
    let answer = client
        .migration_create(request)
        .await
        .map_err(client_failure)?;
    let Some(created) = answer.created.first() else {
        let why = answer
            .refused
            .first()
            .map_or("refused".to_string(), |r| r.reason.clone());
        return Err(Failure::new(exit::ERROR, why));
    };
    eprintln!("migration {} of {} requested", created.id, created.vm);
    if args.wait {
        let m = follow(&mut client, created.id).await?;
        match global.output {
            Output::Json => print_json(&migration_json(&m)),
            Output::Table => println!("{}", summary(&m)),
        }
    } else if global.output == Output::Json {
        print_json(&json!({ "id": created.id, "vm": created.vm }));
    }
    Ok(())
}

/// `paddock node drain|evacuate NAME [--wait]`.
pub async fn drain(name: &str, evacuate: bool, wait: bool, global: &Global) -> Result<(), Failure> {
    let mut client = global.client()?;
    let started = std::time::Instant::now();
    let answer = client
        .node_drain(name, evacuate)
        .await
        .map_err(client_failure)?;
    let verb = if evacuate { "evacuating" } else { "draining" };
    eprintln!(
        "{verb} {name}: cordoned, {} live migration(s) requested",
        answer.created.len()
    );
    for refused in &answer.refused {
        eprintln!("  {} cannot be migrated: {}", refused.vm, refused.reason);
    }
    if !wait {
        return Ok(());
    }
    let ids: Vec<u64> = answer.created.iter().map(|c| c.id).collect();
    let mut failed = answer.refused.len();
    let mut pending = ids.clone();
    let mut seen_done = std::collections::BTreeSet::new();
    while !pending.is_empty() {
        let list = client.migration_list(true).await.map_err(client_failure)?;
        for m in list.iter().filter(|m| pending.contains(&m.id)) {
            if m.ended_ms > 0 && seen_done.insert(m.id) {
                eprintln!("  {}", summary(m));
                if m.phase != "completed" {
                    failed += 1;
                }
            }
        }
        pending.retain(|id| !seen_done.contains(id));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let moved = ids.len() + answer.refused.len() - failed;
    println!(
        "{name}: {moved} VM(s) moved, {failed} not moved, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        return Err(Failure::new(
            exit::ERROR,
            format!("{failed} VM(s) are still on {name}; see the lines above and `paddock migration list --all`"),
        ));
    }
    Ok(())
}

pub async fn run(command: MigrationCommand, global: &Global) -> Result<(), Failure> {
    let mut client = global.client()?;
    match command {
        MigrationCommand::List { all } => {
            let list = client.migration_list(all).await.map_err(client_failure)?;
            match global.output {
                Output::Json => {
                    print_json(&json!(list.iter().map(migration_json).collect::<Vec<_>>()))
                }
                Output::Table => print_table(&list),
            }
        }
        MigrationCommand::Show { id } => {
            let m = client.migration_get(id).await.map_err(client_failure)?;
            match global.output {
                Output::Json => print_json(&migration_json(&m)),
                Output::Table => {
                    println!("{}", summary(&m));
                    print_json(&migration_json(&m));
                }
            }
        }
        MigrationCommand::Watch { id } => {
            let m = follow(&mut client, id).await?;
            println!("{}", summary(&m));
        }
        MigrationCommand::Cancel { id } => {
            client.migration_cancel(id).await.map_err(client_failure)?;
            println!("migration {id} cancelled; its VM runs on at the source");
        }
    }
    Ok(())
}
