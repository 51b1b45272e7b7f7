//! Hardware-assisted fencing for production hosts (`--fencing watchdog`, DESIGN.md §5): the
//! agent feeds `/dev/watchdog` only while its lease is valid. If paddockd hangs, dies, or
//! loses its lease, feeding stops and the watchdog resets the host — as Proxmox VE does — so
//! no VM of a host that cannot fence itself keeps running after its lease.
//!
//! The watchdog's own timeout must be set at or below the lease (for the kernel's softdog:
//! `modprobe softdog soft_margin=3`; hardware watchdogs via their driver or BIOS). On a clean
//! shutdown paddockd writes the magic close character `V` so the host is not reset.
//!
//! Tested here against a plain file standing in for the device (what is written, when); no
//! machine this was built on had a watchdog device, so a reset was never observed: that part
//! is untested.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::liveness::Lease;

/// How often the device is fed while the lease is valid.
pub const FEED_EVERY: Duration = Duration::from_millis(500);

/// Feeds `device` while `lease` is valid, until shutdown (then disarms it with `V`).
pub async fn feed(
    device: PathBuf,
    lease: Arc<Mutex<Option<Lease>>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut file = open(&device)?;
    tracing::info!(device = %device.display(), "watchdog armed: fed only while this node holds a lease");
    loop {
        let valid = lease
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|l| l.valid(Instant::now()));
        if valid {
            file.write_all(b"\0")?;
            file.flush()?;
        }
        tokio::select! {
            _ = tokio::time::sleep(FEED_EVERY) => {}
            _ = shutdown.changed() => {
                // Magic close: a clean stop must not reset the host.
                file.write_all(b"V")?;
                file.flush()?;
                tracing::info!("watchdog disarmed");
                return Ok(());
            }
        }
    }
}

fn open(device: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot open the watchdog {}: {e}; load a driver (e.g. `modprobe softdog soft_margin=3`) or start without --fencing watchdog",
                device.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn feeds_only_under_a_valid_lease_and_disarms_on_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("watchdog");
        std::fs::write(&device, b"").expect("stand-in device");
        let lease = Arc::new(Mutex::new(Some(Lease {
            until: Instant::now() + Duration::from_millis(1_400),
            until_ns: 0,
            log_index: 0,
        })));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(feed(device.clone(), lease, shutdown));
        // Fed while valid (about 1.15 s: 3 feeds), then starved while the lease is over.
        tokio::time::sleep(Duration::from_millis(2_600)).await;
        let fed = std::fs::read(&device).expect("read");
        assert!((2..=4).contains(&fed.len()), "{fed:?}");
        assert!(fed.iter().all(|b| *b == 0));
        stop.send(true).expect("stop");
        task.await.expect("join").expect("feed");
        let written = std::fs::read(&device).expect("read");
        assert_eq!(written.last(), Some(&b'V'));
        assert_eq!(written.len(), fed.len() + 1);
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let err = open(Path::new("/nonexistent/watchdog")).expect_err("no device");
        assert!(err.to_string().contains("modprobe softdog"), "{err}");
    }
}
