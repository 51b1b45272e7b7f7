//! The memvm guest: what runs inside one `paddock-memvm` process, the way QEMU runs one VM.
//!
//! - Guest memory is one zeroed allocation of the spec's size; the OS hands out pages only when
//!   they are first written, so a 1 GiB guest costs nothing until touched.
//! - The guest loop runs every [`TICK`]: it dirties pages of its working set (writing its
//!   counter into them) at the configured rate and advances the guest counter.
//! - It rewrites `status.json` (state, counter) and its run interval file
//!   (`runs/VM-EPOCH-PID.json`: vm, node, epoch, start, end) every [`RECORD_EVERY`], so the
//!   chaos checkers can prove a VM never ran on two nodes at once.
//! - A small device-state blob ("registers") changes with every step, as a real VM's does.
//! - A `crash` file in its directory makes it crash (exit with an error), for tests and chaos.
//! - It stops cleanly when a `stop` file appears in its directory (the driver's shutdown
//!   request), writing the memory checksum, the device state (`device.bin`) and its final
//!   interval; SIGKILL is "pull the plug".
//! - It live-migrates like a QEMU process does: the engine of `paddock-migration` runs inside
//!   it, driven through its control socket ([`super::control`]); memory, counter and device
//!   state move directly to the destination guest over the node's mutual TLS. Started with
//!   `--incoming`, a guest populates its memory, listens, and resumes only when told the
//!   ownership switch committed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paddock_migration::pages::{PageOp, Taken};
use paddock_migration::run::{
    start_destination, start_source, Arrival, BoxConn, DestGuest, DestHandle, SourceConfig,
    SourceGuest, SourceHandle,
};
use paddock_migration::wire::GuestCpu;
use paddock_migration::{Memory, Params, PAGE};
use serde::{Deserialize, Serialize};

use super::control::{self, MigrateRequest, Reply, Request, Role};
pub const TICK: Duration = Duration::from_millis(10);
pub const RECORD_EVERY: Duration = Duration::from_millis(200);

/// What the guest publishes in `status.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuestStatus {
    pub vm: String,
    pub epoch: u64,
    pub pid: u32,
    /// "running" or "stopped".
    pub state: String,
    pub counter: u64,
    /// FNV-1a of the whole guest memory, written when the guest stops.
    pub checksum: Option<String>,
    pub updated_ms: u64,
}

/// One run of a VM on a node: the record the single-run checker reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInterval {
    pub vm: String,
    pub node: String,
    pub epoch: u64,
    pub pid: u32,
    /// Wall-clock Unix milliseconds of the first and the latest guest step.
    pub start_ms: u64,
    pub end_ms: u64,
    /// Written when the guest ended cleanly (stopped, fenced, migrated away): `end_ms` is its
    /// last step. Otherwise the guest may have run up to [`RECORD_EVERY`] past `end_ms`.
    #[serde(default)]
    pub exact_end: bool,
}

#[derive(Debug, Clone)]
pub struct GuestConfig {
    pub vm: String,
    pub node: String,
    pub epoch: u64,
    pub memory_mib: u64,
    /// The VM's directory (status, stop request, control socket).
    pub dir: PathBuf,
    /// Where run intervals go (shared by every VM of the node).
    pub runs_dir: PathBuf,
    pub dirty_pages_per_sec: u64,
    pub working_set_mib: u64,
    /// Bytes the guest rewrites in each page it touches (8: just its counter; 4096: the whole
    /// page, as a memory-bound workload does).
    pub dirty_write_bytes: usize,
    /// MiB of memory filled with mixed content at boot (zero, text, structured, random pages),
    /// for migration benchmarks.
    pub fill_mib: u64,
    /// The node's lease file (`BOOT_ID UNTIL_NS`): the guest runs no step past its deadline.
    pub lease_file: PathBuf,
    /// The node's TLS identity, for migrations (the cluster CA, NAME.crt, NAME.key).
    pub tls: Option<GuestTls>,
    /// Wait for an incoming migration instead of booting.
    pub incoming: Option<Incoming>,
}

#[derive(Debug, Clone)]
pub struct GuestTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Incoming {
    pub migration: u64,
    /// `host:0`: the address to listen at (the port is chosen and published).
    pub listen: String,
}

/// Published by an incoming guest once it is ready (`incoming.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncomingReady {
    pub port: u16,
    /// Allocating and populating the memory.
    pub prepare_ms: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Size of the device-state blob ("registers" and device queues of a real VM).
pub const DEVICE_STATE_BYTES: usize = 256;

/// Guest memory and execution state.
pub struct Guest {
    pub memory: Memory,
    pub counter: u64,
    /// Device state: every step updates it, so it must move with the memory in a migration
    /// for the guest to continue where it was.
    pub device_state: [u8; DEVICE_STATE_BYTES],
    /// Paused by a migration (stop-and-copy, post-copy switch).
    pub paused: bool,
    /// Percent of its speed a migration takes away (auto-converge).
    pub throttle: u8,
    working_set_pages: usize,
    write_bytes: usize,
}

/// The page the guest's step number `counter` writes.
fn page_of(counter: u64, working_set_pages: usize) -> usize {
    // A stride that is odd and large walks the working set in a scattered order.
    (counter.wrapping_mul(0x9E37_79B9) as usize) % working_set_pages
}

impl Guest {
    pub fn new(memory_mib: u64, working_set_mib: u64) -> Guest {
        let memory = Memory::new(memory_mib);
        let pages = memory.pages();
        Guest {
            memory,
            counter: 0,
            device_state: [0; DEVICE_STATE_BYTES],
            paused: false,
            throttle: 0,
            working_set_pages: ((working_set_mib as usize) << 20)
                .div_ceil(PAGE)
                .clamp(1, pages),
            write_bytes: 8,
        }
    }

    /// Pages the next `pages` steps touch that have not arrived yet (post-copy).
    fn missing_ahead(&self, pages: u64) -> Vec<u32> {
        if self.memory.missing_count() == 0 {
            return Vec::new();
        }
        (1..=pages.max(1))
            .map(|i| page_of(self.counter + i, self.working_set_pages))
            .filter(|&p| self.memory.is_missing(p))
            .map(|p| p as u32)
            .collect()
    }

    /// One guest step: dirties `pages` pages of the working set and advances the counter.
    pub fn step(&mut self, pages: u64) {
        let mut data = [0u8; PAGE];
        let len = self.write_bytes.clamp(8, PAGE);
        for _ in 0..pages.max(1) {
            self.counter += 1;
            let page = page_of(self.counter, self.working_set_pages);
            let mut word = self.counter;
            for chunk in data[..len].chunks_exact_mut(8) {
                chunk.copy_from_slice(&word.to_le_bytes());
                word = word.wrapping_mul(0x5851_F42D_4C95_7F2D).wrapping_add(1);
            }
            self.memory.write(page, 0, &data[..len]);
        }
        // "Registers": the counter and the last page touched, in a slot that rotates.
        let slot = (self.counter as usize % (DEVICE_STATE_BYTES / 16)) * 16;
        self.device_state[slot..slot + 8].copy_from_slice(&self.counter.to_le_bytes());
        let page = page_of(self.counter, self.working_set_pages);
        self.device_state[slot + 8..slot + 16].copy_from_slice(&(page as u64).to_le_bytes());
    }

    pub fn checksum(&self) -> u64 {
        self.memory.checksum()
    }
}

/// A guest shared between its step loop, its control socket and a migration.
pub struct Shared {
    /// parking_lot's lock: the step loop hands it over fairly (`unlock_fair`), so a guest
    /// dirtying memory flat out cannot starve the migration threads copying it.
    pub guest: parking_lot::Mutex<Guest>,
    /// Notified when post-copy pages arrive.
    arrived: parking_lot::Condvar,
    pub outgoing: Mutex<Option<(u64, SourceHandle)>>,
    pub incoming: Mutex<Option<(u64, DestHandle)>>,
}

impl Shared {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Guest> {
        self.guest.lock()
    }
}

impl SourceGuest for Shared {
    fn pages(&self) -> usize {
        self.lock().memory.pages()
    }
    fn start_dirty_log(&self) {
        self.lock().memory.start_dirty_log();
    }
    fn take_chunk(&self, index: usize, out: &mut Vec<u8>) -> Taken {
        self.lock().memory.take_chunk(index, out)
    }
    fn copy_chunk(&self, index: usize, mask: u64, out: &mut Vec<u8>) -> Taken {
        self.lock().memory.copy_chunk(index, mask, out)
    }
    fn dirty_pages(&self) -> u64 {
        self.lock().memory.dirty_pages()
    }
    fn take_dirty_log(&self) -> Vec<u64> {
        self.lock().memory.take_dirty_log()
    }
    fn throttle(&self, percent: u8) {
        self.lock().throttle = percent.min(99);
    }
    fn pause(&self) -> GuestCpu {
        let mut guest = self.lock();
        guest.paused = true;
        GuestCpu {
            counter: guest.counter,
            device: guest.device_state.to_vec(),
        }
    }
    fn resume(&self) {
        let mut guest = self.lock();
        guest.paused = false;
        guest.throttle = 0;
        guest.memory.stop_dirty_log();
    }
    fn digest(&self) -> u64 {
        paddock_migration::digest::full(self.lock().memory.bytes())
    }
}

impl DestGuest for Shared {
    fn pages(&self) -> usize {
        self.lock().memory.pages()
    }
    fn apply(&self, ops: &[PageOp], buf: &[u8], postcopy: bool) -> Result<usize, String> {
        let written = self.lock().memory.apply(ops, buf, postcopy);
        if postcopy {
            self.arrived.notify_all();
        }
        written
    }
    fn received_digest(&self) -> u64 {
        self.lock().memory.received_digest().unwrap_or(0)
    }
    fn set_missing(&self, pages: &[u32]) {
        self.lock().memory.set_missing(pages);
    }
    fn missing(&self) -> usize {
        self.lock().memory.missing_count()
    }
}

/// The guest loop's period: [`TICK`] for busy guests, up to 100 ms for slow ones.
pub fn tick_for(dirty_pages_per_sec: u64) -> Duration {
    let per_page = Duration::from_millis(1000 / dirty_pages_per_sec.max(1));
    per_page.clamp(TICK, Duration::from_millis(100))
}

/// Writes `value` as JSON to `path` atomically (temp file + rename).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

/// Most pages dirtied under one hold of the guest lock.
const STEP_SLICE: u64 = 256;

/// Longest a post-copy guest waits for a page before it gives up (its source is gone).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the guest until a stop is requested. Returns the final status.
pub fn run(config: &GuestConfig) -> std::io::Result<GuestStatus> {
    let pid = std::process::id();
    let mut guest = Guest::new(config.memory_mib, config.working_set_mib);
    guest.write_bytes = config.dirty_write_bytes;
    let status_path = config.dir.join("status.json");
    let publish = |state: &str, counter: u64, checksum: Option<u64>| {
        write_json(
            &status_path,
            &GuestStatus {
                vm: config.vm.clone(),
                epoch: config.epoch,
                pid,
                state: state.into(),
                counter,
                checksum: checksum.map(|c| format!("{c:016x}")),
                updated_ms: now_ms(),
            },
        )
    };
    let prepare_started = Instant::now();
    if config.incoming.is_some() {
        // Populated before the transfer (QEMU's -mem-prealloc): first writes to fresh memory
        // are several times slower than the network.
        publish("preparing", 0, None)?;
        guest.memory.populate();
        guest.memory.start_receiving();
    } else if config.fill_mib > 0 {
        guest.memory.fill_mixed(config.fill_mib, 7);
    }
    let shared = Arc::new(Shared {
        guest: parking_lot::Mutex::new(guest),
        arrived: parking_lot::Condvar::new(),
        outgoing: Mutex::new(None),
        incoming: Mutex::new(None),
    });
    serve_control(config, shared.clone())?;
    if let Some(incoming) = &config.incoming {
        match receive(
            config,
            incoming,
            &shared,
            &|state| publish(state, 0, None),
            prepare_started,
        )? {
            Some(()) => {}
            None => {
                return Ok(GuestStatus {
                    vm: config.vm.clone(),
                    epoch: config.epoch,
                    pid,
                    state: "discarded".into(),
                    counter: 0,
                    checksum: None,
                    updated_ms: now_ms(),
                })
            }
        }
    }
    std::fs::create_dir_all(&config.runs_dir)?;
    let run_path = config
        .runs_dir
        .join(format!("{}-{}-{pid}.json", config.vm, config.epoch));
    let mut interval = RunInterval {
        vm: config.vm.clone(),
        node: config.node.clone(),
        epoch: config.epoch,
        pid,
        start_ms: now_ms(),
        end_ms: now_ms(),
        exact_end: false,
    };
    let stop_path = config.dir.join("stop");
    // A slow guest ticks less often (up to every 100 ms), so thousands of idle guests do not
    // keep the host's cores busy waking up; the lease is checked before every step either way.
    let tick = tick_for(config.dirty_pages_per_sec);
    let pages_per_tick =
        (config.dirty_pages_per_sec * tick.as_millis() as u64 / 1000).clamp(1, 65_536);
    // The lease file only ever moves forward: re-read it only when the deadline seen last is
    // less than a second away (about once per renewal, not once per step).
    let mut seen_until: Option<u64> = None;
    let mut last_record = Instant::now() - RECORD_EVERY;
    let boot = crate::liveness::boot_id();
    let mut state = "stopped";
    let crash_path = config.dir.join("crash");
    let mut stepped = false;
    loop {
        if stop_path.exists() {
            break;
        }
        if crash_path.exists() {
            // An injected guest crash (tests, chaos): gone without a word to the status file.
            let _ = std::fs::remove_file(&crash_path);
            return Err(std::io::Error::other("injected guest crash"));
        }
        if migrated_away(&shared) {
            state = "migrated";
            break;
        }
        // Self-fencing: no step without a valid lease, checked right before every step, so a
        // guest paused with its host (SIGSTOP) that wakes after the deadline halts at once.
        let now = crate::liveness::monotonic_ns();
        if seen_until.is_none_or(|until| until < now + 1_000_000_000) {
            seen_until = crate::liveness::read_lease(&config.lease_file, &boot);
        }
        let leased = seen_until.is_some_and(|until| crate::liveness::monotonic_ns() < until);
        if !leased {
            state = "fenced";
            break;
        }
        let tick_started = Instant::now();
        let throttle = shared.lock().throttle.min(99);
        let mut left = pages_per_tick * u64::from(100 - throttle) / 100;
        let mut paused = false;
        // In slices, so a migration's page copies interleave with a busy guest, and the
        // lease deadline is honoured within a slice.
        while left > 0 {
            if seen_until.is_none_or(|until| crate::liveness::monotonic_ns() >= until) {
                break;
            }
            let mut guest = shared.lock();
            if guest.paused {
                paused = true;
                break;
            }
            let slice = left.min(STEP_SLICE);
            let missing = guest.missing_ahead(slice);
            if missing.is_empty() {
                guest.step(slice);
                parking_lot::MutexGuard::unlock_fair(guest);
                left -= slice;
                interval.end_ms = now_ms();
                stepped = true;
            } else {
                drop(guest);
                fetch(&shared, missing)?;
            }
        }
        if last_record.elapsed() >= RECORD_EVERY {
            last_record = Instant::now();
            if stepped {
                write_json(&run_path, &interval)?;
            }
            let counter = shared.lock().counter;
            publish(if paused { "paused" } else { "running" }, counter, None)?;
        }
        if paused {
            // Waiting for the switch (or a rollback): short sleeps, the downtime is counted.
            std::thread::sleep(Duration::from_millis(1));
        } else {
            // A guest whose work overran its tick runs flat out.
            std::thread::sleep(tick.saturating_sub(tick_started.elapsed()));
        }
    }
    // The interval ends at the last step taken (not now: a fenced guest may wake long after);
    // a guest that never stepped never ran.
    if stepped {
        interval.exact_end = true;
        write_json(&run_path, &interval)?;
    }
    let guest = shared.lock();
    std::fs::write(config.dir.join("device.bin"), guest.device_state)?;
    let status = GuestStatus {
        vm: config.vm.clone(),
        epoch: config.epoch,
        pid,
        state: state.into(),
        counter: guest.counter,
        checksum: Some(format!("{:016x}", guest.checksum())),
        updated_ms: now_ms(),
    };
    drop(guest);
    write_json(&status_path, &status)?;
    if state == "migrated" {
        // The figures stay readable for the agent until it destroys this guest.
        wait_for_destroy(&stop_path);
    }
    Ok(status)
}

/// Whether this guest's outgoing migration completed (the destination owns the VM now).
fn migrated_away(shared: &Shared) -> bool {
    let outgoing = shared.outgoing.lock().ok();
    outgoing
        .as_ref()
        .and_then(|o| o.as_ref())
        .is_some_and(|(_, handle)| {
            let p = handle.progress();
            p.done && (p.phase == "completed" || p.phase == "abandoned")
        })
}

/// A migrated-away guest keeps answering its control socket until it is destroyed or asked
/// to stop (at most a minute).
fn wait_for_destroy(stop: &Path) {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until && !stop.exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Post-copy: asks the source for pages the next steps need and waits until they arrived.
fn fetch(shared: &Shared, pages: Vec<u32>) -> std::io::Result<()> {
    let handle = shared
        .incoming
        .lock()
        .ok()
        .and_then(|i| i.as_ref().map(|(_, h)| h.clone()));
    if let Some(handle) = &handle {
        handle.request(pages.clone());
    }
    let deadline = Instant::now() + FETCH_TIMEOUT;
    let mut guest = shared.lock();
    while pages.iter().any(|&p| guest.memory.is_missing(p as usize)) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::other(format!(
                "post-copy: {} page(s) never arrived from the source in {} s (source lost); the guest cannot go on",
                pages.len(),
                FETCH_TIMEOUT.as_secs()
            )));
        }
        shared
            .arrived
            .wait_for(&mut guest, left.min(Duration::from_millis(100)));
    }
    Ok(())
}

/// Incoming mode: listen, receive, and resume only on the committed switch. `None`: discarded.
fn receive(
    config: &GuestConfig,
    incoming: &Incoming,
    shared: &Arc<Shared>,
    publish: &dyn Fn(&str) -> std::io::Result<()>,
    started: Instant,
) -> std::io::Result<Option<()>> {
    let tls = config
        .tls
        .as_ref()
        .ok_or_else(|| std::io::Error::other("an incoming migration needs --certs-dir"))?;
    let server = paddock_migration::tls::server_config(&tls.ca, &tls.cert, &tls.key)
        .map_err(std::io::Error::other)?;
    let listener = std::net::TcpListener::bind(&incoming.listen)?;
    let port = listener.local_addr()?.port();
    let accept = Box::new(move || -> std::io::Result<BoxConn> {
        loop {
            let (tcp, _) = listener.accept()?;
            match paddock_migration::tls::accept(&server, tcp) {
                Ok(stream) if peer_is_node(&stream.conn) => return Ok(Box::new(stream)),
                // Not a cluster node, or a failed handshake: refuse it and keep listening.
                _ => continue,
            }
        }
    });
    let handle = start_destination(shared.clone(), incoming.migration, accept);
    if let Ok(mut slot) = shared.incoming.lock() {
        *slot = Some((incoming.migration, handle.clone()));
    }
    publish("incoming")?;
    write_json(
        &config.dir.join("incoming.json"),
        &IncomingReady {
            port,
            prepare_ms: started.elapsed().as_millis() as u64,
        },
    )?;
    match handle.wait() {
        Arrival::Resume(cpu) => {
            let mut guest = shared.lock();
            guest.counter = cpu.counter;
            let n = cpu.device.len().min(DEVICE_STATE_BYTES);
            guest.device_state[..n].copy_from_slice(&cpu.device[..n]);
            Ok(Some(()))
        }
        Arrival::Discard(reason) => {
            publish("discarded")?;
            eprintln!(
                "incoming migration {} discarded: {reason}",
                incoming.migration
            );
            Ok(None)
        }
    }
}

/// Whether the peer of a TLS connection presented a cluster node's certificate (an admin or
/// operator certificate from the same CA is not enough to feed a guest memory).
fn peer_is_node(conn: &rustls::CommonState) -> bool {
    paddock_migration::tls::peer_certificate(conn)
        .and_then(|der| paddock_api::certs::peer_identity(&der))
        .is_some_and(|id| id.role == paddock_api::certs::Role::Node)
}

/// Answers the control socket: migrate out, query, the switch outcome, cancel.
fn serve_control(config: &GuestConfig, shared: Arc<Shared>) -> std::io::Result<()> {
    let tls = config.tls.clone();
    control::serve(
        &config.dir.join("control.sock"),
        move |request| match request {
            Request::Migrate(m) => start_outgoing(&shared, tls.as_ref(), m),
            Request::Query => {
                if let Some((id, handle)) = shared.outgoing.lock().ok().and_then(|o| o.clone()) {
                    return Reply {
                        role: Some(Role::Source),
                        migration: Some(id),
                        progress: Some(handle.progress()),
                        ..Reply::ok()
                    };
                }
                if let Some((id, _)) = shared.incoming.lock().ok().and_then(|i| i.clone()) {
                    let missing = shared.lock().memory.missing_count() as u64;
                    return Reply {
                        role: Some(Role::Destination),
                        migration: Some(id),
                        progress: Some(paddock_migration::Progress {
                            remaining_bytes: missing * PAGE as u64,
                            ..Default::default()
                        }),
                        ..Reply::ok()
                    };
                }
                Reply {
                    role: Some(Role::None),
                    ..Reply::ok()
                }
            }
            Request::Switch { committed } => {
                if let Some((_, handle)) = shared.outgoing.lock().ok().and_then(|o| o.clone()) {
                    handle.switch(committed);
                } else if let Some((_, handle)) =
                    shared.incoming.lock().ok().and_then(|i| i.clone())
                {
                    handle.outcome(committed);
                } else {
                    return Reply::error("no migration here");
                }
                Reply::ok()
            }
            Request::Cancel { reason } => {
                match shared.outgoing.lock().ok().and_then(|o| o.clone()) {
                    Some((_, handle)) => {
                        handle.cancel(&reason);
                        Reply::ok()
                    }
                    None => Reply::error("no outgoing migration here"),
                }
            }
        },
    )
}

fn start_outgoing(shared: &Arc<Shared>, tls: Option<&GuestTls>, m: MigrateRequest) -> Reply {
    let Ok(mut outgoing) = shared.outgoing.lock() else {
        return Reply::error("guest state lock poisoned");
    };
    if let Some((id, handle)) = outgoing.as_ref() {
        let p = handle.progress();
        if *id == m.migration || !p.done || p.phase == "completed" {
            // The same request again (a restarted paddockd), or a migration under way.
            return Reply {
                migration: Some(*id),
                ..Reply::ok()
            };
        }
    }
    let Some(tls) = tls else {
        return Reply::error("this guest was started without the node's certificates");
    };
    let client = match paddock_migration::tls::client_config(&tls.ca, &tls.cert, &tls.key) {
        Ok(c) => c,
        Err(e) => return Reply::error(e.to_string()),
    };
    let (mode, policy) = (m.mode, m.policy);
    let to = m.to.clone();
    let connect = Box::new(move |_channel| -> std::io::Result<BoxConn> {
        let stream = paddock_migration::tls::connect(&client, &to)?;
        if !peer_is_node(&stream.conn) {
            return Err(std::io::Error::other(
                "the destination did not present a cluster node certificate",
            ));
        }
        Ok(Box::new(stream))
    });
    let config = SourceConfig {
        migration: m.migration,
        params: Params {
            mode,
            policy,
            max_downtime: Duration::from_millis(m.max_downtime_ms),
            max_rounds: 30,
        },
        streams: m.streams.clamp(1, 8),
        bandwidth: m.bandwidth,
        ..SourceConfig::default()
    };
    let handle = start_source(shared.clone(), connect, config);
    *outgoing = Some((m.migration, handle));
    Reply {
        migration: Some(m.migration),
        ..Reply::ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2 MiB guest of node n1 keeping everything under `dir`.
    fn test_config(dir: &Path, vm: &str, epoch: u64) -> GuestConfig {
        GuestConfig {
            vm: vm.into(),
            node: "n1".into(),
            epoch,
            memory_mib: 2,
            dir: dir.to_path_buf(),
            runs_dir: dir.join("runs"),
            dirty_pages_per_sec: 1000,
            working_set_mib: 1,
            dirty_write_bytes: 8,
            fill_mib: 0,
            lease_file: dir.join("lease"),
            tls: None,
            incoming: None,
        }
    }

    #[test]
    fn slow_guests_tick_less_often() {
        assert_eq!(tick_for(2000), TICK);
        assert_eq!(tick_for(100), TICK);
        assert_eq!(tick_for(20), Duration::from_millis(50));
        assert_eq!(tick_for(1), Duration::from_millis(100));
    }

    #[test]
    fn a_guest_halts_when_its_lease_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(dir.path(), "v2", 1);
        let lease_ends = crate::liveness::monotonic_ns() + 300_000_000;
        crate::liveness::store_lease(&config.lease_file, lease_ends).expect("lease");
        let status = run(&config).expect("guest runs");
        assert_eq!(status.state, "fenced");
        assert!(status.counter > 0);
        assert!(crate::liveness::monotonic_ns() >= lease_ends);
        // Without any lease it takes no step at all.
        std::fs::remove_file(&config.lease_file).expect("remove");
        let status = run(&config).expect("guest runs");
        assert_eq!((status.state.as_str(), status.counter), ("fenced", 0));
    }

    #[test]
    fn steps_dirty_the_working_set_only_and_change_the_checksum() {
        let mut guest = Guest::new(4, 1);
        let before = guest.checksum();
        guest.step(1000);
        assert_eq!(guest.counter, 1000);
        assert_ne!(guest.checksum(), before);
        assert!(guest.device_state.iter().any(|b| *b != 0));
        let working_set = 1 << 20;
        assert!(guest.memory.bytes()[working_set..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_guest_stops_when_asked_and_records_its_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = test_config(dir.path(), "v1", 3);
        crate::liveness::store_lease(
            &config.lease_file,
            crate::liveness::monotonic_ns() + 60_000_000_000,
        )
        .expect("lease");
        let stopper = {
            let stop = dir.path().join("stop");
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                std::fs::write(stop, b"").expect("stop file");
            })
        };
        let status = run(&config).expect("guest runs");
        stopper.join().expect("stopper");
        assert_eq!(status.state, "stopped");
        assert!(status.counter > 0);
        assert!(status.checksum.is_some());
        let device = std::fs::read(dir.path().join("device.bin")).expect("device state");
        assert_eq!(device.len(), DEVICE_STATE_BYTES);
        let runs: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
            .expect("runs")
            .collect();
        assert_eq!(runs.len(), 1);
    }
}
