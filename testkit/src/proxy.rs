//! Fault proxies: one TCP proxy per directed node-to-node link (A dials B through proxy A→B,
//! set with paddockd's `--route`). Faults need no root and no kernel features: a cut link
//! refuses new connections and breaks open ones; a slow link delays every chunk.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a link does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    Cut,
    /// Each chunk waits `delay_ms` plus up to `jitter_ms` before it is forwarded.
    Slow {
        delay_ms: u64,
        jitter_ms: u64,
    },
    /// Each chunk resets its connection with probability `reset_per_mille` / 1000.
    Flaky {
        reset_per_mille: u32,
    },
}

/// One directed link's proxy.
pub struct LinkProxy {
    pub address: String,
    mode: Arc<Mutex<LinkMode>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `target`.
    pub async fn start(target: String) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let mode = Arc::new(Mutex::new(LinkMode::Pass));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            target,
            mode.clone(),
            connections.clone(),
        ));
        Ok(LinkProxy {
            address,
            mode,
            connections,
            accept,
        })
    }

    pub fn set(&self, mode: LinkMode) {
        if let Ok(mut current) = self.mode.lock() {
            *current = mode;
        }
        if mode == LinkMode::Cut {
            // Break open connections too: a cut is a cut, not just "no new connections".
            if let Ok(mut open) = self.connections.lock() {
                for connection in open.drain(..) {
                    connection.abort();
                }
            }
        }
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(LinkMode::Cut);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: String,
    mode: Arc<Mutex<LinkMode>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        let current = mode.lock().map_or(LinkMode::Pass, |m| *m);
        if current == LinkMode::Cut {
            drop(inbound);
            continue;
        }
        let target = target.clone();
        let mode = mode.clone();
        let handle = tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::select! {
                _ = pump(in_read, out_write, mode.clone()) => {}
                _ = pump(out_read, in_write, mode) => {}
            }
        });
        if let Ok(mut open) = connections.lock() {
            open.retain(|h| !h.is_finished());
            open.push(handle);
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<Mutex<LinkMode>>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = mode.lock().map_or(LinkMode::Pass, |m| *m);
        match current {
            LinkMode::Cut => return,
            LinkMode::Slow {
                delay_ms,
                jitter_ms,
            } => {
                let jitter = if jitter_ms > 0 {
                    fastrand::u64(0..=jitter_ms)
                } else {
                    0
                };
                tokio::time::sleep(Duration::from_millis(delay_ms + jitter)).await;
            }
            LinkMode::Flaky { reset_per_mille } => {
                if fastrand::u32(0..1000) < reset_per_mille {
                    return;
                }
            }
            LinkMode::Pass => {}
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
