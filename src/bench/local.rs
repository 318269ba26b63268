//! `kvapp-c bench --local`: a throwaway cluster of real `kvapp-c server`
//! child processes on loopback, with a fresh data directory that is removed
//! afterwards. The nodes sync their logs as in production.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::kv::Client;
use crate::kv::client::client_addrs;
use crate::network::tcp::cluster_identity;
use crate::{Error, NodeId, Result};

/// How long the nodes get to elect a leader.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running local cluster; stopped, and its data removed, on drop.
pub struct LocalCluster {
    /// Raft addresses, node `i + 1` at index `i`.
    addrs: Vec<SocketAddr>,
    /// The fresh directory holding each node's data directory and log file.
    dir: PathBuf,
    children: Vec<(NodeId, Child)>,
}

impl LocalCluster {
    /// Creates a fresh directory under `parent` (default: the system's
    /// temporary directory) for the cluster's data, without starting it.
    pub fn prepare(parent: Option<&Path>) -> Result<LocalCluster> {
        let parent = parent
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!("kvapp-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(LocalCluster {
            addrs: Vec::new(),
            dir,
            children: Vec::new(),
        })
    }

    /// The cluster's data directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process ids of the running nodes, node 1 first.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, child)| child.id()).collect()
    }

    /// The nodes' Raft addresses, once started.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Starts `nodes` servers on loopback ports from `base_port` (or free
    /// ports found by probing) and waits until one of them leads.
    pub fn start(&mut self, nodes: u16, base_port: Option<u16>) -> Result<()> {
        let base = match base_port {
            Some(p) => p,
            None => crate::process::free_base_port(nodes)?,
        };
        if base == 0 || base as u32 + nodes as u32 - 1 + 1000 > u16::MAX as u32 {
            return Err(Error::Config(format!(
                "--base-port {base} with {nodes} nodes needs ports beyond 65535"
            )));
        }
        self.addrs = (0..nodes)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], base + i)))
            .collect();
        let list = cluster_identity(&self.addrs);
        let exe =
            std::env::current_exe().map_err(|e| Error::io("finding the kvapp-c binary", e))?;
        for (i, addr) in self.addrs.iter().enumerate() {
            let id = i as NodeId + 1;
            let log_path = self.log_path(id);
            let log_file = std::fs::File::create(&log_path)
                .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
            let child = Command::new(&exe)
                .arg("server")
                .args(["--node-id", &id.to_string()])
                .args(["--bind", &addr.to_string()])
                .args(["--cluster", &list])
                .arg("--data-dir")
                .arg(self.dir.join(format!("node-{id}")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .map_err(|e| Error::io(format!("starting node {id} ({})", exe.display()), e))?;
            self.children.push((id, child));
        }
        self.wait_for_leader()
    }

    fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    fn wait_for_leader(&mut self) -> Result<()> {
        let mut client = Client::new(client_addrs(&self.addrs)?, Duration::from_secs(1));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(id) = self.exited() {
                return Err(Error::Failed(format!(
                    "local node {id} exited at startup; its log ends with:\n{}",
                    tail(&self.log_path(id), 2_000)
                )));
            }
            let leader = client
                .status()
                .into_iter()
                .any(|(_, _, s)| s.is_ok_and(|s| s.role == "leader"));
            if leader {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Failed(format!(
                    "the local cluster elected no leader within {} s",
                    STARTUP_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first node that has exited, if any.
    pub fn exited(&mut self) -> Option<NodeId> {
        self.children
            .iter_mut()
            .find_map(|(id, c)| matches!(c.try_wait(), Ok(Some(_))).then_some(*id))
    }

    /// Stops every node: SIGTERM, then SIGKILL for any still running after
    /// ten seconds.
    pub fn stop(&mut self) {
        crate::process::stop_nodes(&mut self.children, Duration::from_secs(10));
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last `max` bytes of the file at `path`, or why it cannot be read.
fn tail(path: &Path, max: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
