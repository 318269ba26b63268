//! The `kvapp-c` command line: `server`, `client`, `local` and `bench`.
//!
//! Everything here turns flags into calls of the `kvapp_c` library; the
//! library does the work.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitCode, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

use kvapp_c::bench::parse_cluster;
use kvapp_c::kv::Client;
use kvapp_c::network::tcp::{TcpConfig, TcpTransport, cluster_identity};
use kvapp_c::server::{Server, default_client_addr};
use kvapp_c::shell::Shell;
use kvapp_c::storage::file::{DataDir, Identity};
use kvapp_c::timing::{TimingConfig, TimingMode};
use kvapp_c::{Error, NodeId, Result};

const DEFAULT_ADDR: &str = "127.0.0.1:7001";

#[derive(Parser, Debug)]
#[command(
    name = "kvapp-c",
    version,
    about = "A distributed key-value store replicated with Raft",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run one node of a cluster.
    Server(ServerArgs),
    /// Talk to a cluster: an interactive shell, or one command.
    Client(ClientArgs),
    /// Start a whole cluster on this machine and open a shell on it.
    Local(LocalArgs),
    /// Measure a running cluster.
    Bench(kvapp_c::bench::BenchArgs),
}

#[derive(Args, Debug, Clone, Default)]
struct TimingArgs {
    /// Timing preset.
    #[arg(long, value_name = "fast|debug|demo", value_parser = ["fast", "debug", "demo"],
          conflicts_with_all = ["fast_mode", "debug_mode", "demo_mode"])]
    timing_mode: Option<String>,
    /// Same as --timing-mode fast (50 ms heartbeats, 150-300 ms elections).
    #[arg(long, conflicts_with_all = ["debug_mode", "demo_mode"])]
    fast_mode: bool,
    /// Same as --timing-mode debug (500 ms heartbeats, 1500-3000 ms elections).
    #[arg(long, conflicts_with = "demo_mode")]
    debug_mode: bool,
    /// Same as --timing-mode demo (2000 ms heartbeats, 5000-10000 ms elections).
    #[arg(long)]
    demo_mode: bool,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, value_name = "MS")]
    heartbeat_interval: Option<u64>,
    /// Lower bound of the election timeout in milliseconds.
    #[arg(long, value_name = "MS")]
    election_timeout_min: Option<u64>,
    /// Upper bound of the election timeout in milliseconds.
    #[arg(long, value_name = "MS")]
    election_timeout_max: Option<u64>,
    /// Length of one event-loop tick in milliseconds.
    #[arg(long, value_name = "MS")]
    event_loop_delay: Option<u64>,
}

impl TimingArgs {
    fn config(&self) -> Result<TimingConfig> {
        let mode = if self.debug_mode {
            TimingMode::Debug
        } else if self.demo_mode {
            TimingMode::Demo
        } else if let Some(m) = &self.timing_mode {
            m.parse()?
        } else {
            TimingMode::Fast
        };
        let mut t = TimingConfig::preset(mode);
        if let Some(v) = self.heartbeat_interval {
            t.heartbeat_interval_ms = v;
        }
        if let Some(v) = self.election_timeout_min {
            t.election_timeout_min_ms = v;
        }
        if let Some(v) = self.election_timeout_max {
            t.election_timeout_max_ms = v;
        }
        if let Some(v) = self.event_loop_delay {
            t.event_loop_delay_ms = v;
        } else {
            // Keep a tick at most a fifth of the heartbeat when only the
            // heartbeat was overridden.
            t.event_loop_delay_ms = t
                .event_loop_delay_ms
                .min((t.heartbeat_interval_ms / 5).max(1));
        }
        t.validate()?;
        Ok(t)
    }

    /// The flags again, for passing on to child processes.
    fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(m) = &self.timing_mode {
            out.extend(["--timing-mode".to_string(), m.clone()]);
        }
        for (set, flag) in [
            (self.fast_mode, "--fast-mode"),
            (self.debug_mode, "--debug-mode"),
            (self.demo_mode, "--demo-mode"),
        ] {
            if set {
                out.push(flag.to_string());
            }
        }
        for (value, flag) in [
            (self.heartbeat_interval, "--heartbeat-interval"),
            (self.election_timeout_min, "--election-timeout-min"),
            (self.election_timeout_max, "--election-timeout-max"),
            (self.event_loop_delay, "--event-loop-delay"),
        ] {
            if let Some(v) = value {
                out.extend([flag.to_string(), v.to_string()]);
            }
        }
        out
    }
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// This node's id: its 1-based position in --cluster.
    #[arg(long, default_value_t = 1)]
    node_id: NodeId,
    /// Address of this node's Raft port; must equal the node's --cluster entry.
    #[arg(long, value_name = "HOST:PORT")]
    bind: Option<String>,
    /// Raft addresses of every member, comma-separated, in node-id order.
    #[arg(long, value_name = "ADDR1,ADDR2,...")]
    cluster: Option<String>,
    /// Where the node keeps its log, term, vote and data [default: ./data-N].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the client port [default: Raft port + 1000].
    #[arg(long, value_name = "HOST:PORT")]
    client_bind: Option<String>,
    #[command(flatten)]
    timing: TimingArgs,
    /// Log debug messages (RUST_LOG overrides).
    #[arg(long, short)]
    verbose: bool,
}

#[derive(Args, Debug)]
struct ClientArgs {
    /// Raft addresses of the members, comma-separated (clients use port + 1000).
    #[arg(long, value_name = "ADDR1,ADDR2,...", default_value = DEFAULT_ADDR)]
    cluster: String,
    /// How long a command may take, retries included, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    timeout: u64,
    /// Log debug messages (RUST_LOG overrides).
    #[arg(long, short)]
    verbose: bool,
    /// A command to run instead of the interactive shell, e.g. `put k v`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct LocalArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Raft port of node 1; node i uses base + i - 1 (clients: + 1000).
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Directory holding one data directory per node.
    #[arg(long, value_name = "DIR", default_value = "./kvapp-local")]
    data_dir: PathBuf,
    /// Only run the cluster (until interrupted); open no shell.
    #[arg(long)]
    no_repl: bool,
    #[command(flatten)]
    timing: TimingArgs,
    /// Run the nodes with debug logging (into their log files).
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(legacy_spelling(std::env::args().collect()));
    let verbose = match &cli.command {
        Cmd::Server(a) => a.verbose,
        Cmd::Client(a) => a.verbose,
        Cmd::Local(a) => a.verbose,
        Cmd::Bench(_) => false,
    };
    init_logging(verbose);
    let result = match cli.command {
        Cmd::Server(args) => run_server(args).map(|()| 0),
        Cmd::Client(args) => run_client(args),
        Cmd::Local(args) => run_local(args).map(|()| 0),
        Cmd::Bench(args) => kvapp_c::bench::main(args).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("kvapp-c: {e}");
            ExitCode::from(1)
        }
    }
}

/// The first spellings of the command line had no subcommand:
/// `kvapp-c --node-id 1 --bind ... --cluster ...` ran a server and
/// `kvapp-c --cluster ...` the client shell. They keep working.
fn legacy_spelling(mut args: Vec<String>) -> Vec<String> {
    let first = args.get(1).map(String::as_str).unwrap_or("");
    let is_flag = first.starts_with('-') && !matches!(first, "-h" | "--help" | "-V" | "--version");
    if is_flag {
        let server = args.iter().any(|a| {
            ["--node-id", "--bind", "--data-dir", "--client-bind"]
                .iter()
                .any(|f| a == f || a.starts_with(&format!("{f}=")))
        });
        args.insert(1, if server { "server" } else { "client" }.to_string());
    }
    args
}

fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    let addr = addr.trim();
    addr.to_socket_addrs()
        .map_err(|e| Error::Config(format!("cannot resolve address '{addr}': {e}")))?
        .next()
        .ok_or_else(|| Error::Config(format!("address '{addr}' resolves to nothing")))
}

/// Members find each other, and clients find them, at the ports the flags
/// name, so port 0 ("any free port") is no member address.
fn fixed_port(flag: &str, addr: SocketAddr) -> Result<SocketAddr> {
    if addr.port() == 0 {
        return Err(Error::Config(format!(
            "{flag} {addr} has port 0; members need fixed, known ports"
        )));
    }
    Ok(addr)
}

fn run_server(args: ServerArgs) -> Result<()> {
    let timing = args.timing.config()?;
    let id = args.node_id;
    let bind = args
        .bind
        .as_deref()
        .map(|b| resolve(b).and_then(|a| fixed_port("--bind", a)))
        .transpose()?;
    let cluster = match (&args.cluster, bind) {
        (Some(list), _) => parse_cluster(list)?,
        (None, Some(b)) if id == 1 => vec![b],
        (None, None) if id == 1 => vec![resolve(DEFAULT_ADDR)?],
        (None, _) => {
            return Err(Error::Config(format!(
                "node {id} needs --cluster listing every member"
            )));
        }
    };
    if id == 0 || id as usize > cluster.len() {
        return Err(Error::Config(format!(
            "--node-id {id} is outside the cluster of {} members (ids are 1 to {})",
            cluster.len(),
            cluster.len()
        )));
    }
    let raft_addr = cluster[id as usize - 1];
    if let Some(b) = bind
        && b != raft_addr
    {
        return Err(Error::Config(format!(
            "--bind {b} does not match node {id}'s entry in --cluster ({raft_addr})"
        )));
    }
    let client_addr = match &args.client_bind {
        Some(a) => fixed_port("--client-bind", resolve(a)?)?,
        None => default_client_addr(raft_addr)?,
    };
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("./data-{id}")));

    let dir = DataDir::open(&data_dir)?;
    dir.claim_identity(&Identity {
        node: id,
        members: cluster.len() as u64,
        cluster: cluster_identity(&cluster),
    })?;
    let log = dir.log()?;
    let state = dir.state()?;
    let kv = dir.kv()?;
    dir.check_state_file(&log, &kv)?;
    let peers: BTreeMap<NodeId, SocketAddr> = cluster
        .iter()
        .enumerate()
        .map(|(i, a)| (i as NodeId + 1, *a))
        .filter(|(n, _)| *n != id)
        .collect();
    let transport = TcpTransport::new(TcpConfig::new(
        id,
        cluster_identity(&cluster),
        raft_addr,
        peers,
    ))?;
    let handle = Server::builder(id, cluster.clone())
        .timing(timing)
        .client_addr(client_addr)
        .storage(log, state, kv)
        .transport(transport)
        .keep_alive(dir)
        .start()?;
    let trigger = handle.shutdown_trigger();
    ctrlc::set_handler(move || trigger.trigger())
        .map_err(|e| Error::Config(format!("cannot install the signal handler: {e}")))?;
    println!(
        "kvapp-c node {id}: raft {raft_addr}, clients {}, data {}, {} member(s)",
        handle.client_addr(),
        data_dir.display(),
        cluster.len()
    );
    let _ = std::io::stdout().flush();
    handle.join()
}

fn client_for(cluster: &[SocketAddr], timeout: Duration) -> Result<Client> {
    let addrs = cluster
        .iter()
        .map(|a| default_client_addr(*a))
        .collect::<Result<Vec<_>>>()?;
    Ok(Client::new(addrs, timeout))
}

fn run_client(args: ClientArgs) -> Result<i32> {
    let cluster = parse_cluster(&args.cluster)?;
    let client = client_for(&cluster, Duration::from_millis(args.timeout))?;
    let mut shell = Shell::new(client, cluster.clone());
    if !args.command.is_empty() {
        let line = args.command.join(" ");
        return Ok(match shell.run_line(&line) {
            Some(reply) => {
                print_lines(&reply.lines);
                reply.ending.exit_code()
            }
            None => 0,
        });
    }
    repl(&mut shell, &cluster)
}

fn print_lines(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
}

/// Reads commands until `quit` or end of input: with line editing and a
/// prompt on a terminal, silently from a pipe.
fn repl(shell: &mut Shell, cluster: &[SocketAddr]) -> Result<i32> {
    if !std::io::stdin().is_terminal() {
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| Error::io("reading standard input", e))?;
            if is_quit(&line) {
                break;
            }
            if let Some(reply) = shell.run_line(&line) {
                print_lines(&reply.lines);
            }
        }
        return Ok(0);
    }
    println!(
        "kvapp-c client: cluster {}. Type help for the commands, quit to leave.",
        cluster_identity(cluster)
    );
    let mut editor = rustyline::DefaultEditor::new()
        .map_err(|e| Error::Config(format!("cannot open the terminal: {e}")))?;
    loop {
        match editor.readline("kvapp> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if is_quit(&line) {
                    break;
                }
                if let Some(reply) = shell.run_line(&line) {
                    print_lines(&reply.lines);
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted)
            | Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(Error::Config(format!("reading the terminal: {e}"))),
        }
    }
    Ok(0)
}

fn is_quit(line: &str) -> bool {
    matches!(line.trim(), "quit" | "exit")
}

/// Child server processes of `kvapp-c local`; stopped cleanly on drop.
struct LocalCluster {
    children: Vec<(NodeId, Child)>,
}

impl LocalCluster {
    fn stop(&mut self) {
        for id in kvapp_c::process::stop_nodes(&mut self.children, Duration::from_secs(10)) {
            eprintln!("node {id} did not stop in time; killed it");
        }
    }

    /// The first child that has exited, if any.
    fn exited(&mut self) -> Option<NodeId> {
        self.children
            .iter_mut()
            .find_map(|(id, c)| matches!(c.try_wait(), Ok(Some(_))).then_some(*id))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_local(args: LocalArgs) -> Result<()> {
    let timing = args.timing.config()?;
    if args.nodes == 0 {
        return Err(Error::Config("--nodes must be at least 1".into()));
    }
    let last = args.base_port as u32 + args.nodes as u32 - 1 + 1000;
    if args.base_port == 0 || last > u16::MAX as u32 {
        return Err(Error::Config(format!(
            "--base-port {} with {} nodes needs ports up to {last}, beyond 65535",
            args.base_port, args.nodes
        )));
    }
    let cluster: Vec<SocketAddr> = (0..args.nodes)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], args.base_port + i)))
        .collect();
    let list = cluster_identity(&cluster);
    std::fs::create_dir_all(&args.data_dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Config(format!(
            "--data-dir {} exists and is not a directory",
            args.data_dir.display()
        )),
        _ => Error::io(
            format!("creating the data directory {}", args.data_dir.display()),
            e,
        ),
    })?;
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the kvapp-c binary", e))?;

    let (signal_tx, signal_rx) = mpsc::channel::<()>();
    ctrlc::set_handler(move || {
        let _ = signal_tx.send(());
    })
    .map_err(|e| Error::Config(format!("cannot install the signal handler: {e}")))?;

    let mut local = LocalCluster {
        children: Vec::new(),
    };
    for (i, addr) in cluster.iter().enumerate() {
        let id = i as NodeId + 1;
        let dir = args.data_dir.join(format!("node-{id}"));
        let log_path = args.data_dir.join(format!("node-{id}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
        let mut cmd = Process::new(&exe);
        cmd.arg("server")
            .args(["--node-id", &id.to_string()])
            .args(["--bind", &addr.to_string()])
            .args(["--cluster", &list])
            .arg("--data-dir")
            .arg(&dir)
            .args(args.timing.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if args.verbose {
            cmd.arg("--verbose");
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting node {id}"), e))?;
        local.children.push((id, child));
    }

    let client_timeout =
        Duration::from_millis(timing.election_timeout_max_ms * 4).max(Duration::from_secs(5));
    let mut client = client_for(&cluster, client_timeout)?;
    let leader = wait_for_leader(&mut client, &mut local, &args.data_dir, &signal_rx)?;
    println!(
        "kvapp-c local: {} node(s) running, leader is node {leader}",
        cluster.len()
    );
    for (i, addr) in cluster.iter().enumerate() {
        println!(
            "  node {}  raft {addr}  client {}  data {}",
            i + 1,
            default_client_addr(*addr)?,
            args.data_dir.join(format!("node-{}", i + 1)).display()
        );
    }
    println!("connect with:\n  kvapp-c client --cluster {list}");
    let _ = std::io::stdout().flush();

    if args.no_repl {
        println!("running until interrupted (Ctrl-C)");
        let _ = std::io::stdout().flush();
        let mut died = None;
        loop {
            match signal_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(id) = local.exited() {
                        died = Some(id);
                        break;
                    }
                }
            }
        }
        if let Some(id) = died {
            println!("stopping the nodes");
            local.stop();
            return Err(Error::Failed(format!(
                "node {id} exited; see {}",
                args.data_dir.join(format!("node-{id}.log")).display()
            )));
        }
    } else {
        // The shell blocks reading its input, so a watcher thread answers
        // SIGINT/SIGTERM: it puts the terminal back as it was, stops the
        // nodes and ends the process.
        let local = Arc::new(Mutex::new(local));
        let terminal = TerminalMode::save();
        let watched = local.clone();
        std::thread::spawn(move || {
            if signal_rx.recv().is_ok() {
                terminal.restore();
                println!("stopping the nodes");
                watched.lock().unwrap_or_else(|e| e.into_inner()).stop();
                std::process::exit(0);
            }
        });
        let result = client_for(&cluster, Duration::from_secs(5)).and_then(|client| {
            let mut shell = Shell::new(client, cluster.clone());
            repl(&mut shell, &cluster)
        });
        println!("stopping the nodes");
        local.lock().unwrap_or_else(|e| e.into_inner()).stop();
        return result.map(|_| ());
    }
    println!("stopping the nodes");
    local.stop();
    Ok(())
}

/// The terminal settings of standard input, when it is a terminal, so they
/// can be put back if the process ends while the line editor has changed
/// them.
struct TerminalMode(Option<libc::termios>);

impl TerminalMode {
    fn save() -> TerminalMode {
        if !std::io::stdin().is_terminal() {
            return TerminalMode(None);
        }
        // SAFETY: tcgetattr fills the termios it is given; it is kept only
        // when the call succeeded.
        let saved = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            (libc::tcgetattr(libc::STDIN_FILENO, &mut t) == 0).then_some(t)
        };
        TerminalMode(saved)
    }

    fn restore(&self) {
        if let Some(t) = &self.0 {
            // SAFETY: puts back settings read from the same descriptor.
            unsafe {
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
            }
        }
    }
}

fn wait_for_leader(
    client: &mut Client,
    local: &mut LocalCluster,
    data_dir: &Path,
    signal: &mpsc::Receiver<()>,
) -> Result<NodeId> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(id) = local.exited() {
            return Err(Error::Failed(format!(
                "node {id} exited at startup; see {}",
                data_dir.join(format!("node-{id}.log")).display()
            )));
        }
        if signal.try_recv().is_ok() {
            return Err(Error::Failed(
                "interrupted while waiting for a leader".into(),
            ));
        }
        let leader = client
            .status()
            .into_iter()
            .find_map(|(id, _, s)| s.ok().filter(|s| s.role == "leader").map(|_| id));
        if let Some(id) = leader {
            return Ok(id);
        }
        if Instant::now() > deadline {
            return Err(Error::Failed(
                "no leader was elected within 60 s; see the node logs".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn legacy_spellings_pick_server_or_client() {
        assert_eq!(
            legacy_spelling(strings(&["kvapp-c", "--node-id", "1", "--bind", "a"]))[1],
            "server"
        );
        assert_eq!(
            legacy_spelling(strings(&["kvapp-c", "--cluster", "a,b"]))[1],
            "client"
        );
        assert_eq!(
            legacy_spelling(strings(&["kvapp-c", "client", "--cluster", "a"]))[1],
            "client"
        );
        assert_eq!(
            legacy_spelling(strings(&["kvapp-c", "--help"]))[1],
            "--help"
        );
    }

    #[test]
    fn timing_flags_override_the_preset_and_are_validated() {
        let t = TimingArgs {
            debug_mode: true,
            ..Default::default()
        };
        assert_eq!(t.config().unwrap().heartbeat_interval_ms, 500);
        let t = TimingArgs {
            heartbeat_interval: Some(20),
            ..Default::default()
        };
        let c = t.config().unwrap();
        assert_eq!((c.heartbeat_interval_ms, c.event_loop_delay_ms), (20, 4));
        let t = TimingArgs {
            heartbeat_interval: Some(50),
            election_timeout_min: Some(40),
            ..Default::default()
        };
        let err = t.config().unwrap_err().to_string();
        assert!(err.contains("40 ms") && err.contains("50 ms"), "{err}");
    }

    #[test]
    fn cluster_lists_are_checked() {
        assert_eq!(parse_cluster("127.0.0.1:1,127.0.0.1:2").unwrap().len(), 2);
        assert!(parse_cluster("").is_err());
        assert!(
            parse_cluster(" , ")
                .unwrap_err()
                .to_string()
                .contains("no address")
        );
        for list in [
            "127.0.0.1:1,,127.0.0.1:3",
            ",127.0.0.1:1",
            "127.0.0.1:1,",
            "127.0.0.1:1, ,127.0.0.1:3",
        ] {
            let err = parse_cluster(list).unwrap_err().to_string();
            assert!(err.contains("empty entry"), "{list}: {err}");
        }
        assert!(parse_cluster("127.0.0.1:1,127.0.0.1:1").is_err());
        assert!(parse_cluster("nonsense").is_err());
        let err = parse_cluster("127.0.0.1:1,127.0.0.1:0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port 0"), "{err}");
    }
}
