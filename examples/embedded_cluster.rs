//! A 3-node kvapp-c cluster inside one process: memory storage, an in-memory
//! network between the nodes, and real client ports on loopback. A program
//! embeds nodes through the same `Server::builder` the binary uses.
//!
//! Run with `cargo run --example embedded_cluster`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kvapp_c::kv::Client;
use kvapp_c::network::memory::MemoryNetwork;
use kvapp_c::server::Server;
use kvapp_c::storage::memory::{MemoryKv, MemoryLog, MemoryState};
use kvapp_c::timing::TimingConfig;

fn main() -> kvapp_c::Result<()> {
    let network = MemoryNetwork::new();
    // Raft addresses only name the members here; the memory network carries
    // their traffic.
    let members: Vec<SocketAddr> = (1..=3)
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let node = Server::builder(id, members.clone())
            .timing(TimingConfig::default())
            .client_addr("127.0.0.1:0".parse().expect("valid address"))
            .storage(MemoryLog::new(), MemoryState::new(), MemoryKv::new())
            .transport(network.transport(id))
            .start()?;
        println!("node {id}: clients on {}", node.client_addr());
        nodes.push(node);
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    while !nodes.iter().any(|n| n.status().role == "leader") {
        if Instant::now() > deadline {
            return Err(kvapp_c::Error::Failed("no leader elected".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut client = Client::new(
        nodes.iter().map(|n| n.client_addr()).collect(),
        Duration::from_secs(5),
    );
    client.put(b"language", b"rust")?;
    let value = client.get(b"language")?;
    println!(
        "language = {:?}",
        value.map(|v| String::from_utf8_lossy(&v).into_owned())
    );
    for (id, _, status) in client.status() {
        match status {
            Ok(s) => println!(
                "node {id}: {} term {} commit {} applied {}",
                s.role, s.term, s.commit_index, s.applied_index
            ),
            Err(e) => println!("node {id}: {e}"),
        }
    }

    for node in nodes {
        node.shutdown();
        node.join()?;
    }
    Ok(())
}
