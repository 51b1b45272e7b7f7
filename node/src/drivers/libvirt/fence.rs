//! `paddock-fence`: the fencing process of a libvirt host (DESIGN.md §5, §6).
//!
//! A memvm guest reads the node's lease itself; a QEMU process does not. If paddockd is
//! killed, hangs or is stopped while libvirtd and QEMU live on, the VMs would keep running
//! while the leader declares the node down and starts them elsewhere. `paddock-fence` closes
//! that: a small process of its own (its own session, so it outlives paddockd and its process
//! group), started by paddockd and adopted again by the next one, that reads the lease file
//! every [`CHECK_EVERY`] and, from [`MARGIN`] before the lease ends until a newer lease is
//! written, destroys every Paddock domain of its libvirtd (domains without Paddock's marks are
//! never touched). The leader declares the node down only after
//! `lease + election timeout + margin` of silence, so the domains are gone well before.
//!
//! What it does not cover: libvirtd itself hung (destroy calls then block; `--fencing
//! watchdog` resets such a host) and the host's clock stopping (a paused VM of the whole
//! host: the lease and the fence stop together; the watchdog again).

use std::path::{Path, PathBuf};
use std::time::Duration;

use virt::sys;

use crate::liveness;

/// How often the lease is read.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);
/// Domains are destroyed from this long before the lease ends (destroying takes time).
pub const MARGIN: Duration = Duration::from_millis(250);

/// The fencing loop; runs until killed.
pub fn run(lease_file: &Path, uri: &str) -> ! {
    virt::error::clear_error_callback();
    let boot = liveness::boot_id();
    let mut conn: Option<virt::connect::Connect> = None;
    let mut fenced_logged = false;
    loop {
        let leased = liveness::read_lease(lease_file, &boot)
            .is_some_and(|until| liveness::monotonic_ns() + (MARGIN.as_nanos() as u64) < until);
        if leased {
            fenced_logged = false;
        } else {
            if !fenced_logged {
                eprintln!(
                    "{} paddock-fence: no valid lease in {}: destroying Paddock's domains",
                    stamp(),
                    lease_file.display()
                );
                fenced_logged = true;
            }
            if conn.as_ref().is_none_or(|c| !c.is_alive().unwrap_or(false)) {
                conn = virt::connect::Connect::open(Some(uri)).ok();
            }
            if let Some(c) = &conn {
                destroy_paddock_domains(c);
            }
        }
        std::thread::sleep(CHECK_EVERY);
    }
}

fn destroy_paddock_domains(conn: &virt::connect::Connect) {
    let Ok(domains) = conn.list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE) else {
        return;
    };
    for domain in domains {
        if super::marks_of(&domain).is_none() {
            continue;
        }
        let name = domain.name().unwrap_or_default();
        match domain.destroy() {
            Ok(()) => eprintln!("{} paddock-fence: destroyed {name}", stamp()),
            Err(e) => eprintln!("{} paddock-fence: cannot destroy {name}: {e}", stamp()),
        }
    }
}

/// Wall-clock seconds, for the log.
fn stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", now.as_secs(), now.subsec_millis())
}

/// Where paddockd keeps the fencing process's PID and log.
pub fn pid_path(data_dir: &Path) -> PathBuf {
    data_dir.join("fence.pid")
}

/// Starts the fencing process for this node, or adopts the one a previous paddockd started
/// (it runs as long as it is alive and fences this lease file). Returns its PID.
pub fn ensure_running(data_dir: &Path, uri: &str) -> anyhow::Result<u32> {
    use anyhow::Context;
    let lease_file = liveness::lease_path(data_dir);
    let pid_file = pid_path(data_dir);
    if let Some(pid) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.first().is_some_and(|a| a.ends_with(b"paddock-fence"))
            && args
                .iter()
                .any(|a| *a == lease_file.as_os_str().as_encoded_bytes());
        if ours {
            tracing::info!(pid, "fencing process adopted");
            return Ok(pid);
        }
    }
    let exe = std::env::current_exe().context("cannot locate paddockd")?;
    let fence = exe.with_file_name("paddock-fence");
    if !fence.is_file() {
        anyhow::bail!(
            "{} is missing: the libvirt driver needs its fencing process next to paddockd (build with --features paddock-node/libvirt, install both binaries)",
            fence.display()
        );
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("fence.log"))
        .context("cannot open fence.log")?;
    let mut command = std::process::Command::new(&fence);
    command
        .arg("--lease-file")
        .arg(&lease_file)
        .arg("--libvirt-uri")
        .arg(uri)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: neither paddockd's death nor a signal to paddockd's group reaches it.
    #[allow(unsafe_code)]
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| rustix::process::setsid().map(|_| ()).map_err(Into::into));
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", fence.display()))?;
    let pid = child.id();
    let tmp = pid_file.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(tmp, &pid_file)?;
    tracing::info!(pid, "fencing process started");
    Ok(pid)
}
