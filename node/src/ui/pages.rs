//! The dashboard's pages: the overview (cluster strip, nodes, migrations, VMs, event log) and
//! a VM's page. Everything the page shows is read through the API's own code; the parts that
//! change are one fragment the script reloads when events arrive.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use paddock_api::pb;
use paddock_model::events::ClusterEvent;
use serde::Deserialize;

use super::{failed, Visitor};
use crate::ops::Action;
use crate::rest::problem::{Params, Problem, Segments};
use crate::rest::Api;

/// VMs per page of the overview's table.
const VMS_PER_PAGE: u32 = 50;
/// Finished migrations the overview lists.
const FINISHED_SHOWN: usize = 5;
/// Events the log starts with.
const EVENTS_SHOWN: u64 = 40;

#[derive(Debug, Default, Deserialize)]
pub struct OverviewParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    node: String,
    #[serde(default)]
    after: String,
}

/// What the overview shows, read concurrently.
struct Overview {
    status: pb::ClusterStatus,
    ha: String,
    nodes: Vec<pb::NodeInfo>,
    vms: crate::rest::vms::VmPage,
    migrations: Vec<pb::MigrationInfo>,
}

async fn gather(
    api: &Api,
    visitor: &Visitor,
    params: &OverviewParams,
) -> Result<Overview, Problem> {
    use paddock_api::pb::cluster_server::Cluster as _;
    use paddock_api::pb::settings_server::Settings as _;
    let caller = &visitor.caller;
    let filter = crate::rest::vms::ListParams {
        after: non_empty(&params.after),
        limit: Some(VMS_PER_PAGE),
        node: non_empty(&params.node),
        state: non_empty(&params.state),
        q: non_empty(&params.q),
        stale: false,
    };
    let (status, settings, nodes, vms, migrations) = tokio::join!(
        api.services
            .cluster
            .status(caller.request(pb::StatusRequest { local: false })),
        api.services
            .settings
            .list(caller.request(pb::SettingsListRequest {})),
        api.node_list(caller, false),
        api.vm_page(caller, filter),
        api.migrations(caller, true),
    );
    let settings = settings?.into_inner().settings;
    Ok(Overview {
        status: status?.into_inner(),
        ha: settings.get("ha").cloned().unwrap_or_default(),
        nodes: nodes?.nodes,
        vms: vms?,
        migrations: migrations?,
    })
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_string())
}

/// The events the log starts with, from this node's replica.
fn recent_events(api: &Api, visitor: &Visitor) -> (Vec<ClusterEvent>, u64) {
    if !api.ops.may_ever(&visitor.caller.who, Action::EventRead) {
        return (Vec::new(), 0);
    }
    let shared = api.ops.shared().read();
    let log = &shared.state.events;
    let page = log.page(
        log.last_seq.saturating_sub(EVENTS_SHOWN),
        &[],
        None,
        EVENTS_SHOWN as u32,
    );
    (page.events, page.last_seq)
}

fn layout(title: &str, visitor: Option<&Visitor>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(v) = visitor {
                    meta name="csrf" content=(v.csrf);
                }
                title { (title) " · Paddock" }
                link rel="stylesheet" href="/ui/static/app.css";
            }
            body {
                header {
                    a.brand href="/ui" { "Paddock" }
                    @if let Some(v) = visitor {
                        span.who { (v.caller.who.name) " (" (v.caller.who.via()) ")" }
                        @if !v.csrf.is_empty() {
                            form.inline method="post" action="/ui/logout" { button type="submit" { "Log out" } }
                        }
                    }
                }
                main { (body) }
                script src="/ui/static/app.js" {}
            }
        }
    }
}

pub fn login(error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            section.login {
                h1 { "Log in" }
                p { "Paste an API token (" code { "paddock token create NAME --role viewer|operator|admin" } "; " code { "paddock dev up" } " prints one)." }
                @if let Some(error) = error { p.error { (error) } }
                form method="post" action="/ui/login" {
                    input type="password" name="token" placeholder="pdk.NAME.SECRET" autofocus required;
                    button #login type="submit" { "Log in" }
                }
            }
        },
    )
}

pub fn problem_page(problem: &Problem) -> Markup {
    layout(
        "Error",
        None,
        html! {
            section { h1 { (problem.title) } p.error { (problem.detail) } p { a href="/ui" { "Back to the overview" } } }
        },
    )
}

pub async fn overview(
    State(api): State<Api>,
    visitor: Visitor,
    Params(params): Params<OverviewParams>,
) -> Response {
    let overview = match gather(&api, &visitor, &params).await {
        Ok(o) => o,
        Err(problem) => return failed(problem),
    };
    let (events, last_seq) = recent_events(&api, &visitor);
    let body = html! {
        div #live data-fragment=(fragment_url(&params)) { (live(&overview, &visitor, &params)) }
        section #events {
            h2 { "Events " span.hint #stream-state { "connecting…" } }
            ol #event-log data-last=(last_seq) {
                @for e in events.iter().rev() { (event_row(e)) }
            }
        }
    };
    Html(layout("Overview", Some(&visitor), body).into_string()).into_response()
}

pub async fn overview_fragment(
    State(api): State<Api>,
    visitor: Visitor,
    Params(params): Params<OverviewParams>,
) -> Response {
    match gather(&api, &visitor, &params).await {
        Ok(overview) => Html(live(&overview, &visitor, &params).into_string()).into_response(),
        Err(problem) => problem.into_response(),
    }
}

fn fragment_url(params: &OverviewParams) -> String {
    let mut url = String::from("/ui/fragment/overview?");
    for (key, value) in [
        ("q", &params.q),
        ("state", &params.state),
        ("node", &params.node),
        ("after", &params.after),
    ] {
        if !value.is_empty() {
            url.push_str(&format!("{key}={}&", encode(value)));
        }
    }
    url
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The parts that change: reloaded by the script when events arrive.
fn live(o: &Overview, visitor: &Visitor, params: &OverviewParams) -> Markup {
    let voters: Vec<&pb::Member> = o
        .status
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .collect();
    let reachable = voters.iter().filter(|m| m.reachable).count();
    let majority = voters.len() / 2 + 1;
    let quorum = if o.status.leader.is_empty() {
        ("bad", "no leader".to_string())
    } else if reachable >= majority && reachable < voters.len() {
        (
            "warn",
            format!(
                "{reachable}/{} voters reachable (quorum holds)",
                voters.len()
            ),
        )
    } else if reachable >= majority {
        (
            "ok",
            format!("{reachable}/{} voters reachable", voters.len()),
        )
    } else {
        (
            "bad",
            format!("{reachable}/{} voters reachable: no quorum", voters.len()),
        )
    };
    let open: Vec<&pb::MigrationInfo> = o.migrations.iter().filter(|m| m.ended_ms == 0).collect();
    let finished: Vec<&pb::MigrationInfo> = o
        .migrations
        .iter()
        .filter(|m| m.ended_ms != 0)
        .take(FINISHED_SHOWN)
        .collect();
    html! {
        section #strip data-active=(if open.is_empty() { "0" } else { "1" }) {
            div { span.label { "leader" } b #leader { @if o.status.leader.is_empty() { "none" } @else { (o.status.leader) } } }
            div { span.label { "term" } b { (o.status.term) } }
            div { span.label { "quorum" } b class=(quorum.0) { (quorum.1) } }
            div { span.label { "HA" } b class=(if o.ha == "armed" { "ok" } else { "warn" }) { (o.ha) } }
            div.members {
                span.label { "members" }
                @for m in &o.status.members {
                    span class={ "member " (if m.reachable { "ok" } else { "bad" }) } title=(m.address) {
                        (m.name) " " small { (m.role) }
                    }
                }
            }
            div { span.label { "answered by" } b { (o.status.node) } }
        }
        section #nodes {
            h2 { "Nodes " span.hint { (o.nodes.len()) } }
            table {
                thead { tr { th { "node" } th { "state" } th { "CPU reserved" } th { "memory reserved" } th { "heartbeat" } th { "VMs" } @if visitor.may_act() { th {} } } }
                tbody {
                    @for n in &o.nodes {
                        tr data-node=(n.name) {
                            td { b { (n.name) } br; small { (n.address) } }
                            td { span class={ "state " (n.state) } { (n.state) } }
                            td { (bar(u64::from(n.cpus - n.cpus_free.min(n.cpus)), u64::from(n.cpus), "")) }
                            td { (bar(n.memory_mib - n.memory_free_mib.min(n.memory_mib), n.memory_mib, " MiB")) }
                            td { @match n.heard_ms_ago { Some(ms) => { (format!("{:.1} s ago", ms as f64 / 1000.0)) }, None => { "—" } } }
                            td { (n.vms.len()) }
                            @if visitor.may_act() {
                                td.actions {
                                    @if n.state == "cordoned" || n.state == "drained" {
                                        button data-post={ "/api/v1/nodes/" (n.name) "/uncordon" } { "uncordon" }
                                    } @else if n.state == "ready" || n.state == "suspect" {
                                        button data-post={ "/api/v1/nodes/" (n.name) "/cordon" } { "cordon" }
                                        button data-post={ "/api/v1/nodes/" (n.name) "/drain" } data-confirm={ "Drain " (n.name) "? Its running VMs are live-migrated away." } { "drain" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section #migrations {
            h2 { "Migrations " span.hint { (open.len()) " in flight" } }
            @if open.is_empty() { p.hint { "None in flight." } }
            @for m in &open { (migration_row(m, visitor)) }
            @if !finished.is_empty() {
                h3 { "Last finished" }
                table {
                    thead { tr { th { "id" } th { "VM" } th { "from → to" } th { "outcome" } th { "took" } th { "downtime" } } }
                    tbody {
                        @for m in &finished {
                            tr data-migration=(m.id) {
                                td { (m.id) } td { (m.vm) } td { (m.source) " → " (m.destination) }
                                td { span class={ "phase " (m.phase) } { (m.phase) } @if !m.error.is_empty() { br; small { (m.error) } } }
                                td { (format!("{:.1} s", m.total_ms as f64 / 1000.0)) }
                                td { @match m.downtime_ms { Some(d) => { (d) " ms" }, None => { "—" } } }
                            }
                        }
                    }
                }
            }
        }
        section #vms {
            h2 { "VMs" }
            form.filter method="get" action="/ui" {
                input type="search" name="q" value=(params.q) placeholder="name contains…";
                select name="state" {
                    option value="" { "any state" }
                    @for s in ["pending", "starting", "running", "stopping", "stopped", "failed"] {
                        option value=(s) selected[params.state == s] { (s) }
                    }
                }
                select name="node" {
                    option value="" { "any node" }
                    @for n in &o.nodes { option value=(n.name) selected[params.node == n.name] { (n.name) } }
                }
                button type="submit" { "Filter" }
            }
            table {
                thead { tr { th { "VM" } th { "desired / observed" } th { "node" } th { "HA" } th { "epoch" } th { "size" } th { "IP" } @if visitor.may_act() { th {} } } }
                tbody {
                    @for vm in &o.vms.vms {
                        tr data-vm=(vm.name) {
                            td { a href={ "/ui/vms/" (vm.name) } { (vm.name) } }
                            td { (vm.desired) " / " span class={ "state " (vm.state) } { (vm.state) } }
                            td { @if vm.node.is_empty() { "—" } @else { (vm.node) } }
                            td { @if vm.ha { "yes" } @else { "no" } }
                            td { (vm.epoch) }
                            td { (vm.cpus) " cpu, " (vm.memory_mib) " MiB" }
                            td { (vm.addresses.join(", ")) }
                            @if visitor.may_act() { td.actions { (vm_actions(&vm.name, &vm.desired, &vm.state)) } }
                        }
                    }
                }
            }
            @if o.vms.vms.is_empty() { p.hint { "No VM matches." } }
            p.pager {
                @if !params.after.is_empty() { a href=(page_url(params, "")) { "« first page" } " " }
                @if let Some(next) = &o.vms.next { a href=(page_url(params, next)) { "next page »" } }
            }
        }
    }
}

fn page_url(params: &OverviewParams, after: &str) -> String {
    let mut url = format!(
        "/ui?q={}&state={}&node={}",
        encode(&params.q),
        encode(&params.state),
        encode(&params.node)
    );
    if !after.is_empty() {
        url.push_str(&format!("&after={}", encode(after)));
    }
    url
}

fn vm_actions(name: &str, desired: &str, state: &str) -> Markup {
    html! {
        @if desired == "stopped" || state == "failed" {
            button data-post={ "/api/v1/vms/" (name) "/start" } { "start" }
        }
        @if desired == "running" {
            button data-post={ "/api/v1/vms/" (name) "/stop" } data-confirm={ "Stop " (name) "?" } { "stop" }
            button data-post={ "/api/v1/vms/" (name) "/restart" } data-confirm={ "Restart " (name) "?" } { "restart" }
        }
        @if state == "running" {
            button.migrate data-post={ "/api/v1/vms/" (name) "/migrate" } data-ask="Destination node (empty: the leader picks)" { "migrate" }
        }
    }
}

fn bar(used: u64, total: u64, unit: &str) -> Markup {
    let percent = if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    };
    let class = if percent >= 90.0 {
        "bar bad"
    } else if percent >= 70.0 {
        "bar warn"
    } else {
        "bar"
    };
    html! {
        div class=(class) title=(format!("{used}{unit} of {total}{unit}")) {
            div.fill style=(format!("width:{percent:.1}%")) {}
            span { (used) " / " (total) (unit) }
        }
    }
}

fn rate(bytes_per_sec: u64) -> String {
    format!("{:.1} MiB/s", bytes_per_sec as f64 / (1024.0 * 1024.0))
}

fn migration_row(m: &pb::MigrationInfo, visitor: &Visitor) -> Markup {
    let percent = m.percent.clamp(0.0, 100.0);
    html! {
        div.migration data-migration=(m.id) data-phase=(m.phase) {
            div.head {
                b { "#" (m.id) " " (m.vm) } " " (m.source) " → " (if m.destination.is_empty() { "?" } else { &m.destination })
                " " span class={ "phase " (m.phase) } { (m.phase) } " " small { (m.mode) }
                @if visitor.may_act() && !matches!(m.phase.as_str(), "switching" | "completing") {
                    button data-post={ "/api/v1/migrations/" (m.id) "/cancel" } data-confirm={ "Cancel migration " (m.id) " of " (m.vm) "? It keeps running on " (m.source) "." } { "cancel" }
                }
            }
            div.bar.progress { div.fill style=(format!("width:{percent:.1}%")) {} span { (format!("{percent:.0}%")) } }
            div.figures {
                span { "rate " (rate(m.rate_bps)) }
                span { "sent " (m.memory_sent / (1024 * 1024)) " / " (m.memory_bytes / (1024 * 1024)) " MiB" }
                span { "round " (m.round) }
                span { "ETA " @match m.eta_secs { Some(s) => { (format!("{s:.1} s")) }, None => { "—" } } }
                span { "expected downtime " (m.expected_downtime_ms) " ms" }
                @if let Some(d) = m.downtime_ms { span { "downtime " (d) " ms" } }
            }
        }
    }
}

fn event_row(e: &ClusterEvent) -> Markup {
    html! {
        li data-seq=(e.seq) {
            time { (clock(e.at_ms)) } " " span.kind { (e.kind.name()) } " " b { (e.subject) } " " (e.message)
        }
    }
}

/// UTC `HH:MM:SS` ("—" for events of entries without a clock).
fn clock(ms: u64) -> String {
    if ms == 0 {
        return "—".into();
    }
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[derive(Debug, Deserialize)]
pub struct VmName {
    name: String,
}

pub async fn vm_page(
    State(api): State<Api>,
    visitor: Visitor,
    Segments(path): Segments<VmName>,
) -> Response {
    let vm = match api.vm_detail(&visitor.caller, &path.name, false).await {
        Ok(vm) => vm,
        Err(problem) => return failed(problem),
    };
    let summary = vm.summary.clone().unwrap_or_default();
    let spec = vm.spec.clone().unwrap_or_default();
    let body = html! {
        section #vm data-vm=(summary.name) {
            h1 { (summary.name) " " span class={ "state " (summary.state) } { (summary.state) } }
            @if visitor.may_act() { p.actions { (vm_actions(&summary.name, &summary.desired, &summary.state)) } }
            table.facts {
                tr { th { "desired" } td { (summary.desired) } }
                tr { th { "node" } td { @if summary.node.is_empty() { "—" } @else { (summary.node) } } }
                tr { th { "epoch" } td { (summary.epoch) } }
                tr { th { "HA" } td { @if summary.ha { "yes, priority " (spec.priority) } @else { "no" } } }
                tr { th { "size" } td { (spec.cpus) " cpu, " (spec.memory_mib) " MiB, " (spec.disks.len()) " disk(s), " (spec.disk_policy) } }
                tr { th { "IP" } td { (summary.addresses.join(", ")) } }
                @if !vm.reason.is_empty() { tr { th { "failed because" } td.error { (vm.reason) } } }
                @if !vm.waiting.is_empty() { tr { th { "waiting" } td { (vm.waiting) } } }
            }
            h2 { "Events" }
            ol.vm-events {
                @for e in vm.events.iter().rev() { li { time { (clock(e.at_ms)) } " " (e.message) } }
            }
            p { a href="/ui" { "« overview" } }
        }
    };
    Html(layout(&summary.name, Some(&visitor), body).into_string()).into_response()
}
