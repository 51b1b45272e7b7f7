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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const PAGE: usize = 4096;
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
}

#[derive(Debug, Clone)]
pub struct GuestConfig {
    pub vm: String,
    pub node: String,
    pub epoch: u64,
    pub memory_mib: u64,
    /// The VM's directory (status, stop request).
    pub dir: PathBuf,
    /// Where run intervals go (shared by every VM of the node).
    pub runs_dir: PathBuf,
    pub dirty_pages_per_sec: u64,
    pub working_set_mib: u64,
    /// The node's lease file (`BOOT_ID UNTIL_NS`): the guest runs no step past its deadline.
    pub lease_file: PathBuf,
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
    pub memory: Vec<u8>,
    pub counter: u64,
    /// Device state: every step updates it, so it must move with the memory in a migration
    /// for the guest to continue where it was.
    pub device_state: [u8; DEVICE_STATE_BYTES],
    working_set_pages: usize,
}

impl Guest {
    pub fn new(memory_mib: u64, working_set_mib: u64) -> Guest {
        let bytes = (memory_mib as usize) << 20;
        let pages = (bytes / PAGE).max(1);
        Guest {
            memory: vec![0; bytes.max(PAGE)],
            counter: 0,
            device_state: [0; DEVICE_STATE_BYTES],
            working_set_pages: ((working_set_mib as usize) << 20)
                .div_ceil(PAGE)
                .clamp(1, pages),
        }
    }

    /// One guest step: dirties `pages` pages of the working set and advances the counter.
    pub fn step(&mut self, pages: u64) {
        for _ in 0..pages.max(1) {
            self.counter += 1;
            // A stride that is odd and large walks the working set in a scattered order.
            let page = (self.counter.wrapping_mul(0x9E37_79B9) as usize) % self.working_set_pages;
            let at = page * PAGE;
            self.memory[at..at + 8].copy_from_slice(&self.counter.to_le_bytes());
        }
        // "Registers": the counter and the last page touched, in a slot that rotates.
        let slot = (self.counter as usize % (DEVICE_STATE_BYTES / 16)) * 16;
        self.device_state[slot..slot + 8].copy_from_slice(&self.counter.to_le_bytes());
        let page = (self.counter.wrapping_mul(0x9E37_79B9) as usize) % self.working_set_pages;
        self.device_state[slot + 8..slot + 16].copy_from_slice(&(page as u64).to_le_bytes());
    }

    pub fn checksum(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for chunk in self.memory.chunks_exact(8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            hash ^= word;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
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

/// Runs the guest until a stop is requested. Returns the final status.
pub fn run(config: &GuestConfig) -> std::io::Result<GuestStatus> {
    let pid = std::process::id();
    let mut guest = Guest::new(config.memory_mib, config.working_set_mib);
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
    };
    let stop_path = config.dir.join("stop");
    let status_path = config.dir.join("status.json");
    // A slow guest ticks less often (up to every 100 ms), so thousands of idle guests do not
    // keep the host's cores busy waking up; the lease is checked before every step either way.
    let tick = tick_for(config.dirty_pages_per_sec);
    let pages_per_tick = (config.dirty_pages_per_sec * tick.as_millis() as u64 / 1000).max(1);
    // The lease file only ever moves forward: re-read it only when the deadline seen last is
    // less than a second away (about once per renewal, not once per step).
    let mut seen_until: Option<u64> = None;
    let mut last_record = Instant::now() - RECORD_EVERY;
    let boot = crate::liveness::boot_id();
    let mut state = "stopped";
    let crash_path = config.dir.join("crash");
    loop {
        if stop_path.exists() {
            break;
        }
        if crash_path.exists() {
            // An injected guest crash (tests, chaos): gone without a word to the status file.
            let _ = std::fs::remove_file(&crash_path);
            return Err(std::io::Error::other("injected guest crash"));
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
        guest.step(pages_per_tick);
        interval.end_ms = now_ms();
        if last_record.elapsed() >= RECORD_EVERY {
            last_record = Instant::now();
            write_json(&run_path, &interval)?;
            write_json(
                &status_path,
                &GuestStatus {
                    vm: config.vm.clone(),
                    epoch: config.epoch,
                    pid,
                    state: "running".into(),
                    counter: guest.counter,
                    checksum: None,
                    updated_ms: interval.end_ms,
                },
            )?;
        }
        std::thread::sleep(tick);
    }
    // The interval ends at the last step taken (not now: a fenced guest may wake long after);
    // a guest that never stepped never ran.
    if guest.counter > 0 {
        write_json(&run_path, &interval)?;
    }
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
    write_json(&status_path, &status)?;
    Ok(status)
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
            lease_file: dir.join("lease"),
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
        assert!(guest.memory[working_set..].iter().all(|b| *b == 0));
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
