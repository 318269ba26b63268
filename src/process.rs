//! Child server processes, as `kvapp-c local` and `kvapp-c bench --local`
//! run them.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::NodeId;

/// Stops child nodes the way an operator would: SIGTERM to each (a clean
/// shutdown that syncs what was acknowledged), then SIGKILL for any still
/// running after `grace`. Waits for (reaps) every child and empties
/// `children`. Returns the ids of the nodes that had to be killed.
pub fn stop_nodes(children: &mut Vec<(NodeId, Child)>, grace: Duration) -> Vec<NodeId> {
    for (_, child) in children.iter() {
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of a child this process started and
            // has not yet reaped, so the pid cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + grace;
    let mut killed = Vec::new();
    for (id, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    killed.push(*id);
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
    children.clear();
    killed
}
