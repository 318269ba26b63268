//! The floor of the machine: how long the two things every replicated write
//! waits for take here, measured directly, without kvapp-c in the way.
//!
//! - A small append to a file followed by `fdatasync`, in a directory on the
//!   disk that holds (or will hold) the data directories.
//! - The same from as many threads at once as there are nodes, each on its
//!   own file: what a sync costs when a whole cluster shares that disk, as
//!   a `--local` cluster does.
//! - A small message's round trip over loopback TCP with `TCP_NODELAY`,
//!   answered by another thread.
//! - The ceiling of request round trips: as many client threads as the run
//!   has, each with its own connection and one message in flight, against
//!   one thread that answers them all from an epoll loop and does no other
//!   work, sending each pass's answers together through `io_uring` where
//!   the kernel offers it (one `send` each otherwise). That is how a node's
//!   loop meets its clients, so no store served that way does more round
//!   trips a second on this machine, and each costs at least the CPU
//!   measured here.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::cpu;
use super::report::{Ceiling, Floor, Percentiles, new_histogram, record};
use crate::server::clients::{Poller, answer_ring, send_all};
use crate::{Error, Result};

/// Bytes appended per sync, about one small log record.
const APPEND_BYTES: usize = 300;
/// Bytes per round trip message.
const MESSAGE_BYTES: usize = 64;

/// How many samples of each to take at most, and how long to spend on each.
#[derive(Debug, Clone, Copy)]
pub struct FloorBudget {
    /// Most samples per measurement.
    pub samples: usize,
    /// Most time per measurement (at least a few samples are always taken).
    pub time: Duration,
}

impl Default for FloorBudget {
    fn default() -> Self {
        FloorBudget {
            samples: 2_000,
            time: Duration::from_secs(2),
        }
    }
}

/// Measures all four and returns them together; `writers` is how many
/// nodes would share the disk (the nodes of a local cluster), `clients`
/// how many client threads the ceiling of round trips has. Only the
/// ceiling may fail without failing the whole: it needs two descriptors
/// per client, twice what the run itself needs.
///
/// `interrupted` (set by a Ctrl-C handler, say) is checked between the
/// measurements and during the ceiling's window; once it is set this
/// returns [`Error::Failed`] "interrupted" within one measurement's
/// `budget.time`.
pub fn measure(
    sync_dir: &Path,
    writers: usize,
    clients: usize,
    budget: FloorBudget,
    interrupted: &AtomicBool,
) -> Result<Floor> {
    let go_on = || {
        if interrupted.load(Ordering::SeqCst) {
            Err(Error::Failed("interrupted".into()))
        } else {
            Ok(())
        }
    };
    go_on()?;
    let fdatasync = measure_fdatasync(sync_dir, budget)?;
    go_on()?;
    let shared_fdatasync = measure_shared_fdatasync(sync_dir, writers, budget)?;
    go_on()?;
    let loopback_rtt = measure_loopback_rtt(budget)?;
    go_on()?;
    let ceiling = ceiling_unless(clients, budget, interrupted).map_err(|e| e.to_string());
    go_on()?;
    Ok(Floor {
        sync_dir: sync_dir.to_path_buf(),
        fdatasync,
        shared_writers: writers.max(1),
        shared_fdatasync,
        loopback_rtt,
        ceiling,
    })
}

/// Appends 300 bytes (`APPEND_BYTES`) to a fresh file in `dir` and `fdatasync`s it,
/// over and over, timing each append plus sync. The file is removed after.
pub fn measure_fdatasync(dir: &Path, budget: FloorBudget) -> Result<Percentiles> {
    Ok(Percentiles::of(&sync_loop(dir, 0, budget.samples, budget)?))
}

/// The same appends and syncs from `writers` threads at once, each on a file
/// of its own in `dir`, as the nodes of a cluster whose data directories
/// share one disk sync their logs: every sync of every thread is one
/// sample. On many disks (virtual ones especially) syncs that overlap take
/// longer than one alone, and a write waits for at least two of them.
pub fn measure_shared_fdatasync(
    dir: &Path,
    writers: usize,
    budget: FloorBudget,
) -> Result<Percentiles> {
    let writers = writers.max(1);
    let samples = budget.samples.div_ceil(writers);
    let hists = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..writers)
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("bench-floor-{i}"))
                    .spawn_scoped(scope, move || sync_loop(dir, i + 1, samples, budget))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| match t {
                Ok(t) => t
                    .join()
                    .unwrap_or_else(|_| Err(Error::Failed("a floor sync thread panicked".into()))),
                Err(e) => Err(Error::io("starting a floor sync thread", e)),
            })
            .collect::<Vec<_>>()
    });
    let mut all = new_histogram();
    for hist in hists {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = all.add(hist?);
    }
    Ok(Percentiles::of(&all))
}

/// Appends and syncs up to `samples` times (at least 10, and only as long as
/// the budget's time allows beyond that) on a fresh file in `dir` named with
/// `tag`, which is removed after; returns the latencies.
fn sync_loop(
    dir: &Path,
    tag: usize,
    samples: usize,
    budget: FloorBudget,
) -> Result<hdrhistogram::Histogram<u64>> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = dir.join(format!(
        ".kvapp-bench-floor-{}-{nanos}-{tag}.tmp",
        std::process::id()
    ));
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    let result = (|| {
        let record_bytes = [0x5au8; APPEND_BYTES];
        let mut hist = new_histogram();
        let start = Instant::now();
        // The first sync also pays for creating the file; not counted.
        for i in 0..=samples {
            let t = Instant::now();
            file.write_all(&record_bytes)
                .and_then(|()| file.sync_data())
                .map_err(|e| {
                    Error::io(format!("appending to and syncing {}", path.display()), e)
                })?;
            if i > 0 {
                record(&mut hist, t.elapsed());
            }
            if i >= 10 && start.elapsed() >= budget.time {
                break;
            }
        }
        Ok(hist)
    })();
    drop(file);
    let _ = std::fs::remove_file(&path);
    result
}

/// Sends 64-byte messages (`MESSAGE_BYTES`) over loopback TCP to a thread that echoes them,
/// timing each round trip.
pub fn measure_loopback_rtt(budget: FloorBudget) -> Result<Percentiles> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("binding a loopback port for the round-trip test", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the round-trip test's port", e))?;
    let echo = std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || -> std::io::Result<()> {
            let (mut stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            let mut buf = [0u8; MESSAGE_BYTES];
            loop {
                match stream.read_exact(&mut buf) {
                    Ok(()) => stream.write_all(&buf)?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .map_err(|e| Error::io("starting the round-trip test's echo thread", e))?;
    let io = |e| Error::io("round trip over loopback TCP", e);
    let mut stream = TcpStream::connect(addr).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let mut hist = new_histogram();
    let msg = [0xa5u8; MESSAGE_BYTES];
    let mut buf = [0u8; MESSAGE_BYTES];
    let start = Instant::now();
    // The first rounds warm the connection and the threads up; not counted.
    let warmup = 50;
    let mut result = Ok(());
    for i in 0..budget.samples + warmup {
        let t = Instant::now();
        if let Err(e) = stream
            .write_all(&msg)
            .and_then(|()| stream.read_exact(&mut buf))
        {
            result = Err(io(e));
            break;
        }
        if i >= warmup {
            record(&mut hist, t.elapsed());
            if i >= warmup + 10 && start.elapsed() >= budget.time {
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    drop(stream);
    let echoed = echo
        .join()
        .map_err(|_| Error::Failed("the round-trip test's echo thread panicked".into()))?;
    result?;
    echoed.map_err(|e| Error::io("echoing over loopback TCP", e))?;
    Ok(Percentiles::of(&hist))
}

/// The echo server's token for its listener.
const LISTENER: u64 = u64::MAX;

/// How long a client of the ceiling waits to connect, and then for each
/// answer, before it gives up.
const CEILING_PATIENCE: Duration = Duration::from_secs(5);

/// Runs `clients` threads (at least one), each sending 64-byte messages
/// (`MESSAGE_BYTES`) over its own loopback connection and waiting for each
/// answer, against one thread that answers them all from an epoll loop;
/// counts the round trips and the machine's CPU over `budget.time` (after
/// a warm-up of a quarter of that, at most 250 ms). `budget.samples` plays
/// no part: this measures a rate, not latencies. Every connection is made
/// before any client sends, so the warm-up and the window see them all.
pub fn measure_round_trip_ceiling(clients: usize, budget: FloorBudget) -> Result<Ceiling> {
    ceiling_unless(clients, budget, &AtomicBool::new(false))
}

/// Sleeps for `d`, or less if `interrupted` is set meanwhile; returns
/// whether it slept the whole time.
fn sleep_unless(d: Duration, interrupted: &AtomicBool) -> bool {
    let until = Instant::now() + d;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// [`measure_round_trip_ceiling`], cut short with an error once
/// `interrupted` is set.
fn ceiling_unless(
    clients: usize,
    budget: FloorBudget,
    interrupted: &AtomicBool,
) -> Result<Ceiling> {
    let clients = clients.max(1);
    let setup = |e| Error::io("setting up the round-trip ceiling's echo server", e);
    let listener = ceiling_listener(clients).map_err(setup)?;
    let addr = listener.local_addr().map_err(setup)?;
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let warmup = (budget.time / 4).min(Duration::from_millis(250));
    let window = budget.time.max(Duration::from_millis(10));
    std::thread::scope(|scope| {
        let server = std::thread::Builder::new()
            .name("bench-echo".into())
            .spawn_scoped(scope, || echo_many(listener, clients, &stop))
            .map_err(|e| Error::io("starting the round-trip ceiling's echo thread", e))?;
        let mut failed = None;
        let mut streams = Vec::with_capacity(clients);
        for _ in 0..clients {
            match connect_client(addr) {
                Ok(s) => streams.push(s),
                Err(e) => {
                    failed = Some(Error::io(
                        "connecting a round-trip ceiling client over loopback TCP",
                        e,
                    ));
                    break;
                }
            }
        }
        let mut threads = Vec::with_capacity(clients);
        if failed.is_some() {
            // Closed now, so the server sees them go.
            drop(streams);
        } else {
            let (stop, done) = (&stop, &done);
            for (i, stream) in streams.into_iter().enumerate() {
                let spawned = std::thread::Builder::new()
                    .name(format!("bench-ceiling-{i}"))
                    .spawn_scoped(scope, move || ping(stream, stop, done));
                match spawned {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        // The streams not handed out yet close with the
                        // iterator.
                        failed = Some(Error::io("starting a round-trip ceiling client", e));
                        break;
                    }
                }
            }
        }
        let mut counted = None;
        if failed.is_none() && sleep_unless(warmup, interrupted) {
            let (n0, c0) = (done.load(Ordering::Relaxed), cpu::sample(&[]));
            if sleep_unless(window, interrupted) {
                let (n1, c1) = (done.load(Ordering::Relaxed), cpu::sample(&[]));
                counted = Some((
                    n1 - n0,
                    cpu::usage_between(&c0, &c1, cpu::ticks_per_second()),
                ));
            }
        }
        stop.store(true, Ordering::SeqCst);
        for t in threads {
            let r = t.join().unwrap_or_else(|_| {
                Err(Error::Failed("a round-trip ceiling client panicked".into()))
            });
            if let Err(e) = r {
                failed.get_or_insert(e);
            }
        }
        let served = server
            .join()
            .unwrap_or_else(|_| Err(Error::Failed("the echo server panicked".into())));
        // A server that failed (out of descriptors, say) shows in its
        // clients only as reset connections: its own error says why.
        served?;
        if let Some(e) = failed {
            return Err(e);
        }
        let Some((round_trips, usage)) = counted else {
            return Err(Error::Failed("interrupted".into()));
        };
        Ok(Ceiling {
            clients,
            round_trips,
            seconds: usage.seconds,
            machine: usage.machine,
        })
    })
}

/// The ceiling's listening socket on a loopback port, with room in its
/// queue of connections not yet accepted for every client (the kernel caps
/// that at `net.core.somaxconn`). The standard library listens with room
/// for 128: once that is full the kernel drops further handshakes, and the
/// clients retry a second or more later or, when only the last step was
/// dropped, wait that long for their first answer.
fn ceiling_listener(clients: usize) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let backlog = libc::c_int::try_from(clients).unwrap_or(libc::c_int::MAX);
    // SAFETY: plain syscall on a descriptor the listener owns; listening
    // again on a listening socket only changes the size of its queue.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(listener)
}

/// One client's connection, made before any client sends.
fn connect_client(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CEILING_PATIENCE)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(CEILING_PATIENCE))?;
    Ok(stream)
}

/// One client of the ceiling: a round trip at a time until `stop`.
fn ping(mut stream: TcpStream, stop: &AtomicBool, done: &AtomicU64) -> Result<()> {
    let io = |e| Error::io("a round trip of the ceiling over loopback TCP", e);
    // A read that times out fails as "would block" (EAGAIN), which says
    // nothing of what happened.
    let patience = stream.read_timeout().ok().flatten();
    let unanswered = |e: std::io::Error| match (e.kind(), patience) {
        (ErrorKind::WouldBlock | ErrorKind::TimedOut, Some(t)) => Error::Failed(format!(
            "a round trip of the ceiling over loopback TCP had no answer within {} ms",
            t.as_millis()
        )),
        _ => io(e),
    };
    let msg = [0xa5u8; MESSAGE_BYTES];
    let mut buf = [0u8; MESSAGE_BYTES];
    while !stop.load(Ordering::Relaxed) {
        stream.write_all(&msg).map_err(io)?;
        stream.read_exact(&mut buf).map_err(unanswered)?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Answers of one connection in one pass of the ceiling's server, at most.
const ANSWERS_AT_ONCE: usize = 16;

/// The bytes of up to `ANSWERS_AT_ONCE` answers. Static, so a send the
/// kernel still works on after an error cannot outlive them.
static ANSWERS: [u8; MESSAGE_BYTES * ANSWERS_AT_ONCE] = [0x5a; MESSAGE_BYTES * ANSWERS_AT_ONCE];

/// The ceiling's server: accepts `clients` connections and answers every
/// whole message read with as many bytes, until every client has closed,
/// or `stop` is set and no client has spoken for a second. As the node's
/// loop does, it sends the answers of one pass together through `io_uring`
/// where the kernel offers it, else one `send` each.
fn echo_many(listener: TcpListener, clients: usize, stop: &AtomicBool) -> Result<()> {
    let io = |e| Error::io("echoing the round-trip ceiling's messages", e);
    listener.set_nonblocking(true).map_err(io)?;
    let poller = Poller::new().map_err(io)?;
    poller.add(listener.as_raw_fd(), LISTENER).map_err(io)?;
    // Each connection, with how many bytes of its next message it has
    // received so far.
    let mut conns: Vec<Option<(TcpStream, usize)>> = Vec::with_capacity(clients);
    let mut open = 0usize;
    let mut events = Vec::with_capacity(256);
    let mut buf = vec![0u8; 16 * 1024];
    let mut ring = answer_ring().ok();
    let mut outgoing: Vec<(RawFd, &'static [u8])> = Vec::new();
    let mut quiet_since = Instant::now();
    loop {
        poller.wait(&mut events, 50).map_err(io)?;
        if events.is_empty() {
            let all_gone = conns.len() == clients && open == 0;
            if all_gone || (stop.load(Ordering::Relaxed) && quiet_since.elapsed().as_secs() >= 1) {
                return Ok(());
            }
            continue;
        }
        quiet_since = Instant::now();
        for event in &events {
            if event.u64 == LISTENER {
                while conns.len() < clients {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nodelay(true).map_err(io)?;
                            stream.set_nonblocking(true).map_err(io)?;
                            poller
                                .add(stream.as_raw_fd(), conns.len() as u64)
                                .map_err(io)?;
                            conns.push(Some((stream, 0)));
                            open += 1;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(io(e)),
                    }
                }
                if conns.len() == clients {
                    poller.remove(listener.as_raw_fd());
                }
                continue;
            }
            let slot = &mut conns[event.u64 as usize];
            let Some((stream, partial)) = slot else {
                continue;
            };
            match stream.read(&mut buf) {
                Ok(0) => {
                    poller.remove(stream.as_raw_fd());
                    *slot = None;
                    open -= 1;
                }
                Ok(n) => {
                    let whole = (*partial + n) / MESSAGE_BYTES;
                    *partial = (*partial + n) % MESSAGE_BYTES;
                    let mut answered = 0;
                    while answered < whole {
                        let now = (whole - answered).min(ANSWERS_AT_ONCE);
                        let bytes = &ANSWERS[..now * MESSAGE_BYTES];
                        if ring.is_some() {
                            outgoing.push((stream.as_raw_fd(), bytes));
                        } else {
                            // One message in flight per client: the
                            // socket's send buffer always has room.
                            stream.write_all(bytes).map_err(io)?;
                        }
                        answered += now;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(e) => return Err(io(e)),
            }
        }
        if let Some(ring) = ring.as_mut().filter(|_| !outgoing.is_empty()) {
            // SAFETY: the buffers are static, and the sockets stay open in
            // `conns` until this returns (after an error, a send still in
            // flight holds its socket's file itself).
            let results = unsafe { send_all(ring, &outgoing) }.map_err(io)?;
            for (result, (_, bytes)) in results.into_iter().zip(&outgoing) {
                match result {
                    Ok(n) if n == bytes.len() => {}
                    Ok(_) => return Err(io(std::io::Error::other("an answer was cut short"))),
                    Err(e) => return Err(io(e)),
                }
            }
            outgoing.clear();
        }
        if stop.load(Ordering::Relaxed) && conns.len() == clients && open == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_listener_queues_every_client_before_it_accepts() {
        // Nothing accepts here, as when the echo thread falls behind: with
        // the standard library's 128 places, the 130th handshake is dropped
        // and its connect waits out the timeout.
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(4096);
        let clients = 300.min(somaxconn);
        let listener = ceiling_listener(clients).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut streams = Vec::with_capacity(clients);
        for i in 0..clients {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                Ok(s) => streams.push(s),
                Err(e) => panic!("connection {i} of {clients} was not queued: {e}"),
            }
        }
    }

    #[test]
    fn a_ceiling_client_without_an_answer_says_so() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // Accepted, and never answered.
        let (_silent, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (stop, done) = (AtomicBool::new(false), AtomicU64::new(0));
        let err = ping(stream, &stop, &done).unwrap_err().to_string();
        // The kernel keeps the timeout in its ticks: it may read 52 ms.
        assert!(err.contains("had no answer within"), "{err}");
        assert!(!err.contains("os error"), "{err}");
        assert_eq!(done.load(Ordering::Relaxed), 0);
    }
}
