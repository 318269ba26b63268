//! The load generator behind `kvapp-c bench`.
//!
//! Client threads in this process, each with its own [`crate::kv::Client`]
//! and connection, run a workload (put, get or mixed) against a cluster for
//! a time or a number of requests, after an uncounted warm-up. Latencies go
//! into per-thread `hdrhistogram`s that are merged at the end; progress is
//! printed to standard error once a second.
//!
//! Beyond the command-line contract:
//!
//! - `--local` starts a throwaway cluster of `kvapp-c server` child
//!   processes on loopback (syncing as in production) and stops it after.
//! - `--floor` also measures the floor of the machine (an `fdatasync` of a
//!   small append, a loopback TCP round trip, the ceiling of round trips
//!   for the run's client threads; see [`floor`]); `--floor-only`
//!   measures just that, with no cluster, e.g. on a disk before deploying.
//! - `--verify` reads back every key an acknowledged put wrote and fails the
//!   command if any lost its value (see [`verify`]).
//! - Every run reports where the CPU went while it measured: each local
//!   node, the bench process and the machine (see [`cpu`]).
//!
//! The parts that do no I/O ([`Plan::from_args`], [`workload`], [`report`],
//! [`verify::History`]) are public so they can be tested directly.

pub mod cpu;
pub mod floor;
pub mod local;
pub mod report;
mod run;
pub mod verify;
pub mod workload;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::kv::MAX_VALUE_BYTES;
use crate::{Error, Result};
use workload::{TAG_LEN, Workload};

/// Most client threads one run may start.
pub const MAX_CLIENTS: usize = 10_000;
/// Most keys a run may use (key names stay `key-` plus at most 10 digits).
pub const MAX_KEYS: u64 = 1_000_000_000;

/// Flags of `kvapp-c bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Raft addresses of the members, comma-separated (clients use port + 1000)
    /// [default: 127.0.0.1:7001].
    #[arg(long, value_name = "ADDRS", conflicts_with = "local")]
    pub cluster: Option<String>,
    /// Start a throwaway cluster of `kvapp-c server` processes on loopback
    /// (fresh data directory, logs synced) and stop it afterwards.
    #[arg(long)]
    pub local: bool,
    /// With --local: number of nodes [default: 3].
    #[arg(long, value_name = "N", requires = "local")]
    pub nodes: Option<u16>,
    /// With --local: Raft port of node 1 [default: free ports found by probing].
    #[arg(long, value_name = "PORT", requires = "local")]
    pub base_port: Option<u16>,
    /// With --local: directory in which a fresh data directory is made (and
    /// removed after); pick one on the disk to measure [default: the system's
    /// temporary directory].
    #[arg(long, value_name = "DIR", requires = "local")]
    pub data_dir: Option<PathBuf>,
    /// What the clients do: put, get (after writing every key once) or mixed
    /// (90% get, 10% put, after writing every key once).
    #[arg(long, value_name = "put|get|mixed", default_value = "put",
          value_parser = ["put", "get", "mixed"])]
    pub workload: String,
    /// Number of client threads, each with its own connection.
    #[arg(long, value_name = "C", default_value_t = 64)]
    pub clients: usize,
    /// Seconds to measure, after the warm-up [default: 10].
    #[arg(long, value_name = "S", conflicts_with = "requests")]
    pub duration: Option<f64>,
    /// Measure this many requests in total (across all clients) instead of a
    /// duration.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    /// Seconds of load before measuring starts; not counted.
    #[arg(long, value_name = "S", default_value_t = 2.0)]
    pub warmup: f64,
    /// Number of distinct keys, `key-00000000` upwards, chosen uniformly.
    #[arg(long, value_name = "K", default_value_t = 100_000)]
    pub keys: u64,
    /// Bytes per value written.
    #[arg(long, value_name = "B", default_value_t = 256)]
    pub value_size: usize,
    /// How long one request may take, retries included, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub timeout: u64,
    /// End the output with one JSON object on the last line.
    #[arg(long)]
    pub json: bool,
    /// After the run, read back every key an acknowledged put wrote and fail
    /// if one lost its value.
    #[arg(long)]
    pub verify: bool,
    /// Also measure the machine's floor: fdatasync of a small append, a
    /// loopback TCP round trip, and the most round trips --clients threads
    /// get from a server that does nothing else.
    #[arg(long)]
    pub floor: bool,
    /// Measure only the floor; no cluster is needed.
    #[arg(long, conflicts_with_all = ["floor", "verify", "local", "cluster"])]
    pub floor_only: bool,
    /// Directory on the disk whose fdatasync the floor measures [default: the
    /// --local data directory, else the current directory].
    #[arg(long, value_name = "DIR")]
    pub floor_dir: Option<PathBuf>,
    /// Scheduling class of the client threads. `normal` measures the
    /// clients as any program runs them. `batch` (Linux SCHED_BATCH) keeps
    /// a client woken by an answer from preempting the node that sent it,
    /// as clients on other machines never do; it changes the load
    /// generator, not the store, so the reported figures use `normal`.
    #[arg(long, value_name = "normal|batch", default_value = "normal",
          value_parser = ["normal", "batch"])]
    pub client_sched: String,
}

/// Which cluster a run measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A running cluster with these Raft addresses.
    Cluster(Vec<SocketAddr>),
    /// A cluster the run starts itself (see [`local`]).
    Local {
        nodes: u16,
        base_port: Option<u16>,
        parent_dir: Option<PathBuf>,
    },
    /// No cluster: only the floor is measured.
    None,
}

/// When the measured part of a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After this many requests in total.
    Requests(u64),
}

/// A checked description of one run, made from the flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub target: Target,
    pub workload: Workload,
    pub clients: usize,
    pub stop: Stop,
    pub warmup: Duration,
    pub keys: u64,
    pub value_size: usize,
    pub timeout: Duration,
    pub json: bool,
    pub verify: bool,
    /// Whether to measure the floor.
    pub floor: bool,
    pub floor_dir: Option<PathBuf>,
    /// Whether the client threads run as SCHED_BATCH.
    pub batch_sched: bool,
}

impl Plan {
    /// Checks the flags and resolves the cluster's addresses; any bad value
    /// is an [`Error::Config`] that names the flag.
    pub fn from_args(args: &BenchArgs) -> Result<Plan> {
        let workload: Workload = args.workload.parse()?;
        if args.clients == 0 || args.clients > MAX_CLIENTS {
            return Err(Error::Config(format!(
                "--clients must be between 1 and {MAX_CLIENTS}, not {}",
                args.clients
            )));
        }
        if args.keys == 0 || args.keys > MAX_KEYS {
            return Err(Error::Config(format!(
                "--keys must be between 1 and {MAX_KEYS}, not {}",
                args.keys
            )));
        }
        if args.value_size > MAX_VALUE_BYTES {
            return Err(Error::Config(format!(
                "--value-size {} is over the store's limit of {MAX_VALUE_BYTES} bytes",
                args.value_size
            )));
        }
        if args.verify && args.value_size < TAG_LEN {
            return Err(Error::Config(format!(
                "--verify needs --value-size of at least {TAG_LEN} bytes, to tag each value \
                 with its writer"
            )));
        }
        let stop = match (args.duration, args.requests) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "give --duration or --requests, not both".into(),
                ));
            }
            (_, Some(0)) => return Err(Error::Config("--requests must be at least 1".into())),
            (_, Some(n)) => Stop::Requests(n),
            (Some(s), None) => Stop::After(seconds("--duration", s, false)?),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        let warmup = seconds("--warmup", args.warmup, true)?;
        if args.timeout == 0 {
            return Err(Error::Config("--timeout must be at least 1 ms".into()));
        }
        let target = if args.floor_only {
            Target::None
        } else if args.local {
            let nodes = args.nodes.unwrap_or(3);
            if nodes == 0 {
                return Err(Error::Config("--nodes must be at least 1".into()));
            }
            Target::Local {
                nodes,
                base_port: args.base_port,
                parent_dir: args.data_dir.clone(),
            }
        } else {
            Target::Cluster(parse_cluster(
                args.cluster.as_deref().unwrap_or("127.0.0.1:7001"),
            )?)
        };
        Ok(Plan {
            target,
            workload,
            clients: args.clients,
            stop,
            warmup,
            keys: args.keys,
            value_size: args.value_size,
            timeout: Duration::from_millis(args.timeout),
            json: args.json,
            verify: args.verify,
            floor: args.floor || args.floor_only,
            floor_dir: args.floor_dir.clone(),
            batch_sched: args.client_sched == "batch",
        })
    }
}

/// `value` seconds of flag `flag` as a duration: finite, not negative, and
/// above zero unless `zero_ok`.
fn seconds(flag: &str, value: f64, zero_ok: bool) -> Result<Duration> {
    let ok = value.is_finite() && value >= 0.0 && (zero_ok || value > 0.0) && value <= 1e7;
    if !ok {
        let want = if zero_ok { "0 or more" } else { "more than 0" };
        return Err(Error::Config(format!(
            "{flag} must be {want} seconds (and at most 10000000), not {value}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Parses a comma-separated list of Raft addresses: at least one, no
/// empty entry, no port 0, no duplicates.
pub fn parse_cluster(list: &str) -> Result<Vec<SocketAddr>> {
    if list.split(',').all(|s| s.trim().is_empty()) {
        return Err(Error::Config("--cluster lists no address".into()));
    }
    let mut addrs = Vec::new();
    for (i, part) in list.split(',').map(str::trim).enumerate() {
        if part.is_empty() {
            return Err(Error::Config(format!(
                "--cluster '{list}' has an empty entry at position {}; give every member's \
                 address, in node-id order",
                i + 1
            )));
        }
        let addr = part
            .to_socket_addrs()
            .map_err(|e| Error::Config(format!("cannot resolve address '{part}': {e}")))?
            .next()
            .ok_or_else(|| Error::Config(format!("address '{part}' resolves to nothing")))?;
        if addr.port() == 0 {
            return Err(Error::Config(format!(
                "--cluster {addr} has port 0; members need fixed, known ports"
            )));
        }
        if addrs.contains(&addr) {
            return Err(Error::Config(format!("--cluster lists {addr} twice")));
        }
        addrs.push(addr);
    }
    Ok(addrs)
}

/// Runs the benchmark and prints its report to standard output (progress to
/// standard error). Fails if the cluster cannot be reached or `--verify`
/// finds a lost write.
///
/// Installs a Ctrl-C handler (if the process has none yet) that ends the run
/// early, still reporting what was measured and stopping a `--local` cluster.
pub fn main(args: BenchArgs) -> Result<()> {
    let plan = Plan::from_args(&args)?;
    run::run(&plan)
}
