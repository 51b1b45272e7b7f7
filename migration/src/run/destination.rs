//! The destination's runtime: accepting the source's connections, receiving chunks on every
//! stream, and the [`Destination`] state machine driven by what arrives.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::destination::{negotiate, DestAction, DestEvent, DestPhase, Destination};
use crate::pages::{self};
use crate::wire::{self, Channel, GuestCpu, Hello, Msg};
use crate::PAGE;

use super::{BoxConn, DestGuest};

/// How an incoming migration ended for the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// The switch committed: run the guest from this CPU state.
    Resume(GuestCpu),
    /// Throw the incoming guest away.
    Discard(String),
}

enum DstInput {
    Control(BoxConn, Hello),
    Reply(BoxConn),
    Msg(Msg),
    RoundEnd(u16, u32),
    Arrived,
    Failed(String),
    Outcome(bool),
}

/// The outside's handle on an incoming migration.
#[derive(Clone)]
pub struct DestHandle {
    inputs: Sender<DstInput>,
    reply: Arc<Mutex<Option<BoxConn>>>,
    arrival: Arc<(Mutex<Option<Arrival>>, std::sync::Condvar)>,
}

impl std::fmt::Debug for DestHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestHandle").finish_non_exhaustive()
    }
}

impl DestHandle {
    /// The committed outcome as the local agent saw it (the source may be gone).
    pub fn outcome(&self, switched: bool) {
        let _ = self.inputs.send(DstInput::Outcome(switched));
    }

    /// Blocks until the migration resumes here or is discarded.
    pub fn wait(&self) -> Arrival {
        let (lock, ready) = &*self.arrival;
        let Ok(mut arrival) = lock.lock() else {
            return Arrival::Discard("internal lock poisoned".into());
        };
        loop {
            if let Some(a) = arrival.clone() {
                return a;
            }
            arrival = match ready.wait(arrival) {
                Ok(a) => a,
                Err(_) => return Arrival::Discard("internal lock poisoned".into()),
            };
        }
    }

    /// Post-copy: asks the source for pages the guest needs now.
    pub fn request(&self, pages: Vec<u32>) -> bool {
        let Ok(mut reply) = self.reply.lock() else {
            return false;
        };
        let Some(conn) = reply.as_mut() else {
            return false;
        };
        let mut scratch = Vec::new();
        wire::write(conn, &Msg::PageRequest { pages }, &mut scratch).is_ok()
    }

    /// Tells the source the guest runs (downtime ends here).
    fn resumed(&self) {
        if let Ok(mut reply) = self.reply.lock() {
            if let Some(conn) = reply.as_mut() {
                let mut scratch = Vec::new();
                let _ = wire::write(conn, &Msg::Resumed, &mut scratch);
            }
        }
    }
}

/// Receives a migration into `guest`. `accept` yields the source's connections (on a
/// listener the caller owns); it is called until every channel is in. Returns at once.
pub fn start_destination(
    guest: Arc<dyn DestGuest>,
    migration: u64,
    accept: Box<dyn FnMut() -> std::io::Result<BoxConn> + Send>,
) -> DestHandle {
    let (tx, rx) = channel();
    let handle = DestHandle {
        inputs: tx.clone(),
        reply: Arc::new(Mutex::new(None)),
        arrival: Arc::new((Mutex::new(None), std::sync::Condvar::new())),
    };
    let acceptor = {
        let tx = tx.clone();
        let guest = guest.clone();
        std::thread::Builder::new()
            .name("migrate-accept".into())
            .spawn(move || accept_all(accept, migration, guest, tx))
    };
    let coordinator = {
        let handle = handle.clone();
        std::thread::Builder::new()
            .name("migrate-dst".into())
            .spawn(move || run_destination(guest, rx, tx, handle))
    };
    if let Err(e) = acceptor.and(coordinator) {
        let (lock, ready) = &*handle.arrival;
        if let Ok(mut a) = lock.lock() {
            *a = Some(Arrival::Discard(format!(
                "cannot start the migration threads: {e}"
            )));
            ready.notify_all();
        }
    }
    handle
}

fn accept_all(
    mut accept: Box<dyn FnMut() -> std::io::Result<BoxConn> + Send>,
    migration: u64,
    guest: Arc<dyn DestGuest>,
    out: Sender<DstInput>,
) {
    let mut buf = Vec::new();
    let mut expected: Option<usize> = None;
    let mut accepted = 0;
    while expected.is_none_or(|n| accepted < n) {
        let mut conn = match accept() {
            Ok(conn) => conn,
            Err(e) => {
                let _ = out.send(DstInput::Failed(format!("accepting the source: {e}")));
                return;
            }
        };
        let hello = match wire::read(&mut conn, &mut buf) {
            Ok(Msg::Hello(hello)) => hello,
            // Not a migration source (a probe, a port scan): drop it, keep listening.
            _ => continue,
        };
        let refuse = |conn: &mut BoxConn, reason: String| {
            let mut scratch = Vec::new();
            let _ = wire::write(conn, &Msg::Refused { reason }, &mut scratch);
        };
        if hello.migration != migration
            || hello.page_size != PAGE as u32
            || hello.pages != guest.pages() as u64
        {
            refuse(
                &mut conn,
                format!(
                    "this destination waits for migration {migration} of {} pages of {PAGE} bytes",
                    guest.pages()
                ),
            );
            continue;
        }
        expected = Some(2 + hello.streams as usize);
        accepted += 1;
        match hello.channel {
            Channel::Control => {
                let _ = out.send(DstInput::Control(conn, hello));
            }
            channel => {
                let Some(version) = negotiate(&hello.versions) else {
                    refuse(&mut conn, "no shared protocol version".into());
                    continue;
                };
                let mut scratch = Vec::new();
                if wire::write(&mut conn, &Msg::HelloAck { version }, &mut scratch).is_err() {
                    continue;
                }
                match channel {
                    Channel::Reply => {
                        let _ = out.send(DstInput::Reply(conn));
                    }
                    Channel::Data(stream) => {
                        let (guest, out) = (guest.clone(), out.clone());
                        let _ = std::thread::Builder::new()
                            .name(format!("migrate-recv-{stream}"))
                            .spawn(move || receive(conn, Some(stream), guest, out));
                    }
                    Channel::Control => {}
                }
            }
        }
    }
}

/// Reads frames from one connection: pages are applied here, everything else goes to the
/// coordinator.
fn receive(
    mut conn: BoxConn,
    stream: Option<u16>,
    guest: Arc<dyn DestGuest>,
    out: Sender<DstInput>,
) {
    let (mut frame, mut buf, mut ops) = (Vec::new(), Vec::new(), Vec::new());
    let total = guest.pages();
    loop {
        let msg = match wire::read_frame(&mut conn, &mut frame) {
            Ok(wire::Frame::Msg(msg)) => msg,
            Ok(wire::Frame::Chunk(chunk)) => {
                let applied = pages::decode(&chunk, total, &mut buf, &mut ops)
                    .and_then(|data| guest.apply(&ops, data, chunk.postcopy));
                if let Err(e) = applied {
                    let _ = out.send(DstInput::Failed(format!("bad chunk {}: {e}", chunk.index)));
                    return;
                }
                if chunk.postcopy && guest.missing() == 0 {
                    let _ = out.send(DstInput::Arrived);
                }
                continue;
            }
            Err(e) => {
                let _ = out.send(DstInput::Failed(format!("receiving: {e}")));
                return;
            }
        };
        let forwarded = match msg {
            Msg::RoundEnd { round } => match stream {
                Some(stream) => DstInput::RoundEnd(stream, round),
                None => continue,
            },
            other => DstInput::Msg(other),
        };
        if out.send(forwarded).is_err() {
            return;
        }
    }
}

fn run_destination(
    guest: Arc<dyn DestGuest>,
    inputs: Receiver<DstInput>,
    tx: Sender<DstInput>,
    handle: DestHandle,
) {
    let mut machine = Destination::new();
    let mut control: Option<BoxConn> = None;
    let mut scratch = Vec::new();
    let settle = |arrival: Arrival| {
        let (lock, ready) = &*handle.arrival;
        if let Ok(mut a) = lock.lock() {
            if a.is_none() {
                *a = Some(arrival);
                ready.notify_all();
            }
        }
    };
    while let Ok(input) = inputs.recv() {
        let event = match input {
            DstInput::Control(conn, hello) => {
                control = Some(conn);
                DestEvent::Hello {
                    versions: hello.versions,
                    streams: hello.streams,
                }
            }
            DstInput::Reply(conn) => {
                if let Ok(mut reply) = handle.reply.lock() {
                    *reply = Some(conn);
                }
                continue;
            }
            DstInput::RoundEnd(stream, round) => DestEvent::RoundEnd { stream, round },
            DstInput::Arrived => DestEvent::AllArrived,
            DstInput::Failed(reason) => DestEvent::Failed { reason },
            DstInput::Outcome(switched) => DestEvent::Outcome { switched },
            DstInput::Msg(msg) => match msg {
                Msg::Complete { round, cpu, digest } => DestEvent::Complete { round, cpu, digest },
                Msg::Postcopy {
                    round,
                    cpu,
                    missing,
                } => DestEvent::Postcopy {
                    round,
                    cpu,
                    missing,
                },
                Msg::Outcome { switched } => DestEvent::Outcome { switched },
                Msg::Abort { reason } => DestEvent::Abort { reason },
                Msg::PushDone if guest.missing() == 0 => DestEvent::AllArrived,
                _ => continue,
            },
        };
        let mut queue = std::collections::VecDeque::from(machine.step(event));
        while let Some(action) = queue.pop_front() {
            match action {
                DestAction::Accept { version } => {
                    if let Some(mut conn) = control.take() {
                        let ok = wire::write(&mut conn, &Msg::HelloAck { version }, &mut scratch)
                            .is_ok();
                        if ok {
                            let (guest, out) = (guest.clone(), tx.clone());
                            let _ = std::thread::Builder::new()
                                .name("migrate-control".into())
                                .spawn(move || receive(conn, None, guest, out));
                        }
                    }
                }
                DestAction::Refuse(reason) => {
                    if let Some(mut conn) = control.take() {
                        let _ = wire::write(
                            &mut conn,
                            &Msg::Refused {
                                reason: reason.clone(),
                            },
                            &mut scratch,
                        );
                    }
                    settle(Arrival::Discard(reason));
                }
                DestAction::ComputeDigest => {
                    queue.extend(machine.step(DestEvent::Digest(guest.received_digest())));
                }
                DestAction::MarkMissing(pages) => guest.set_missing(&pages),
                DestAction::SendVerdict { ok, detail } => {
                    if let Ok(mut reply) = handle.reply.lock() {
                        if let Some(conn) = reply.as_mut() {
                            let _ = wire::write(conn, &Msg::Verdict { ok, detail }, &mut scratch);
                        }
                    }
                }
                DestAction::Resume(cpu) => {
                    settle(Arrival::Resume(cpu));
                    handle.resumed();
                    if machine.phase == DestPhase::Postcopy && guest.missing() == 0 {
                        queue.extend(machine.step(DestEvent::AllArrived));
                    }
                }
                DestAction::Discard(reason) => settle(Arrival::Discard(reason)),
            }
        }
        if matches!(machine.phase, DestPhase::Running | DestPhase::Discarded(_)) {
            // Nothing more to do; late frames are read and ignored by the receivers.
            return;
        }
    }
    settle(Arrival::Discard(
        "the migration ended without an outcome".into(),
    ));
}
