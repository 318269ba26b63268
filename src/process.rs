//! Child server processes, as `kvapp-c local` and `kvapp-c bench --local`
//! run them.

use std::net::TcpListener;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::{Error, NodeId, Result};

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

/// A base port `p` such that the Raft ports `p .. p + nodes` and the client
/// ports `p + 1000 ..` are all free on loopback right now, chosen at random
/// below the kernel's range for outgoing connections: a node connecting to
/// a peer that has not bound its port yet could otherwise be given that very
/// port as its own source port and keep the peer from starting.
pub fn free_base_port(nodes: u16) -> Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    let top = outgoing_port_start().min(65536);
    let span = 1000 + u32::from(nodes);
    let (lo, hi) = if top > 12_000 + span {
        (10_000, top - span)
    } else {
        (top.min(60_000), 65_536u32.saturating_sub(span))
    };
    if hi <= lo {
        return Err(Error::Config(format!(
            "{nodes} nodes need more loopback ports than there are"
        )));
    }
    for _ in 0..100 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let base = (lo + (h.finish() % u64::from(hi - lo)) as u32) as u16;
        let all_free = (0..nodes).all(|i| {
            [base + i, base + i + 1000]
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        });
        if all_free {
            return Ok(base);
        }
    }
    Err(Error::Failed(
        "found no free range of loopback ports for the local cluster; give --base-port".into(),
    ))
}

/// The first port the kernel hands out for outgoing connections
/// (`ip_local_port_range`; Linux's default where it cannot be read).
fn outgoing_port_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_free_and_outside_the_outgoing_range() {
        let base = free_base_port(3).unwrap();
        let top = outgoing_port_start();
        if top > 15_000 {
            assert!(u32::from(base) + 1003 <= top, "{base} reaches {top}");
        }
        for p in [base, base + 2, base + 1000, base + 1002] {
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
        assert!(free_base_port(u16::MAX).is_err());
    }
}
