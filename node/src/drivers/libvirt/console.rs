//! An interactive serial console: a libvirt console stream (`virDomainOpenConsole`, what
//! `virsh console` uses) on a connection of its own, pumped by one thread. The stream is
//! non-blocking; libvirt's event loop (started with the driver, see `events.rs`) buffers what
//! the guest prints, the thread moves it out and the typed bytes in every few milliseconds.

use std::time::Duration;

use virt::connect::Connect;
use virt::stream::Stream;
use virt::sys;

use super::{connect, err};
use crate::drivers::{ConsoleSession, DriverError};

/// How often the pump looks for bytes when both directions were idle.
const IDLE: Duration = Duration::from_millis(10);

/// Opens `vm`'s serial console, taking it over from any other session.
pub fn open(uri: &str, vm: &str) -> Result<ConsoleSession, DriverError> {
    let conn = connect(uri)?;
    let domain = conn
        .lookup_domain_by_name(vm)
        .map_err(|e| err(&format!("no domain {vm} here"), e))?;
    let stream = Stream::new(&conn, sys::VIR_STREAM_NONBLOCK)
        .map_err(|e| err("cannot make a console stream", e))?;
    domain
        .open_console(None, &stream, sys::VIR_DOMAIN_CONSOLE_FORCE)
        .map_err(|e| err(&format!("cannot open the console of {vm}"), e))?;
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let name = vm.to_string();
    std::thread::Builder::new()
        .name(format!("console-{vm}"))
        .spawn(move || {
            let _keep: Connect = conn;
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let mut busy = false;
                match recv(&stream, &mut buf) {
                    Recv::Data(n) => {
                        busy = true;
                        if out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Recv::Again => {}
                    Recv::End => break,
                    Recv::Failed(e) => {
                        tracing::info!(vm = %name, error = %e, "console stream ended");
                        break;
                    }
                }
                match in_rx.try_recv() {
                    Ok(data) => {
                        busy = true;
                        if send_all(&stream, &data).is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
                }
                if !busy {
                    std::thread::sleep(IDLE);
                }
            }
            let _ = stream.abort();
        })
        .map_err(|e| DriverError(format!("cannot start the console thread: {e}")))?;
    Ok(ConsoleSession {
        output: out_rx,
        input: in_tx,
    })
}

enum Recv {
    Data(usize),
    Again,
    End,
    Failed(String),
}

/// `virStreamRecv` on a non-blocking stream: -2 means "nothing yet", which `virt`'s wrapper
/// cannot tell from an error.
#[allow(unsafe_code)]
fn recv(stream: &Stream, buf: &mut [u8]) -> Recv {
    // SAFETY: the stream is alive for the call and `buf` is valid for `buf.len()` bytes.
    let n = unsafe { sys::virStreamRecv(stream.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    match n {
        0 => Recv::End,
        -2 => Recv::Again,
        n if n > 0 => Recv::Data(n as usize),
        _ => Recv::Failed(virt::error::Error::last_error().to_string()),
    }
}

#[allow(unsafe_code)]
fn send_all(stream: &Stream, mut data: &[u8]) -> Result<(), ()> {
    while !data.is_empty() {
        // SAFETY: as in `recv`; libvirt only reads `data`.
        let n = unsafe { sys::virStreamSend(stream.as_ptr(), data.as_ptr() as *mut _, data.len()) };
        match n {
            -2 => std::thread::sleep(Duration::from_millis(1)),
            n if n > 0 => data = &data[n as usize..],
            _ => return Err(()),
        }
    }
    Ok(())
}
