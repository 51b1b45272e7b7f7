//! The engine end to end over loopback TCP: a test guest (memory + counter, optionally
//! dirtying pages from a thread) migrated with each mode, and each failure before the switch.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_migration::pages::{PageOp, Taken};
use paddock_migration::run::{
    start_destination, start_source, Arrival, BoxConn, DestGuest, SourceConfig, SourceGuest,
};
use paddock_migration::wire::GuestCpu;
use paddock_migration::{digest, Memory, Params, PAGE};
use paddock_model::migration::MigrationMode;
use paddock_model::settings::MigrationPolicy;

struct State {
    memory: Memory,
    counter: u64,
    paused: bool,
}

struct TestGuest {
    state: Mutex<State>,
}

impl TestGuest {
    fn new(mib: u64) -> Arc<TestGuest> {
        Arc::new(TestGuest {
            state: Mutex::new(State {
                memory: Memory::new(mib),
                counter: 0,
                paused: false,
            }),
        })
    }

    /// Mixed content: zero, text-like, structured and random pages.
    fn fill(&self) {
        let mut s = self.state.lock().expect("lock");
        let pages = s.memory.pages();
        let mut page = vec![0u8; PAGE];
        for p in 0..pages {
            match p % 20 {
                0..=6 => continue,
                7..=11 => {
                    for (i, b) in page.iter_mut().enumerate() {
                        *b = b"lorem ipsum dolor sit amet "[(i + p) % 27];
                    }
                }
                12..=16 => {
                    for (i, w) in page.chunks_exact_mut(8).enumerate() {
                        w.copy_from_slice(&((p * 512 + i) as u64).to_le_bytes());
                    }
                }
                _ => page.iter_mut().for_each(|b| *b = fastrand::u8(..)),
            }
            s.memory.write(p, 0, &page);
        }
    }

    /// One guest step: the counter goes into a page of the first `working` pages.
    fn step(&self, working: usize) -> bool {
        let mut s = self.state.lock().expect("lock");
        if s.paused {
            return false;
        }
        s.counter += 1;
        let counter = s.counter;
        let page = (counter.wrapping_mul(0x9E37_79B9) as usize) % working;
        s.memory.write(page, 0, &counter.to_le_bytes());
        true
    }

    fn bytes(&self) -> Vec<u8> {
        self.state.lock().expect("lock").memory.bytes().to_vec()
    }

    fn counter(&self) -> u64 {
        self.state.lock().expect("lock").counter
    }
}

impl SourceGuest for TestGuest {
    fn pages(&self) -> usize {
        self.state.lock().expect("lock").memory.pages()
    }
    fn start_dirty_log(&self) {
        self.state.lock().expect("lock").memory.start_dirty_log();
    }
    fn take_chunk(&self, index: usize, out: &mut Vec<u8>) -> Taken {
        self.state
            .lock()
            .expect("lock")
            .memory
            .take_chunk(index, out)
    }
    fn copy_chunk(&self, index: usize, mask: u64, out: &mut Vec<u8>) -> Taken {
        self.state
            .lock()
            .expect("lock")
            .memory
            .copy_chunk(index, mask, out)
    }
    fn dirty_pages(&self) -> u64 {
        self.state.lock().expect("lock").memory.dirty_pages()
    }
    fn take_dirty_log(&self) -> Vec<u64> {
        self.state.lock().expect("lock").memory.take_dirty_log()
    }
    fn throttle(&self, _percent: u8) {}
    fn pause(&self) -> GuestCpu {
        let mut s = self.state.lock().expect("lock");
        s.paused = true;
        GuestCpu {
            counter: s.counter,
            device: s.counter.to_le_bytes().to_vec(),
        }
    }
    fn resume(&self) {
        let mut s = self.state.lock().expect("lock");
        s.paused = false;
        s.memory.stop_dirty_log();
    }
    fn digest(&self) -> u64 {
        digest::full(self.state.lock().expect("lock").memory.bytes())
    }
}

impl DestGuest for TestGuest {
    fn pages(&self) -> usize {
        self.state.lock().expect("lock").memory.pages()
    }
    fn apply(&self, ops: &[PageOp], buf: &[u8], postcopy: bool) -> Result<usize, String> {
        self.state
            .lock()
            .expect("lock")
            .memory
            .apply(ops, buf, postcopy)
    }
    fn received_digest(&self) -> u64 {
        self.state
            .lock()
            .expect("lock")
            .memory
            .received_digest()
            .unwrap_or(0)
    }
    fn set_missing(&self, pages: &[u32]) {
        self.state.lock().expect("lock").memory.set_missing(pages);
    }
    fn missing(&self) -> usize {
        self.state.lock().expect("lock").memory.missing_count()
    }
}

struct Pair {
    source: Arc<TestGuest>,
    destination: Arc<TestGuest>,
    listener: TcpListener,
}

fn pair(mib: u64) -> Pair {
    let source = TestGuest::new(mib);
    source.fill();
    let destination = TestGuest::new(mib);
    destination
        .state
        .lock()
        .expect("lock")
        .memory
        .start_receiving();
    Pair {
        source,
        destination,
        listener: TcpListener::bind("127.0.0.1:0").expect("listen"),
    }
}

fn connector(
    address: String,
) -> Box<dyn Fn(paddock_migration::wire::Channel) -> std::io::Result<BoxConn> + Send + Sync> {
    Box::new(move |_| {
        let tcp = TcpStream::connect(&address)?;
        tcp.set_nodelay(true)?;
        Ok(Box::new(tcp) as BoxConn)
    })
}

fn acceptor(listener: TcpListener) -> Box<dyn FnMut() -> std::io::Result<BoxConn> + Send> {
    Box::new(move || {
        let (tcp, _) = listener.accept()?;
        Ok(Box::new(tcp) as BoxConn)
    })
}

/// Runs a guest step loop until `stop`.
fn dirty(
    guest: Arc<TestGuest>,
    working: usize,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..64 {
                guest.step(working);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    })
}

fn config(mode: MigrationMode) -> SourceConfig {
    SourceConfig {
        migration: 1,
        params: Params {
            mode,
            policy: MigrationPolicy::Postcopy,
            max_downtime: Duration::from_millis(50),
            max_rounds: 30,
        },
        streams: 2,
        ..SourceConfig::default()
    }
}

fn wait_ready(source: &paddock_migration::run::SourceHandle) -> paddock_migration::Progress {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = source.progress();
        if p.ready || p.done || Instant::now() > deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_done(source: &paddock_migration::run::SourceHandle) -> paddock_migration::Progress {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = source.progress();
        if p.done || Instant::now() > deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn precopy_moves_memory_and_cpu_exactly_with_a_busy_guest() {
    let Pair {
        source: src,
        destination: dst,
        listener,
    } = pair(16);
    let address = listener.local_addr().expect("addr").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let busy = dirty(src.clone(), 1024, stop.clone());
    let incoming = start_destination(dst.clone(), 1, acceptor(listener));
    let outgoing = start_source(
        src.clone(),
        connector(address),
        config(MigrationMode::Precopy),
    );
    let progress = wait_ready(&outgoing);
    assert!(progress.ready, "{progress:?}");
    // Paused for the switch: the memories must be identical now.
    assert_eq!(src.bytes(), dst.bytes());
    outgoing.switch(true);
    let Arrival::Resume(cpu) = incoming.wait() else {
        panic!("not resumed");
    };
    assert_eq!(cpu.counter, src.counter(), "no step lost or repeated");
    let done = wait_done(&outgoing);
    stop.store(true, Ordering::Relaxed);
    busy.join().expect("dirtier");
    assert_eq!(done.phase, "completed", "{done:?}");
    assert_eq!(done.source_verified, Some(true));
    assert!(done.downtime_ms.is_some());
    assert!(done.zero_pages > 0);
}

#[test]
fn postcopy_resumes_early_and_pages_arrive_by_push_and_request() {
    let Pair {
        source: src,
        destination: dst,
        listener,
    } = pair(8);
    let address = listener.local_addr().expect("addr").to_string();
    // Dirty a working set after the first pass begins so pages are missing at the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let busy = dirty(src.clone(), 2048, stop.clone());
    let incoming = start_destination(dst.clone(), 1, acceptor(listener));
    let outgoing = start_source(
        src.clone(),
        connector(address),
        config(MigrationMode::Postcopy),
    );
    let progress = wait_ready(&outgoing);
    assert!(progress.ready && progress.postcopy, "{progress:?}");
    stop.store(true, Ordering::Relaxed);
    busy.join().expect("dirtier");
    outgoing.switch(true);
    let Arrival::Resume(cpu) = incoming.wait() else {
        panic!("not resumed");
    };
    assert_eq!(cpu.counter, src.counter());
    // Ask for a few pages as a faulting guest would, then wait for the push to finish.
    incoming.request(vec![0, 1, 2, 3]);
    let done = wait_done(&outgoing);
    assert_eq!(done.phase, "completed", "{done:?}");
    assert_eq!(
        done.source_verified,
        Some(true),
        "pushed pages count in the digest"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while DestGuest::missing(&*dst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(DestGuest::missing(&*dst), 0);
    assert_eq!(src.bytes(), dst.bytes());
}

#[test]
fn a_refused_switch_resumes_the_source_and_discards_the_destination() {
    let Pair {
        source: src,
        destination: dst,
        listener,
    } = pair(4);
    let address = listener.local_addr().expect("addr").to_string();
    let incoming = start_destination(dst.clone(), 1, acceptor(listener));
    let outgoing = start_source(src.clone(), connector(address), config(MigrationMode::Auto));
    assert!(wait_ready(&outgoing).ready);
    assert!(!src.step(10), "paused at the switch");
    outgoing.switch(false);
    let done = wait_done(&outgoing);
    assert_eq!(done.phase, "rolled-back");
    assert!(src.step(10), "the source runs again");
    assert!(matches!(incoming.wait(), Arrival::Discard(_)));
}

#[test]
fn losing_the_destination_mid_transfer_rolls_back() {
    let src = TestGuest::new(64);
    src.fill();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let address = listener.local_addr().expect("addr").to_string();
    // A "destination" that accepts, answers the handshake, then drops every connection.
    std::thread::spawn(move || {
        let mut conns = Vec::new();
        for _ in 0..4 {
            let Ok((mut tcp, _)) = listener.accept() else {
                return;
            };
            let mut buf = Vec::new();
            let _ = paddock_migration::wire::read(&mut tcp, &mut buf);
            let _ = paddock_migration::wire::write(
                &mut tcp,
                &paddock_migration::wire::Msg::HelloAck { version: 1 },
                &mut buf,
            );
            conns.push(tcp);
        }
        std::thread::sleep(Duration::from_millis(20));
        drop(conns);
    });
    let mut cfg = config(MigrationMode::Precopy);
    cfg.bandwidth = Some(20 << 20);
    let outgoing = start_source(src.clone(), connector(address), cfg);
    let done = wait_done(&outgoing);
    assert_eq!(done.phase, "rolled-back", "{done:?}");
    assert!(src.step(10), "the source never stopped for good");
}

#[test]
fn a_destination_that_is_not_there_rolls_back_at_once() {
    let src = TestGuest::new(1);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let address = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let outgoing = start_source(src.clone(), connector(address), config(MigrationMode::Auto));
    let done = wait_done(&outgoing);
    assert_eq!(done.phase, "rolled-back");
    assert!(done.error.unwrap_or_default().contains("cannot reach"));
}

#[test]
fn cancel_before_the_switch_rolls_back() {
    let src = TestGuest::new(64);
    src.fill();
    let dst = TestGuest::new(64);
    dst.state.lock().expect("lock").memory.start_receiving();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let address = listener.local_addr().expect("addr").to_string();
    let incoming = start_destination(dst, 1, acceptor(listener));
    let mut cfg = config(MigrationMode::Precopy);
    cfg.bandwidth = Some(8 << 20);
    let outgoing = start_source(src.clone(), connector(address), cfg);
    std::thread::sleep(Duration::from_millis(100));
    outgoing.cancel("operator cancelled");
    let done = wait_done(&outgoing);
    assert_eq!(done.phase, "rolled-back");
    assert_eq!(done.error.as_deref(), Some("operator cancelled"));
    assert!(matches!(incoming.wait(), Arrival::Discard(_)));
    assert!(src.step(10));
}
