//! Helpers for the end-to-end tests: real `kvapp-c` processes on loopback.
//!
//! Every test gets its own temporary directory and free ports, waits on
//! conditions with deadlines, and kills only the processes it started: a
//! [`Cluster`] kills its nodes when dropped, a [`ChildGuard`] kills its
//! process (and, for `local`, the process group holding its nodes).

#![allow(dead_code)]

pub mod linearizability;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use kvapp_c::NodeId;
use kvapp_c::kv::Client;
use kvapp_c::kv::protocol::NodeStatus;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kvapp-c");

/// How long a node may take to start (bind its ports) on a loaded machine.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long the tests wait for a cluster to elect a leader or recover.
pub const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);
/// The longest a one-shot client process may run before it counts as hung.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// Ports handed out by this test process, so two tests running in parallel
/// never get the same one.
static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn can_bind(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Whether the Raft ports `base .. base + count` and their client ports
/// can all be bound right now.
pub fn can_bind_all(base: u16, count: u16) -> bool {
    (0..count).all(|i| can_bind(base + i) && can_bind(base + i + 1000))
}

/// A base port `p` such that `p .. p + count` and the client ports
/// `p + 1000 .. p + 1000 + count` are all free right now (and not handed out
/// before by this process), below the kernel's range for outgoing
/// connections (see `kvapp_c::process::free_base_port`). Another program may
/// still take one before the node binds it; the callers retry with new
/// ports when a node cannot bind.
pub fn free_ports(count: u16) -> u16 {
    loop {
        let base = kvapp_c::process::free_base_port(count).expect("free loopback ports");
        let ports: Vec<u16> = (0..count)
            .flat_map(|i| [base + i, base + i + 1000])
            .collect();
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        if ports.iter().any(|p| taken.contains(p)) {
            continue;
        }
        taken.extend(ports);
        return base;
    }
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what` once
/// `deadline` has passed.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to the process `pid`, which the caller started.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid of a child this test started and has not
    // reaped yet, so the pid cannot have been reused.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Whether every thread of process `pid` is stopped (state `T`).
pub fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        if state != Some("T") {
            return false;
        }
        any = true;
    }
    any
}

/// Waits for `child` to exit, up to `deadline`. `None` if it is still running.
pub fn wait_exit(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(10)),
            Ok(None) => return None,
            Err(e) => panic!("waiting for process {}: {e}", child.id()),
        }
    }
}

/// A child process that is killed (SIGKILL) when the guard is dropped,
/// together with its whole process group when it was started as a group
/// leader (see [`ChildGuard::spawn_group`]).
pub struct ChildGuard {
    pub child: Child,
    group: bool,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        ChildGuard {
            child,
            group: false,
        }
    }

    /// Starts `cmd` as the leader of a new process group, so that dropping
    /// the guard also kills every process it started.
    pub fn spawn_group(cmd: &mut Command) -> ChildGuard {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        ChildGuard { child, group: true }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Kill the group while it still exists: before the leader is reaped,
        // or while other members live on, its id cannot have been reused.
        let unreaped = matches!(self.child.try_wait(), Ok(None));
        if self.group && (unreaped || !group_members(self.child.id()).is_empty()) {
            // SAFETY: the group was created for this child, so it holds only
            // processes this test started (the child and its descendants).
            unsafe {
                libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid,
/// pgrp, ...
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// Live (not zombie) processes matching `pred(ppid, pgrp)`.
fn processes_where(pred: impl Fn(u32, u32) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|f| {
                f.len() > 2
                    && f[0] != "Z"
                    && pred(f[1].parse().unwrap_or(0), f[2].parse().unwrap_or(0))
            })
        })
        .collect()
}

/// Live processes of the process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    processes_where(|_, pgrp| pgrp == pgid)
}

/// Live children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    processes_where(|ppid, _| ppid == pid)
}

/// The command line of `pid`, arguments separated by spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// A new pseudo-terminal: the master side to drive it and the slave side
/// to hand to a process as its terminal.
pub fn open_pty() -> (File, std::os::fd::OwnedFd) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut m: libc::c_int = -1;
    let mut s: libc::c_int = -1;
    // SAFETY: openpty writes two new descriptors into m and s; the name,
    // termios and window size arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here only.
    unsafe { (File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

/// Reads `master` until the terminal's last user closes it.
pub fn read_pty(mut master: File) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // Ends with EIO once no process holds the slave side any more.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).replace("\r\n", "\n")
    })
}

/// What a finished process printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// The exit code; `None` if a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `kvapp-c ARGS` to completion with `stdin` as its standard input
/// (empty if `None`), killing it and panicking if it runs past `deadline`.
pub fn run(args: &[&str], stdin: Option<&str>, deadline: Duration) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard::spawn(&mut cmd);
    let mut input = guard.child.stdin.take().expect("piped stdin");
    let text = stdin.unwrap_or("").to_string();
    let writer = thread::spawn(move || {
        // The process may exit before reading everything (e.g. at `quit`).
        let _ = input.write_all(text.as_bytes());
    });
    let out = read_all(guard.child.stdout.take().expect("piped stdout"));
    let err = read_all(guard.child.stderr.take().expect("piped stderr"));
    let status = wait_exit(&mut guard.child, deadline)
        .unwrap_or_else(|| panic!("kvapp-c {args:?} did not finish within {deadline:?}"));
    let _ = writer.join();
    Output {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// One server process of a [`Cluster`].
struct NodeProc {
    child: Option<Child>,
    paused: bool,
}

/// Why a node did not start.
#[derive(Debug)]
enum StartError {
    /// One of its ports was taken; start again on other ports.
    PortInUse,
}

/// A cluster of `kvapp-c server` processes on loopback with the fast timing
/// preset, data in a temporary directory. Node `i` listens for Raft on
/// `base + i - 1` and for clients 1000 above. Dropping it kills every node.
pub struct Cluster {
    dir: tempfile::TempDir,
    base: u16,
    nodes: Vec<NodeProc>,
    /// Extra flags given to every node.
    extra: Vec<String>,
}

impl Cluster {
    /// Starts an `n`-node cluster and waits until every node listens.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// Like [`Cluster::start`], with extra server flags for every node.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        for attempt in 1.. {
            let dir = tempfile::Builder::new()
                .prefix("kvapp-e2e-")
                .tempdir()
                .expect("temporary directory");
            let mut cluster = Cluster {
                dir,
                base: free_ports(n as u16),
                nodes: (0..n)
                    .map(|_| NodeProc {
                        child: None,
                        paused: false,
                    })
                    .collect(),
                extra: extra.iter().map(|s| s.to_string()).collect(),
            };
            let started = (1..=n as NodeId).all(|id| cluster.try_start_node(id).is_ok());
            if started {
                return cluster;
            }
            assert!(attempt < 10, "could not find free ports for a cluster");
        }
        unreachable!()
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    pub fn ids(&self) -> Vec<NodeId> {
        (1..=self.nodes.len() as NodeId).collect()
    }

    /// The Raft address of node `id`.
    pub fn raft_addr(&self, id: NodeId) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + id as u16 - 1))
    }

    /// The client address of node `id`.
    pub fn client_addr(&self, id: NodeId) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.base + id as u16 - 1 + 1000))
    }

    /// The `--cluster` list.
    pub fn list(&self) -> String {
        self.ids()
            .iter()
            .map(|&id| self.raft_addr(id).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self, id: NodeId, what: &str) -> PathBuf {
        self.dir.path().join(format!("node-{id}.{what}"))
    }

    /// The command line that starts node `id`.
    pub fn server_command(&self, id: NodeId) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("server")
            .args(["--node-id", &id.to_string()])
            .args(["--bind", &self.raft_addr(id).to_string()])
            .args(["--cluster", &self.list()])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--timing-mode", "fast"])
            .args(&self.extra)
            .stdin(Stdio::null());
        cmd
    }

    /// Starts node `id` and waits until it printed its start line (both
    /// ports bound). Panics if it exits for any reason but a taken port.
    fn try_start_node(&mut self, id: NodeId) -> Result<(), StartError> {
        assert!(
            self.nodes[id as usize - 1].child.is_none(),
            "node {id} is already running"
        );
        let out_path = self.log_path(id, "out");
        let err_path = self.log_path(id, "err");
        let out = File::create(&out_path).expect("node stdout file");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&err_path)
            .expect("node stderr file");
        let mut cmd = self.server_command(id);
        cmd.stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node {id}: {e}"));
        self.nodes[id as usize - 1].child = Some(child);
        self.nodes[id as usize - 1].paused = false;
        let started = format!("kvapp-c node {id}:");
        let end = Instant::now() + START_DEADLINE;
        loop {
            if std::fs::read_to_string(&out_path).is_ok_and(|s| s.contains(&started)) {
                return Ok(());
            }
            let child = self.nodes[id as usize - 1].child.as_mut().expect("child");
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[id as usize - 1].child = None;
                let log = std::fs::read_to_string(&err_path).unwrap_or_default();
                if log.contains("Address already in use") || log.contains("os error 98") {
                    return Err(StartError::PortInUse);
                }
                panic!("node {id} exited at startup with {status}:\n{log}");
            }
            assert!(
                Instant::now() < end,
                "node {id} did not start within {START_DEADLINE:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts node `id` again (after a kill or a stop) on its ports and data.
    pub fn restart(&mut self, id: NodeId) {
        // A port of the dead process can take a moment to be free again.
        let end = Instant::now() + START_DEADLINE;
        while let Err(StartError::PortInUse) = self.try_start_node(id) {
            assert!(
                Instant::now() < end,
                "node {id} could not bind its ports again"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn is_running(&self, id: NodeId) -> bool {
        self.nodes[id as usize - 1].child.is_some()
    }

    pub fn pid(&self, id: NodeId) -> u32 {
        self.nodes[id as usize - 1]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"))
            .id()
    }

    /// Panics if a node this cluster believes running has exited.
    pub fn assert_all_alive(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log =
                    std::fs::read_to_string(self.dir.path().join(format!("node-{}.err", i + 1)))
                        .unwrap_or_default();
                panic!("node {} exited unexpectedly with {status}:\n{log}", i + 1);
            }
        }
    }

    /// kill -9 node `id` and reap it.
    pub fn kill(&mut self, id: NodeId) {
        let node = &mut self.nodes[id as usize - 1];
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let _ = child.kill();
        let _ = child.wait();
        node.paused = false;
    }

    /// kill -9 every running node.
    pub fn kill_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            node.paused = false;
        }
    }

    /// SIGSTOP node `id`.
    pub fn pause(&mut self, id: NodeId) {
        let pid = self.pid(id);
        signal(pid, libc::SIGSTOP);
        // The stop takes effect only once one of the node's threads gets a
        // CPU to act on it; on a loaded machine the node may serve for a
        // while before that. Wait until every thread is stopped.
        wait_for(&format!("node {id} to stop"), RECOVERY_DEADLINE, || {
            all_stopped(pid).then_some(())
        });
        self.nodes[id as usize - 1].paused = true;
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: NodeId) {
        signal(self.pid(id), libc::SIGCONT);
        self.nodes[id as usize - 1].paused = false;
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.nodes[id as usize - 1].paused
    }

    /// Sends `sig` (SIGTERM, SIGINT) to node `id` and waits up to `deadline`
    /// for it to exit; returns how it ended.
    pub fn stop_with(&mut self, id: NodeId, sig: libc::c_int, deadline: Duration) -> ExitStatus {
        signal(self.pid(id), sig);
        let node = &mut self.nodes[id as usize - 1];
        let child = node.child.as_mut().expect("running");
        let status = wait_exit(child, deadline)
            .unwrap_or_else(|| panic!("node {id} did not stop within {deadline:?}"));
        node.child = None;
        status
    }

    /// What node `id` wrote to standard error so far.
    pub fn stderr(&self, id: NodeId) -> String {
        std::fs::read_to_string(self.log_path(id, "err")).unwrap_or_default()
    }

    /// A library client for the whole cluster.
    pub fn client(&self, timeout: Duration) -> Client {
        self.client_for(&self.ids(), timeout)
    }

    /// A library client that knows only the nodes `ids`.
    pub fn client_for(&self, ids: &[NodeId], timeout: Duration) -> Client {
        Client::new(
            ids.iter().map(|&id| self.client_addr(id)).collect(),
            timeout,
        )
    }

    /// Runs `kvapp-c client --cluster LIST ARGS` (a one-shot command or, with
    /// `stdin`, a piped script).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let list = self.list();
        let mut full = vec!["client", "--cluster", list.as_str()];
        full.extend_from_slice(args);
        run(&full, stdin, CLI_DEADLINE)
    }

    /// Asks every node in `ids` for its status (paused or dead nodes give
    /// `None` after at most a second).
    pub fn statuses(&self, ids: &[NodeId]) -> Vec<(NodeId, Option<NodeStatus>)> {
        let mut client = self.client_for(ids, Duration::from_secs(1));
        client
            .status()
            .into_iter()
            .zip(ids)
            .map(|((_, _, s), &id)| (id, s.ok()))
            .collect()
    }

    /// Waits until one of the running, unpaused nodes reports itself leader
    /// of the highest term any of them knows, and returns it.
    pub fn wait_leader(&self) -> NodeId {
        let live: Vec<NodeId> = self
            .ids()
            .into_iter()
            .filter(|&id| self.is_running(id) && !self.is_paused(id))
            .collect();
        wait_for("a leader", RECOVERY_DEADLINE, || {
            let statuses = self.statuses(&live);
            let top = statuses
                .iter()
                .filter_map(|(_, s)| s.as_ref().map(|s| s.term))
                .max()?;
            let leaders: Vec<NodeId> = statuses
                .iter()
                .filter_map(|(id, s)| {
                    s.as_ref()
                        .filter(|s| s.role == "leader" && s.term == top)
                        .map(|_| *id)
                })
                .collect();
            (leaders.len() == 1).then(|| leaders[0])
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The same shape as the Raft transport's handshake (postcard encodes by
/// field order and type, not name), so tests can speak the protocol by hand.
#[derive(serde::Serialize)]
struct Hello<'a> {
    protocol: &'a str,
    cluster: &'a str,
    node: NodeId,
}

/// A framed handshake naming `node` of `cluster` over `protocol`.
pub fn hello_frame(protocol: &str, cluster: &str, node: NodeId) -> Vec<u8> {
    let mut bytes = Vec::new();
    kvapp_c::network::frame::write_frame(
        &mut bytes,
        &kvapp_c::network::frame::encode(&Hello {
            protocol,
            cluster,
            node,
        }),
    )
    .unwrap();
    bytes
}
