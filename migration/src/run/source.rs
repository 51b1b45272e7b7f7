//! The source's runtime: the control and reply connections, one thread per data stream, pacing,
//! and the [`Source`] state machine driven by what they report.

use std::io::Write;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bucket::TokenBucket;
use crate::digest::PageDigest;
use crate::pages::{Encoder, Taken};
use crate::source::{Params, RoundStats, Source, SourceAction, SourceEvent, SourcePhase};
use crate::wire::{self, Channel, GuestCpu, Hello, Msg};
use crate::Progress;
use crate::{CHUNK_PAGES, PAGE, PROTOCOL_VERSIONS};

use super::{BoxConn, SourceGuest};

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub migration: u64,
    pub params: Params,
    pub streams: u16,
    /// Bytes per second on the wire for the whole migration.
    pub bandwidth: Option<u64>,
    pub xor_cache_bytes: usize,
    /// Longest wait for the destination's verdict once everything is sent.
    pub verdict_timeout: Duration,
}

impl Default for SourceConfig {
    fn default() -> SourceConfig {
        SourceConfig {
            migration: 0,
            params: Params::default(),
            streams: 2,
            bandwidth: None,
            xor_cache_bytes: 64 << 20,
            verdict_timeout: Duration::from_secs(30),
        }
    }
}

enum SrcInput {
    StreamDone {
        round: u32,
        data_pages: u64,
        zero: u64,
        xor: u64,
    },
    PushDone,
    StreamFailed(String),
    Reply(Msg),
    External(SourceEvent),
}

/// The outside's handle on a running source: progress, cancel, and the committed outcome.
#[derive(Clone)]
pub struct SourceHandle {
    inputs: Sender<SrcInput>,
    progress: Arc<Mutex<Progress>>,
}

impl std::fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHandle").finish_non_exhaustive()
    }
}

impl SourceHandle {
    pub fn progress(&self) -> Progress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn cancel(&self, reason: &str) {
        let _ = self.inputs.send(SrcInput::External(SourceEvent::Cancel {
            reason: reason.to_string(),
        }));
    }

    /// The orchestrator's committed decision (after `progress().ready`).
    pub fn switch(&self, committed: bool) {
        let _ = self
            .inputs
            .send(SrcInput::External(SourceEvent::Switch { committed }));
    }
}

fn set<F: FnOnce(&mut Progress)>(progress: &Mutex<Progress>, f: F) {
    if let Ok(mut p) = progress.lock() {
        f(&mut p);
    }
}

/// Connects every channel with a handshake; returns the agreed version.
fn handshake(conn: &mut BoxConn, hello: Hello, scratch: &mut Vec<u8>) -> Result<u32, String> {
    wire::write(conn, &Msg::Hello(hello), scratch).map_err(|e| e.to_string())?;
    match wire::read(conn, scratch).map_err(|e| e.to_string())? {
        Msg::HelloAck { version } if PROTOCOL_VERSIONS.contains(&version) => Ok(version),
        Msg::HelloAck { version } => Err(format!("destination chose unknown version {version}")),
        Msg::Refused { reason } => Err(format!("destination refused: {reason}")),
        other => Err(format!("unexpected handshake answer {other:?}")),
    }
}

/// Starts migrating `guest` to the destination reached through `connect`; returns at once.
pub fn start_source(
    guest: Arc<dyn SourceGuest>,
    connect: Box<dyn Fn(Channel) -> std::io::Result<BoxConn> + Send + Sync>,
    config: SourceConfig,
) -> SourceHandle {
    let (tx, rx) = channel();
    let progress = Arc::new(Mutex::new(Progress {
        phase: "connecting".into(),
        memory_bytes: (guest.pages() * PAGE) as u64,
        ..Progress::default()
    }));
    let handle = SourceHandle {
        inputs: tx.clone(),
        progress: progress.clone(),
    };
    std::thread::Builder::new()
        .name(format!("migrate-src-{}", config.migration))
        .spawn(move || {
            let mut coordinator = SourceRun {
                guest,
                config,
                progress,
                inputs: tx,
                machine: None,
                control: None,
                streams: Vec::new(),
                started: Instant::now(),
                paused_at: None,
                pending_complete: None,
                round_parts: Vec::new(),
                round_started: Instant::now(),
                pushes: 0,
                sent_digest: None,
                missing: Vec::new(),
                scratch: Vec::new(),
                encoder: None,
            };
            coordinator.run(rx, connect);
        })
        .map(|_| ())
        .unwrap_or_else(|e| {
            set(&handle.progress, |p| {
                p.error = Some(format!("cannot start the migration thread: {e}"));
                p.done = true;
            })
        });
    handle
}

enum StreamCmd {
    Round(u32),
    Push(Arc<Vec<u64>>),
}

struct SourceRun {
    guest: Arc<dyn SourceGuest>,
    config: SourceConfig,
    progress: Arc<Mutex<Progress>>,
    inputs: Sender<SrcInput>,
    machine: Option<Source>,
    control: Option<BoxConn>,
    streams: Vec<Sender<StreamCmd>>,
    started: Instant,
    paused_at: Option<Instant>,
    pending_complete: Option<GuestCpu>,
    round_parts: Vec<(u64, u64)>,
    round_started: Instant,
    pushes: usize,
    sent_digest: Option<Arc<Mutex<PageDigest>>>,
    missing: Vec<u64>,
    scratch: Vec<u8>,
    encoder: Option<Encoder>,
}

impl SourceRun {
    fn run(
        &mut self,
        rx: Receiver<SrcInput>,
        connect: Box<dyn Fn(Channel) -> std::io::Result<BoxConn> + Send + Sync>,
    ) {
        let mut machine = Source::new(self.config.params);
        let connected = self.connect(&*connect);
        let first = match connected {
            Ok(version) => SourceEvent::Connected { version },
            Err(reason) => SourceEvent::Failed {
                reason: format!("cannot reach the destination: {reason}"),
            },
        };
        let actions = machine.step(first);
        self.machine = Some(machine);
        self.execute(actions);
        let mut verdict_deadline: Option<Instant> = None;
        while !self.finished() {
            let input = match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(input) => input,
                Err(RecvTimeoutError::Timeout) => {
                    let awaiting = self
                        .machine
                        .as_ref()
                        .is_some_and(|m| m.phase == SourcePhase::AwaitVerdict);
                    if awaiting {
                        let deadline = *verdict_deadline
                            .get_or_insert_with(|| Instant::now() + self.config.verdict_timeout);
                        if Instant::now() > deadline {
                            self.event(SourceEvent::Failed {
                                reason: "no verdict from the destination in time".into(),
                            });
                        }
                    }
                    self.update_elapsed();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.input(input);
        }
        // Stream threads end when their command channels close.
        self.streams.clear();
        let phase = self.machine.as_ref().map(|m| m.phase.clone());
        if phase == Some(SourcePhase::Completed) {
            // Wait briefly for "resumed" to measure the downtime, then check the frozen memory
            // against what was sent (off the critical path: the destination already runs).
            let until = Instant::now() + Duration::from_secs(2);
            while self.progress().downtime_ms.is_none() && Instant::now() < until {
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(SrcInput::Reply(Msg::Resumed)) => self.resumed(),
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            if let Some(sent) = &self.sent_digest {
                let sent = sent.lock().map(|d| d.value()).unwrap_or(0);
                let frozen = self.guest.digest();
                set(&self.progress, |p| {
                    p.source_verified = Some(sent == frozen);
                    if sent != frozen {
                        p.error = Some(format!(
                            "source memory {frozen:016x} differs from what was sent {sent:016x} (dirty tracking bug)"
                        ));
                    }
                });
            }
        }
        self.update_elapsed();
        set(&self.progress, |p| {
            p.done = true;
            p.phase = match &phase {
                Some(SourcePhase::Completed) => "completed".into(),
                Some(SourcePhase::RolledBack(why)) => {
                    p.error.get_or_insert(why.clone());
                    "rolled-back".into()
                }
                Some(SourcePhase::Abandoned(why)) => {
                    p.error.get_or_insert(why.clone());
                    "abandoned".into()
                }
                _ => "failed".into(),
            };
        });
    }

    fn progress(&self) -> Progress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn update_elapsed(&self) {
        let elapsed = self.started.elapsed();
        set(&self.progress, |p| {
            p.total_ms = elapsed.as_millis() as u64;
            p.rate_bps = (p.bytes_sent as f64 / elapsed.as_secs_f64().max(1e-3)) as u64;
        });
    }

    fn finished(&self) -> bool {
        self.machine.as_ref().is_none_or(|m| {
            matches!(
                m.phase,
                SourcePhase::Completed | SourcePhase::RolledBack(_) | SourcePhase::Abandoned(_)
            )
        })
    }

    fn connect(
        &mut self,
        connect: &(dyn Fn(Channel) -> std::io::Result<BoxConn> + Send + Sync),
    ) -> Result<u32, String> {
        let streams = self.config.streams.max(1);
        let hello = |channel| Hello {
            versions: PROTOCOL_VERSIONS.to_vec(),
            migration: self.config.migration,
            channel,
            streams,
            pages: self.guest.pages() as u64,
            page_size: PAGE as u32,
        };
        let mut scratch = Vec::new();
        let mut control = connect(Channel::Control).map_err(|e| e.to_string())?;
        let version = handshake(&mut control, hello(Channel::Control), &mut scratch)?;
        let mut reply = connect(Channel::Reply).map_err(|e| e.to_string())?;
        handshake(&mut reply, hello(Channel::Reply), &mut scratch)?;
        let mut data = Vec::new();
        for i in 0..streams {
            let mut conn = connect(Channel::Data(i)).map_err(|e| e.to_string())?;
            handshake(&mut conn, hello(Channel::Data(i)), &mut scratch)?;
            data.push(conn);
        }
        // Everything is connected: start logging, then the stream threads.
        self.guest.start_dirty_log();
        let digest = Arc::new(Mutex::new(PageDigest::zeroed(self.guest.pages())));
        self.sent_digest = Some(digest.clone());
        let bucket = self
            .config
            .bandwidth
            .map(|rate| Arc::new(TokenBucket::new(rate)));
        let share = self.config.bandwidth.map(|rate| rate / u64::from(streams));
        let chunks = self.guest.pages().div_ceil(CHUNK_PAGES);
        for (i, conn) in data.into_iter().enumerate() {
            let (tx, rx) = channel();
            let worker = StreamWorker {
                index: i,
                streams: streams as usize,
                chunks,
                guest: self.guest.clone(),
                conn,
                encoder: Encoder::new(self.config.xor_cache_bytes / streams as usize, share),
                bucket: bucket.clone(),
                digest: digest.clone(),
                out: self.inputs.clone(),
                crcs: Vec::new(),
                progress: self.progress.clone(),
            };
            std::thread::Builder::new()
                .name(format!("migrate-stream-{i}"))
                .spawn(move || worker.run(rx))
                .map_err(|e| e.to_string())?;
            self.streams.push(tx);
        }
        let out = self.inputs.clone();
        std::thread::Builder::new()
            .name("migrate-reply".into())
            .spawn(move || {
                let mut buf = Vec::new();
                loop {
                    match wire::read(&mut reply, &mut buf) {
                        Ok(msg) => {
                            if out.send(SrcInput::Reply(msg)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = out
                                .send(SrcInput::StreamFailed(format!("lost the destination: {e}")));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        self.control = Some(control);
        self.encoder = Some(Encoder::new(0, share));
        self.round_started = Instant::now();
        set(&self.progress, |p| p.phase = "precopy".into());
        Ok(version)
    }

    fn input(&mut self, input: SrcInput) {
        match input {
            SrcInput::StreamDone {
                round,
                data_pages,
                zero,
                xor,
            } => {
                // Bytes and memory were counted by the stream as it sent them.
                set(&self.progress, |p| {
                    p.zero_pages += zero;
                    p.xor_pages += xor;
                });
                self.round_parts.push((data_pages, u64::from(round)));
                if self.round_parts.len() == self.streams.len() {
                    let data_pages = self.round_parts.drain(..).map(|(d, _)| d).sum();
                    let elapsed = self.round_started.elapsed();
                    if let Some(cpu) = self.pending_complete.take() {
                        let digest = self
                            .sent_digest
                            .as_ref()
                            .and_then(|d| d.lock().ok().map(|d| d.value()))
                            .unwrap_or(0);
                        set(&self.progress, |p| {
                            p.phase = "verifying".into();
                            p.digest = Some(format!("{digest:016x}"));
                        });
                        self.send_control(&Msg::Complete { round, cpu, digest });
                    }
                    let dirty_after = self.guest.dirty_pages();
                    let stats = RoundStats {
                        round,
                        data_pages,
                        elapsed,
                        dirty_after,
                    };
                    let expected = self
                        .machine
                        .as_ref()
                        .map(|m| m.expected_downtime(dirty_after))
                        .unwrap_or_default();
                    set(&self.progress, |p| {
                        p.round = round;
                        p.remaining_bytes = dirty_after * PAGE as u64;
                        p.dirty_rate_bps = ((dirty_after * PAGE as u64) as f64
                            / elapsed.as_secs_f64().max(1e-3))
                            as u64;
                        p.expected_downtime_ms =
                            expected.as_millis().min(u128::from(u64::MAX)) as u64;
                    });
                    self.update_elapsed();
                    self.round_started = Instant::now();
                    self.event(SourceEvent::RoundDone(stats));
                }
            }
            SrcInput::PushDone => {
                self.pushes += 1;
                if self.pushes == self.streams.len() {
                    self.send_control(&Msg::PushDone);
                    self.event(SourceEvent::PushDone);
                }
            }
            SrcInput::StreamFailed(reason) => self.event(SourceEvent::Failed { reason }),
            SrcInput::Reply(msg) => match msg {
                Msg::Verdict { ok, detail } => self.event(SourceEvent::Verdict { ok, detail }),
                Msg::Resumed => self.resumed(),
                Msg::PageRequest { pages } => self.serve(&pages),
                Msg::Abort { reason } => self.event(SourceEvent::Failed {
                    reason: format!("the destination gave up: {reason}"),
                }),
                _ => {}
            },
            SrcInput::External(event) => self.event(event),
        }
    }

    fn resumed(&mut self) {
        if let Some(at) = self.paused_at {
            let ms = at.elapsed().as_millis() as u64;
            set(&self.progress, |p| p.downtime_ms = Some(ms));
        }
    }

    fn event(&mut self, event: SourceEvent) {
        let Some(machine) = self.machine.as_mut() else {
            return;
        };
        let actions = machine.step(event);
        self.execute(actions);
    }

    fn send_control(&mut self, msg: &Msg) -> bool {
        let Some(conn) = self.control.as_mut() else {
            return false;
        };
        let sent = wire::write(conn, msg, &mut self.scratch).is_ok();
        if !sent && !matches!(msg, Msg::Abort { .. }) {
            let _ = self
                .inputs
                .send(SrcInput::StreamFailed("lost the control connection".into()));
        }
        sent
    }

    /// Post-copy: the destination needs these pages now; they go ahead of the push.
    fn serve(&mut self, pages: &[u32]) {
        let mut by_chunk: std::collections::BTreeMap<usize, u64> = Default::default();
        for &page in pages {
            let page = page as usize;
            if page < self.guest.pages() {
                *by_chunk.entry(page / CHUNK_PAGES).or_default() |= 1 << (page % CHUNK_PAGES);
            }
        }
        let (mut data, mut frame, mut crcs) = (Vec::new(), Vec::new(), Vec::new());
        for (index, mask) in by_chunk {
            let taken = self.guest.copy_chunk(index, mask, &mut data);
            let Some(encoder) = self.encoder.as_mut() else {
                return;
            };
            let Ok(stats) = encoder.encode_frame(
                index as u32,
                taken,
                &data,
                false,
                true,
                &mut frame,
                &mut crcs,
            ) else {
                continue;
            };
            if let Some(digest) = &self.sent_digest {
                record_digest(digest, index, taken, &crcs);
            }
            set(&self.progress, |p| {
                p.bytes_sent += frame.len() as u64;
                p.memory_sent += stats.pages * PAGE as u64;
            });
            let sent = self
                .control
                .as_mut()
                .is_some_and(|conn| conn.write_all(&frame).and_then(|()| conn.flush()).is_ok());
            if !sent {
                let _ = self
                    .inputs
                    .send(SrcInput::StreamFailed("lost the control connection".into()));
                return;
            }
        }
    }

    fn execute(&mut self, actions: Vec<SourceAction>) {
        for action in actions {
            match action {
                SourceAction::Round(round) => self.round(round),
                SourceAction::Throttle(percent) => {
                    self.guest.throttle(percent);
                    set(&self.progress, |p| p.throttle = percent);
                }
                SourceAction::StopAndCopy(round) => {
                    self.paused_at = Some(Instant::now());
                    let cpu = self.guest.pause();
                    set(&self.progress, |p| {
                        p.phase = "stop-and-copy".into();
                        p.counter_at_pause = Some(cpu.counter);
                    });
                    self.pending_complete = Some(cpu);
                    self.round(round);
                }
                SourceAction::StartPostcopy(round) => {
                    self.paused_at = Some(Instant::now());
                    let cpu = self.guest.pause();
                    self.missing = self.guest.take_dirty_log();
                    let missing: Vec<u32> = self
                        .missing
                        .iter()
                        .enumerate()
                        .flat_map(|(chunk, &mask)| {
                            (0..64u32)
                                .filter(move |bit| mask & (1 << bit) != 0)
                                .map(move |bit| (chunk * CHUNK_PAGES) as u32 + bit)
                        })
                        .collect();
                    set(&self.progress, |p| {
                        p.phase = "verifying".into();
                        p.postcopy = true;
                        p.counter_at_pause = Some(cpu.counter);
                        p.remaining_bytes = missing.len() as u64 * PAGE as u64;
                    });
                    self.send_control(&Msg::Postcopy {
                        round: round.saturating_sub(1),
                        cpu,
                        missing,
                    });
                }
                SourceAction::RequestSwitch => set(&self.progress, |p| {
                    p.ready = true;
                    p.phase = "switching".into();
                }),
                SourceAction::SendOutcome(switched) => {
                    self.send_control(&Msg::Outcome { switched });
                }
                SourceAction::Push => {
                    set(&self.progress, |p| p.phase = "postcopy".into());
                    let missing = Arc::new(std::mem::take(&mut self.missing));
                    for stream in &self.streams {
                        let _ = stream.send(StreamCmd::Push(missing.clone()));
                    }
                }
                SourceAction::SendAbort(reason) => {
                    self.send_control(&Msg::Abort { reason });
                }
                SourceAction::ResumeGuest => {
                    self.guest.resume();
                }
                SourceAction::Finish => {}
            }
        }
    }

    fn round(&mut self, round: u32) {
        self.round_parts.clear();
        self.round_started = Instant::now();
        for stream in &self.streams {
            let _ = stream.send(StreamCmd::Round(round));
        }
    }
}

/// Records what is sent of chunk `index` in the sent-memory digest: its zero pages, and the
/// crc32 the encoder computed of each other page.
fn record_digest(digest: &Mutex<PageDigest>, index: usize, taken: Taken, crcs: &[(u32, u32)]) {
    if let Ok(mut digest) = digest.lock() {
        let mut zero = taken.zero;
        while zero != 0 {
            digest.set_zero((index * CHUNK_PAGES) as u32 + zero.trailing_zeros());
            zero &= zero - 1;
        }
        for &(page, crc) in crcs {
            digest.set_hash(page, crc);
        }
    }
}

struct StreamWorker {
    index: usize,
    streams: usize,
    chunks: usize,
    guest: Arc<dyn SourceGuest>,
    conn: BoxConn,
    encoder: Encoder,
    bucket: Option<Arc<TokenBucket>>,
    digest: Arc<Mutex<PageDigest>>,
    out: Sender<SrcInput>,
    crcs: Vec<(u32, u32)>,
    /// The migration's live figures: bytes and memory sent are added chunk by chunk, so
    /// progress moves during a round (a first round is most of a migration).
    progress: Arc<Mutex<Progress>>,
}

impl StreamWorker {
    fn run(mut self, commands: Receiver<StreamCmd>) {
        let mut pages = Vec::with_capacity(CHUNK_PAGES * PAGE);
        let mut frame = Vec::with_capacity(CHUNK_PAGES * PAGE + 64);
        while let Ok(command) = commands.recv() {
            let result = match command {
                StreamCmd::Round(round) => self.round(round, &mut pages, &mut frame),
                StreamCmd::Push(missing) => self.push(&missing, &mut pages, &mut frame),
            };
            if let Err(e) = result {
                let _ = self.out.send(SrcInput::StreamFailed(format!(
                    "stream {}: {e}",
                    self.index
                )));
                return;
            }
        }
    }

    fn send(&mut self, msg: &Msg, frame: &mut Vec<u8>) -> Result<u64, wire::WireError> {
        frame.clear();
        wire::encode(msg, frame)?;
        self.send_frame(frame)
    }

    /// Writes an encoded frame, paced by the bandwidth limit.
    fn send_frame(&mut self, frame: &[u8]) -> Result<u64, wire::WireError> {
        if let Some(bucket) = &self.bucket {
            bucket.pace(frame.len());
        }
        let started = Instant::now();
        self.conn.write_all(frame)?;
        self.encoder
            .chooser
            .wrote(frame.len(), started.elapsed().as_secs_f64());
        Ok(frame.len() as u64)
    }

    fn round(
        &mut self,
        round: u32,
        pages: &mut Vec<u8>,
        frame: &mut Vec<u8>,
    ) -> Result<(), wire::WireError> {
        let (mut data_pages, mut zero, mut xor) = (0, 0, 0);
        for index in (self.index..self.chunks).step_by(self.streams) {
            let taken = self.guest.take_chunk(index, pages);
            if taken.mask == 0 {
                continue;
            }
            let stats = self.encoder.encode_frame(
                index as u32,
                taken,
                pages,
                round > 0,
                false,
                frame,
                &mut self.crcs,
            )?;
            record_digest(&self.digest, index, taken, &self.crcs);
            let sent = self.send_frame(frame)?;
            let chunk_memory = stats.pages * PAGE as u64;
            set(&self.progress, |p| {
                p.bytes_sent += sent;
                p.memory_sent += chunk_memory;
            });
            data_pages += stats.pages - stats.zero;
            zero += stats.zero;
            xor += stats.xor;
        }
        let end = self.send(&Msg::RoundEnd { round }, frame)?;
        set(&self.progress, |p| p.bytes_sent += end);
        self.conn.flush()?;
        let _ = self.out.send(SrcInput::StreamDone {
            round,
            data_pages,
            zero,
            xor,
        });
        Ok(())
    }

    fn push(
        &mut self,
        missing: &[u64],
        pages: &mut Vec<u8>,
        frame: &mut Vec<u8>,
    ) -> Result<(), wire::WireError> {
        for index in (self.index..self.chunks).step_by(self.streams) {
            let mask = missing.get(index).copied().unwrap_or(0);
            if mask == 0 {
                continue;
            }
            let taken = self.guest.copy_chunk(index, mask, pages);
            self.encoder.encode_frame(
                index as u32,
                taken,
                pages,
                false,
                true,
                frame,
                &mut self.crcs,
            )?;
            record_digest(&self.digest, index, taken, &self.crcs);
            self.send_frame(frame)?;
        }
        self.conn.flush()?;
        let _ = self.out.send(SrcInput::PushDone);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Destination
