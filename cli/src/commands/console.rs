//! `paddock vm console`: the VM's serial console, live. On a terminal the keys go to the
//! guest raw (Ctrl-] leaves, as in `virsh console`); without one, standard input is typed in
//! and what the guest prints is shown until `--for` after the input ended.

use std::io::{Read, Write};
use std::time::Duration;

use paddock_api::client::Client;

use super::client_failure;
use crate::output::{exit, Failure};

/// Ctrl-]
const ESCAPE: u8 = 0x1d;

enum Typed {
    Data(Vec<u8>),
    /// Ctrl-] on a terminal.
    Leave,
    /// Standard input ended.
    End,
}

/// The terminal in raw mode while this lives; restored when dropped (also on errors).
struct Raw(rustix::termios::Termios);

impl Raw {
    fn enter() -> std::io::Result<Raw> {
        let saved = rustix::termios::tcgetattr(std::io::stdin())?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &raw,
        )?;
        Ok(Raw(saved))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.0,
        );
    }
}

pub async fn run(client: &mut Client, name: &str, stay: Duration) -> Result<(), Failure> {
    let (typed, mut output) = client.vm_console(name).await.map_err(client_failure)?;
    let tty = rustix::termios::isatty(std::io::stdin());
    let raw = if tty { Some(Raw::enter()?) } else { None };
    let (keys, mut keys_rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || read_stdin(tty, keys));
    let mut until: Option<tokio::time::Instant> = None;
    let ended = loop {
        let deadline =
            until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            message = output.message() => match message {
                Ok(Some(message)) => {
                    if !message.node.is_empty() && tty {
                        eprint!("connected to the console of {name} on {} (Ctrl-] to leave)\r\n", message.node);
                    }
                    let mut out = std::io::stdout().lock();
                    out.write_all(&message.data)?;
                    out.flush()?;
                }
                Ok(None) => break Some(format!("the console of {name} closed (the VM stopped or moved)")),
                Err(status) => {
                    drop(raw);
                    return Err(Failure::new(exit::ERROR, format!("console: {}", status.message())));
                }
            },
            key = keys_rx.recv(), if until.is_none() => match key {
                Some(Typed::Data(data)) => {
                    if typed.send(data).await.is_err() {
                        break Some("the console closed".into());
                    }
                }
                Some(Typed::Leave) => break None,
                // Typing ended: stay `stay` for what the guest still prints.
                Some(Typed::End) | None => until = Some(tokio::time::Instant::now() + stay),
            },
            _ = tokio::time::sleep_until(deadline) => break None,
        }
    };
    drop(raw);
    if tty {
        eprintln!();
    }
    match ended {
        Some(why) => Err(Failure::new(exit::UNAVAILABLE, why)),
        None => Ok(()),
    }
}

fn read_stdin(tty: bool, keys: tokio::sync::mpsc::Sender<Typed>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = keys.blocking_send(Typed::End);
                return;
            }
            Ok(n) => n,
        };
        let data = &buf[..n];
        if tty {
            if let Some(at) = data.iter().position(|&b| b == ESCAPE) {
                if at > 0 {
                    let _ = keys.blocking_send(Typed::Data(data[..at].to_vec()));
                }
                let _ = keys.blocking_send(Typed::Leave);
                return;
            }
        }
        if keys.blocking_send(Typed::Data(data.to_vec())).is_err() {
            return;
        }
    }
}
