//! Running a [`Plan`]: the cluster, the floor, the preload, the client
//! threads, progress, the report and the read-back.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::cpu::{self, CpuUsage};
use super::floor::{self, FloorBudget};
use super::local::LocalCluster;
use super::report::{Floor, Percentiles, Summary, new_histogram, record};
use super::verify::{History, Problem, PutOutcome, PutRecord};
use super::workload::{OpKind, Rng, key_name, value_for};
use super::{Plan, Stop, Target};
use crate::kv::Client;
use crate::kv::client::client_addrs;
use crate::{Error, Result};

/// How many problems `--verify` prints before summarising the rest.
const PROBLEMS_SHOWN: usize = 10;

/// Runs `plan` and prints its report.
pub fn run(plan: &Plan) -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // A second installation (only possible when a program calls this
        // twice) fails; the first handler keeps working then.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }

    let mut local = None;
    let mut floor = None;
    let addrs: Vec<SocketAddr> = match &plan.target {
        Target::None => {
            let dir = plan.floor_dir.clone().unwrap_or_else(|| PathBuf::from("."));
            let f = measure_floor(&dir, DEFAULT_SHARED_WRITERS, plan.clients, &interrupted)?;
            print_out(&f.render_text());
            if plan.json {
                let fields: Vec<String> = f
                    .json_fields()
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", super::report::json_string(k)))
                    .collect();
                print_out(&format!("{{{}}}\n", fields.join(",")));
            }
            return Ok(());
        }
        Target::Cluster(addrs) => {
            if plan.floor {
                let dir = plan.floor_dir.clone().unwrap_or_else(|| PathBuf::from("."));
                floor = Some(measure_floor(
                    &dir,
                    addrs.len(),
                    plan.clients,
                    &interrupted,
                )?);
            }
            addrs.clone()
        }
        Target::Local {
            nodes,
            base_port,
            parent_dir,
        } => {
            let mut cluster = LocalCluster::prepare(parent_dir.as_deref())?;
            if plan.floor {
                // Measured before the nodes start, so they do not disturb it.
                let dir = plan
                    .floor_dir
                    .clone()
                    .unwrap_or_else(|| cluster.dir().to_path_buf());
                floor = Some(measure_floor(
                    &dir,
                    usize::from(*nodes),
                    plan.clients,
                    &interrupted,
                )?);
            }
            progress(&format!(
                "bench: starting {nodes} local node(s), data in {}",
                cluster.dir().display()
            ));
            cluster.start(*nodes, *base_port)?;
            let addrs = cluster.addrs().to_vec();
            local = Some(cluster);
            addrs
        }
    };
    let client_side = client_addrs(&addrs)?;

    // Fail fast, with one clear message, if the cluster cannot serve.
    let mut probe = Client::new(client_side.clone(), plan.timeout);
    probe.get(key_name(0).as_bytes()).map_err(|e| {
        Error::Failed(format!(
            "cannot reach the cluster at {}: {e}",
            crate::network::tcp::cluster_identity(&addrs)
        ))
    })?;

    let node_pids = local.as_ref().map(LocalCluster::pids).unwrap_or_default();
    let outcome = drive(plan, &client_side, &node_pids, &interrupted)?;
    if let Some(f) = &floor {
        print_out(&f.render_text());
    }
    print_out(&outcome.summary.render_text());
    if let Some(Ok(c)) = floor.as_ref().map(|f| &f.ceiling) {
        print_out(&c.render_share(outcome.summary.ops_per_s()));
    }
    if let Some(cpu) = &outcome.cpu {
        print_out(&cpu.render_text(outcome.summary.ops));
    }
    if let Some(msg) = &outcome.first_error {
        print_out(&format!("first error: {msg}\n"));
    }
    if interrupted.load(Ordering::SeqCst) {
        print_out("interrupted: the figures cover the part that ran\n");
    }

    let mut extra: Vec<(&str, String)> = Vec::new();
    if let Some(f) = &floor {
        extra.extend(f.json_fields());
        if let Ok(c) = &f.ceiling {
            extra.push((
                "ceiling_share",
                super::report::json_decimals(c.share_of(outcome.summary.ops_per_s()), 3),
            ));
        }
    }
    if let Some(cpu) = &outcome.cpu {
        extra.extend(cpu.json_fields(outcome.summary.ops));
    }
    let mut verdict = Ok(());
    if interrupted.load(Ordering::SeqCst) {
        // The nodes of a --local cluster got the same Ctrl-C; reading every
        // key back would only wait for timeouts.
        if plan.verify {
            print_out("verify: skipped, the run was interrupted\n");
        }
        verdict = Err(Error::Failed("interrupted".into()));
    } else if plan.verify {
        let history = History::new(outcome.puts);
        let checked = read_back(plan, &client_side, &history);
        print_out(&checked.render());
        extra.push(("verified_keys", checked.keys.to_string()));
        extra.push(("lost", checked.problems.len().to_string()));
        extra.push(("unreadable", checked.unreadable.len().to_string()));
        if !checked.problems.is_empty() {
            verdict = Err(Error::Failed(format!(
                "verification found {} key(s) that lost an acknowledged write",
                checked.problems.len()
            )));
        } else if !checked.unreadable.is_empty() {
            verdict = Err(Error::Failed(format!(
                "verification could not read {} key(s)",
                checked.unreadable.len()
            )));
        }
    }
    if plan.json {
        print_out(&format!("{}\n", outcome.summary.to_json(&extra)));
    }
    drop(local);
    verdict
}

/// Writers sharing the disk in the floor when no cluster says how many
/// nodes there are (`--floor-only`): a three-node cluster's.
const DEFAULT_SHARED_WRITERS: usize = 3;

fn measure_floor(
    dir: &std::path::Path,
    writers: usize,
    clients: usize,
    interrupted: &AtomicBool,
) -> Result<Floor> {
    progress(&format!(
        "bench: measuring the floor (fdatasync in {}, alone and from {writers} writers at once; \
         loopback round trips, one at a time and from {clients} client threads)",
        dir.display()
    ));
    floor::measure(dir, writers, clients, FloorBudget::default(), interrupted)
}

fn print_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn progress(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// What the client threads produced.
struct Outcome {
    summary: Summary,
    first_error: Option<String>,
    /// Every put sent, preload included (only with `--verify`).
    puts: Vec<PutRecord>,
    /// Where the CPU went while measuring (where `/proc` tells).
    cpu: Option<CpuUsage>,
}

/// When the phases of a run begin and end, fixed once the preload is done
/// and every client thread has started.
struct Phases {
    measure_start: Instant,
    /// End of a timed run.
    end: Option<Instant>,
}

/// State the client threads share with the progress reporter.
struct Shared {
    /// Time zero for the put records of `--verify`.
    epoch: Instant,
    phases: OnceLock<Phases>,
    /// Requests still to measure, for `--requests`.
    remaining: AtomicU64,
    preloaded: AtomicU64,
    /// Operations completed successfully, warm-up included.
    done: AtomicU64,
    /// Errors in the measured part.
    errors: AtomicU64,
    stop: Arc<AtomicBool>,
}

/// One client thread's results.
struct WorkerResult {
    hist: Histogram<u64>,
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    puts: Vec<PutRecord>,
    /// When its last measured operation ended.
    last_end: Option<Instant>,
}

fn drive(
    plan: &Plan,
    addrs: &[SocketAddr],
    node_pids: &[u32],
    interrupted: &Arc<AtomicBool>,
) -> Result<Outcome> {
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        phases: OnceLock::new(),
        remaining: AtomicU64::new(match plan.stop {
            Stop::Requests(n) => n,
            Stop::After(_) => 0,
        }),
        preloaded: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: interrupted.clone(),
    });
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id());
    let mut puts = Vec::new();
    if plan.workload.needs_preload() {
        puts = preload(plan, addrs, &shared, seed);
    }

    // Every client, plus this thread, meets here once this thread has fixed
    // the phases.
    let started = Arc::new(Barrier::new(plan.clients + 1));
    let mut handles: Vec<JoinHandle<WorkerResult>> = Vec::with_capacity(plan.clients);
    for index in 0..plan.clients {
        let own_plan = plan.clone();
        let addrs = addrs.to_vec();
        let shared = shared.clone();
        let started = started.clone();
        let handle = std::thread::Builder::new()
            .name(format!("bench-client-{index}"))
            .spawn(move || {
                if own_plan.batch_sched {
                    set_batch_scheduling(index == 0);
                }
                let w = Worker::new(index as u32, &own_plan, addrs, shared, seed);
                started.wait();
                w.run()
            });
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The started threads wait at the barrier for ever; there is
                // no way to call them off, so give up on the whole process.
                return Err(Error::io(
                    format!("starting client thread {index} of {}", plan.clients),
                    e,
                ));
            }
        }
    }

    let now = Instant::now();
    let measure_start = now + plan.warmup;
    let end = match plan.stop {
        Stop::After(d) => Some(measure_start + d),
        Stop::Requests(_) => None,
    };
    let _ = shared.phases.set(Phases { measure_start, end });
    // The CPU counters are read when measuring starts and once every
    // client is done: at once without a warm-up, else by a thread that
    // waits for the window (and gives up if the run is interrupted).
    let first_now = plan.warmup.is_zero().then(|| cpu::sample(node_pids));
    started.wait();
    let first_later = if first_now.is_none() {
        let pids = node_pids.to_vec();
        let stop = shared.stop.clone();
        std::thread::Builder::new()
            .name("bench-cpu".into())
            .spawn(move || {
                loop {
                    let left = measure_start.saturating_duration_since(Instant::now());
                    if left.is_zero() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(left.min(Duration::from_millis(100)));
                }
                cpu::sample(&pids)
            })
            .ok()
    } else {
        None
    };
    report_run(plan, &shared, &handles, measure_start);

    let mut hist = new_histogram();
    let (mut ops, mut errors) = (0, 0);
    let mut first_error = None;
    let mut last_end = measure_start;
    for h in handles {
        let r = h
            .join()
            .map_err(|_| Error::Failed("a benchmark client thread panicked".into()))?;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = hist.add(&r.hist);
        ops += r.ops;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        puts.extend(r.puts);
        if let Some(t) = r.last_end {
            last_end = last_end.max(t);
        }
    }
    let last_sample = cpu::sample(node_pids);
    let cpu = first_now
        .or_else(|| first_later.and_then(|t| t.join().ok()))
        .map(|first| cpu::usage_between(&first, &last_sample, cpu::ticks_per_second()))
        .filter(|usage| !usage.is_unknown());
    let latency = Percentiles::of(&hist);
    Ok(Outcome {
        summary: Summary {
            workload: plan.workload,
            clients: plan.clients,
            ops,
            elapsed: last_end.saturating_duration_since(measure_start),
            latency,
            errors,
        },
        first_error,
        puts,
        cpu,
    })
}

/// Writers of the preload, whatever the number of clients, so that a run
/// with few clients does not spend minutes writing the keys.
const PRELOAD_WRITERS: u64 = 64;
/// The preload writers tag their values as clients from this id up, above
/// any run client's ([`super::MAX_CLIENTS`]).
const PRELOAD_TAG_BASE: u32 = 900_000;

/// Writes every key once, with up to [`PRELOAD_WRITERS`] threads, printing
/// progress once a second. Returns the puts (for `--verify`).
/// Moves the calling thread to SCHED_BATCH: the kernel then never lets it
/// preempt a running thread when it wakes. A client woken by a node's answer
/// would otherwise often preempt that node on its CPU, a cost that clients on
/// other machines never put on a cluster. Failing only costs that, so it is
/// a warning (printed by the first client only). Returns whether it worked.
fn set_batch_scheduling(warn: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 names the calling thread and `param` is a valid
        // sched_param that outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 && warn {
            log::warn!(
                "could not run the clients as SCHED_BATCH ({}); they run as normal threads",
                std::io::Error::last_os_error()
            );
        }
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = warn;
        false
    }
}

fn preload(plan: &Plan, addrs: &[SocketAddr], shared: &Arc<Shared>, seed: u64) -> Vec<PutRecord> {
    progress(&format!(
        "bench: writing all {} keys once before the run",
        plan.keys
    ));
    let writers = PRELOAD_WRITERS.min(plan.keys);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|j| {
                s.spawn(move || {
                    let index = PRELOAD_TAG_BASE + j as u32;
                    let mut w = Worker::new(index, plan, addrs.to_vec(), shared.clone(), seed);
                    let mut key = j;
                    while key < plan.keys && !w.shared.stop.load(Ordering::Relaxed) {
                        // A failed preload write only means a later read
                        // finds nothing; the run goes on.
                        let _ = w.put(key);
                        w.shared.preloaded.fetch_add(1, Ordering::Relaxed);
                        key += writers;
                    }
                    w.puts
                })
            })
            .collect();
        let mut next = Instant::now() + Duration::from_secs(1);
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            if Instant::now() >= next {
                next += Duration::from_secs(1);
                progress(&format!(
                    "bench: preload {}/{} keys",
                    shared.preloaded.load(Ordering::Relaxed),
                    plan.keys
                ));
            }
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Prints one progress line a second until every client thread has ended.
fn report_run(
    plan: &Plan,
    shared: &Shared,
    handles: &[JoinHandle<WorkerResult>],
    measure_start: Instant,
) {
    let start = Instant::now();
    let mut last_done = 0;
    let mut last_at = start;
    let mut next = start + Duration::from_secs(1);
    while !handles.iter().all(JoinHandle::is_finished) {
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        if now < next {
            continue;
        }
        next += Duration::from_secs(1);
        let done = shared.done.load(Ordering::Relaxed);
        let rate = (done - last_done) as f64 / now.duration_since(last_at).as_secs_f64();
        (last_done, last_at) = (done, now);
        let phase = if now < measure_start {
            "warm-up".to_string()
        } else {
            let t = now.duration_since(measure_start).as_secs_f64();
            match plan.stop {
                Stop::After(d) => format!("{t:.0}/{:.0} s", d.as_secs_f64()),
                Stop::Requests(n) => format!(
                    "{}/{n} requests",
                    n - shared.remaining.load(Ordering::Relaxed)
                ),
            }
        };
        progress(&format!(
            "bench: {} {phase}  {rate:.0} ops/s  errors {}",
            plan.workload,
            shared.errors.load(Ordering::Relaxed)
        ));
    }
}

/// One client thread.
struct Worker {
    index: u32,
    client: Client,
    plan: Plan,
    shared: Arc<Shared>,
    rng: Rng,
    /// The sequence number of this client's next put (tags the value).
    seq: u64,
    puts: Vec<PutRecord>,
}

impl Worker {
    fn new(
        index: u32,
        plan: &Plan,
        addrs: Vec<SocketAddr>,
        shared: Arc<Shared>,
        seed: u64,
    ) -> Worker {
        Worker {
            index,
            client: Client::new(addrs, plan.timeout),
            plan: plan.clone(),
            shared,
            rng: Rng::new(seed ^ (u64::from(index) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            seq: 0,
            puts: Vec::new(),
        }
    }

    fn micros_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.duration_since(self.shared.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Puts key `key`, recording it for `--verify`. Returns the error, if any.
    fn put(&mut self, key: u64) -> Option<Error> {
        let value = value_for(self.index, self.seq, self.plan.value_size);
        let seq = self.seq;
        self.seq += 1;
        let start = Instant::now();
        let result = self.client.put(key_name(key).as_bytes(), &value);
        let end = Instant::now();
        if self.plan.verify {
            let outcome = match &result {
                Ok(()) => PutOutcome::Acked {
                    end_us: self.micros_since_epoch(end),
                },
                Err(Error::Failed(_)) => PutOutcome::Failed,
                Err(_) => PutOutcome::Unknown,
            };
            self.puts.push(PutRecord {
                key,
                client: self.index,
                seq,
                start_us: self.micros_since_epoch(start),
                outcome,
            });
        }
        result.err()
    }

    fn run(mut self) -> WorkerResult {
        let mut hist = new_histogram();
        let (mut ops, mut errors) = (0, 0);
        let mut first_error = None;
        let mut last_end = None;
        let Some(phases) = self.shared.phases.get() else {
            // Unreachable: the phases are set before the start barrier.
            return WorkerResult {
                hist,
                ops,
                errors,
                first_error: Some("the run's phases were never set".into()),
                puts: self.puts,
                last_end,
            };
        };
        let (measure_start, end) = (phases.measure_start, phases.end);
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let start = Instant::now();
            if end.is_some_and(|e| start >= e) {
                break;
            }
            let measured = start >= measure_start;
            if measured
                && matches!(self.plan.stop, Stop::Requests(_))
                && self
                    .shared
                    .remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_err()
            {
                break;
            }
            let key = self.rng.below(self.plan.keys);
            let error = match self.plan.workload.next_op(&mut self.rng) {
                OpKind::Put => self.put(key),
                OpKind::Get => self.client.get(key_name(key).as_bytes()).err(),
            };
            let finished = Instant::now();
            match error {
                None => {
                    self.shared.done.fetch_add(1, Ordering::Relaxed);
                    if measured {
                        record(&mut hist, finished - start);
                        ops += 1;
                        last_end = Some(finished);
                    }
                }
                Some(e) => {
                    if measured {
                        errors += 1;
                        self.shared.errors.fetch_add(1, Ordering::Relaxed);
                        last_end = Some(finished);
                    }
                    if first_error.is_none() {
                        first_error = Some(e.to_string());
                    }
                }
            }
        }
        WorkerResult {
            hist,
            ops,
            errors,
            first_error,
            puts: self.puts,
            last_end,
        }
    }
}

/// What reading every acknowledged key back found.
struct ReadBack {
    keys: usize,
    problems: Vec<Problem>,
    /// Keys whose read failed, with the error.
    unreadable: Vec<(u64, String)>,
}

impl ReadBack {
    fn render(&self) -> String {
        let mut s = String::new();
        if self.problems.is_empty() && self.unreadable.is_empty() {
            s.push_str(&format!(
                "verify: all {} key(s) hold their last acknowledged value (or a later one)\n",
                self.keys
            ));
            return s;
        }
        s.push_str(&format!(
            "verify: {} key(s) checked, {} LOST an acknowledged write, {} could not be read\n",
            self.keys,
            self.problems.len(),
            self.unreadable.len()
        ));
        for p in self.problems.iter().take(PROBLEMS_SHOWN) {
            s.push_str(&format!("verify: LOST {p}\n"));
        }
        for (k, e) in self.unreadable.iter().take(PROBLEMS_SHOWN) {
            s.push_str(&format!("verify: cannot read {}: {e}\n", key_name(*k)));
        }
        let hidden = self.problems.len().saturating_sub(PROBLEMS_SHOWN)
            + self.unreadable.len().saturating_sub(PROBLEMS_SHOWN);
        if hidden > 0 {
            s.push_str(&format!("verify: ... and {hidden} more\n"));
        }
        s
    }
}

/// Reads every key with an acknowledged put back, with up to 16 threads.
fn read_back(plan: &Plan, addrs: &[SocketAddr], history: &History) -> ReadBack {
    let keys = history.keys_to_check();
    progress(&format!("bench: verifying {} key(s)", keys.len()));
    let threads = plan.clients.clamp(1, 16);
    let chunk = keys.len().div_ceil(threads).max(1);
    let mut problems = Vec::new();
    let mut unreadable = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut client = Client::new(addrs.to_vec(), plan.timeout);
                    let mut problems = Vec::new();
                    let mut unreadable = Vec::new();
                    for &k in part {
                        match client.get(key_name(k).as_bytes()) {
                            Ok(v) => {
                                if let Err(p) = history.check(k, v.as_deref()) {
                                    problems.push(p);
                                }
                            }
                            Err(e) => unreadable.push((k, e.to_string())),
                        }
                    }
                    (problems, unreadable)
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok((p, u)) => {
                    problems.extend(p);
                    unreadable.extend(u);
                }
                Err(_) => unreadable.push((u64::MAX, "a verify thread panicked".into())),
            }
        }
    });
    problems.sort_by_key(problem_key);
    unreadable.sort();
    ReadBack {
        keys: keys.len(),
        problems,
        unreadable,
    }
}

fn problem_key(p: &Problem) -> u64 {
    match p {
        Problem::Missing { key }
        | Problem::Foreign { key }
        | Problem::FromFailedPut { key, .. }
        | Problem::Stale { key, .. } => *key,
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::set_batch_scheduling;

    #[test]
    fn a_client_thread_moves_to_sched_batch() {
        // SAFETY (all calls): pid 0 names the calling thread.
        let own = unsafe { libc::sched_getscheduler(0) };
        let policy = std::thread::spawn(|| {
            let before = unsafe { libc::sched_getscheduler(0) };
            let moved = set_batch_scheduling(false);
            let after = unsafe { libc::sched_getscheduler(0) };
            (before, moved, after)
        })
        .join()
        .unwrap();
        let (before, moved, after) = policy;
        // A normal thread may always move to SCHED_BATCH; a runner that
        // starts the tests in another class may forbid it, and then the
        // thread must keep its class.
        if before == libc::SCHED_OTHER {
            assert!(moved);
        }
        assert_eq!(after, if moved { libc::SCHED_BATCH } else { before });
        // Only the calling thread moved.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, own);
    }
}
