//! What the systemd unit relies on: paddockd says READY=1 on $NOTIFY_SOCKET once it serves
//! (Type=notify), and STOPPING=1 when it stops.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use paddock_tests::{cluster, serial, spec, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn paddockd_notifies_systemd_when_ready_and_when_stopping() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (dir, mut cluster) = cluster(spec(1))?;
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    // The child inherits it; this is the only test of its binary, so nothing else reads the
    // environment meanwhile.
    std::env::set_var("NOTIFY_SOCKET", &socket_path);
    cluster.start_all()?;
    std::env::remove_var("NOTIFY_SOCKET");
    let started = Instant::now();
    let mut messages = String::new();
    while !messages.contains("READY=1") && started.elapsed() < WAIT {
        let mut buffer = [0u8; 256];
        if let Ok(n) = socket.recv(&mut buffer) {
            messages.push_str(&String::from_utf8_lossy(&buffer[..n]));
            messages.push('\n');
        }
    }
    assert!(
        messages.contains("READY=1"),
        "no READY=1 within {WAIT:?}: {messages:?}"
    );
    // Ready means served: the node answers at once.
    cluster.status_of(0).await?;
    assert!(
        cluster.terminate(0, Duration::from_secs(10)),
        "paddockd exits on SIGTERM"
    );
    let mut buffer = [0u8; 256];
    let n = socket.recv(&mut buffer)?;
    assert!(String::from_utf8_lossy(&buffer[..n]).contains("STOPPING=1"));
    Ok(())
}
