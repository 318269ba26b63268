//! A small program talking to a kvapp-c cluster through the library's
//! blocking [`Client`].
//!
//! ```text
//! cargo run --example client -- 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
//! ```
//!
//! The argument lists the nodes' Raft addresses, as given to the servers'
//! `--cluster` flag (default `127.0.0.1:7001`); the client reaches each node on
//! its client port, Raft port + 1000.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use kvapp_c::kv::{Client, client_addrs};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7001".to_string());
    let raft_addrs = cluster
        .split(',')
        .map(|a| {
            a.trim()
                .parse::<SocketAddr>()
                .map_err(|e| format!("bad address {a:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = Client::new(client_addrs(&raft_addrs)?, Duration::from_secs(5));

    client.put(b"example/greeting", b"hello")?;
    println!("put example/greeting = hello");

    let value = client.get(b"example/greeting")?;
    println!("get example/greeting -> {}", show(value.as_deref()));

    let cas = client.cas(b"example/greeting", Some(b"hello"), b"hello, world")?;
    println!(
        "cas example/greeting hello -> \"hello, world\": swapped={} (it held {})",
        cas.swapped,
        show(cas.current.as_deref())
    );

    // Creating a key only if it is absent.
    let cas = client.cas(b"example/counter", None, b"1")?;
    println!(
        "cas example/counter (absent) -> 1: swapped={} (it held {})",
        cas.swapped,
        show(cas.current.as_deref())
    );

    println!("list example/:");
    for key in client.list(b"example/")? {
        println!("  {}", String::from_utf8_lossy(&key));
    }

    println!("status:");
    for (id, addr, status) in client.status() {
        match status {
            Ok(s) => println!(
                "  node {id} {addr}: {} term {} commit {} applied {}",
                s.role, s.term, s.commit_index, s.applied_index
            ),
            Err(e) => println!("  node {id} {addr}: unreachable ({e})"),
        }
    }
    Ok(())
}

fn show(value: Option<&[u8]>) -> String {
    match value {
        Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
        None => "(nil)".to_string(),
    }
}
