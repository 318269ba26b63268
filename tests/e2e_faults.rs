//! Faults against real server processes: kill -9 of the leader and of every
//! node, a lost majority, a paused (SIGSTOP) leader, garbage on both ports,
//! a second server on a data directory in use, and clean stops on SIGTERM
//! and SIGINT.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use kvapp_c::kv::Client;
use kvapp_c::network::frame;

use common::{Cluster, RECOVERY_DEADLINE, run, wait_for};

/// A client timeout long enough to ride out any election on a loaded
/// machine.
const PATIENT: Duration = Duration::from_secs(30);

fn put(client: &mut Client, key: &str, value: &str) {
    client
        .put(key.as_bytes(), value.as_bytes())
        .unwrap_or_else(|e| panic!("put {key} {value}: {e}"));
}

fn get(client: &mut Client, key: &str) -> Option<String> {
    client
        .get(key.as_bytes())
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .map(|v| String::from_utf8(v).expect("utf-8 value"))
}

/// Reads every key of `expected` and compares.
#[track_caller]
fn assert_store(client: &mut Client, expected: &BTreeMap<String, Option<String>>) {
    for (k, v) in expected {
        assert_eq!(&get(client, k), v, "key {k}");
    }
}

/// Waits until every running node has applied everything the leader has
/// committed.
fn wait_caught_up(cluster: &Cluster) {
    let ids = cluster.ids();
    wait_for("every node to catch up", RECOVERY_DEADLINE, || {
        let statuses = cluster.statuses(&ids);
        let all: Option<Vec<_>> = statuses.into_iter().map(|(_, s)| s).collect();
        let all = all?;
        let commit = all
            .iter()
            .filter(|s| s.role == "leader")
            .map(|s| s.commit_index)
            .max()?;
        all.iter().all(|s| s.applied_index >= commit).then_some(())
    });
}

#[test]
fn killing_the_leader_fails_over_and_keeps_acknowledged_writes() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader();
    let mut client = cluster.client(PATIENT);
    let mut expected = BTreeMap::new();
    for i in 0..30 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        put(&mut client, &k, &v);
        expected.insert(k, Some(v));
    }
    let mut failovers = Vec::new();
    for round in 0..3 {
        // Point the client at the leader (a loaded machine may hold a
        // spurious election in between, hence the loop).
        let leader = wait_for("the client to know the leader", RECOVERY_DEADLINE, || {
            let leader = cluster.wait_leader();
            put(&mut client, "warm", &round.to_string());
            (client.leader_hint() == Some(leader)).then_some(leader)
        });
        expected.insert("warm".into(), Some(round.to_string()));

        let killed_at = Instant::now();
        cluster.kill(leader);
        let (k, v) = (
            format!("after-{round}"),
            format!("first write after kill {round}"),
        );
        put(&mut client, &k, &v);
        failovers.push(killed_at.elapsed());
        expected.insert(k, Some(v));
        let new_leader = client.leader_hint().expect("a leader");
        assert_ne!(new_leader, leader, "the dead node cannot have answered");

        for i in 0..10 {
            let (k, v) = (format!("r{round}-{i}"), format!("w{i}"));
            put(&mut client, &k, &v);
            expected.insert(k, Some(v));
        }
        cluster.restart(leader);
        wait_caught_up(&cluster);
    }
    let ms: Vec<u128> = failovers.iter().map(|d| d.as_millis()).collect();
    println!(
        "failover with the fast preset (kill -9 of the leader to the client's next \
         acknowledged write), 3 rounds: {ms:?} ms"
    );
    assert_store(&mut client, &expected);
    // A fresh client process reads the same.
    let out = cluster.cli(&["get", "after-2"], None);
    assert_eq!(out.lines(), vec!["first write after kill 2"], "{out:?}");
    cluster.assert_all_alive();
}

#[test]
fn every_acknowledged_write_survives_kill_9_of_every_node() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader();
    let mut expected = BTreeMap::new();
    for round in 0..2 {
        let mut client = cluster.client(PATIENT);
        for i in 0..40 {
            let k = format!("k{}", i % 25);
            match i % 5 {
                3 => {
                    client.delete(k.as_bytes()).expect("delete");
                    expected.insert(k, None);
                }
                4 => {
                    let old = expected.get(&k).cloned().flatten();
                    let new = format!("cas-{round}-{i}");
                    let c = client
                        .cas(
                            k.as_bytes(),
                            old.as_deref().map(str::as_bytes),
                            new.as_bytes(),
                        )
                        .expect("cas");
                    assert!(c.swapped, "cas {k} from {old:?}: {c:?}");
                    expected.insert(k, Some(new));
                }
                _ => {
                    let v = format!("v-{round}-{i}");
                    put(&mut client, &k, &v);
                    expected.insert(k, Some(v));
                }
            }
        }
        // Everything above was acknowledged; pull the plug on all nodes at
        // once and bring them back.
        cluster.kill_all();
        for id in cluster.ids() {
            cluster.restart(id);
        }
        let mut client = cluster.client(PATIENT);
        assert_store(&mut client, &expected);
    }
    cluster.assert_all_alive();
}

#[test]
fn kill_9_of_every_node_under_load_loses_no_acknowledged_write() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut cluster = Cluster::start(3);
    cluster.wait_leader();
    for round in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        // Writers on disjoint keys: each remembers what was acknowledged
        // and which write, if any, ended unknown.
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let mut client = cluster.client(Duration::from_secs(2));
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut acked: BTreeMap<String, String> = BTreeMap::new();
                    let mut unknown: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let key = format!("w{w}-k{}", i % 50);
                        let value = format!("r{round}-{i}");
                        match client.put(key.as_bytes(), value.as_bytes()) {
                            Ok(()) => {
                                acked.insert(key.clone(), value);
                                unknown.remove(&key);
                            }
                            Err(kvapp_c::Error::Unknown(_)) => {
                                unknown.entry(key).or_default().push(value);
                            }
                            Err(_) => {}
                        }
                        i += 1;
                    }
                    (acked, unknown)
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(1500));
        // Pull the plug while the writes stream in.
        cluster.kill_all();
        stop.store(true, Ordering::SeqCst);
        let results: Vec<_> = writers
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect();
        for id in cluster.ids() {
            cluster.restart(id);
        }
        let mut client = cluster.client(PATIENT);
        let mut checked = 0;
        for (acked, unknown) in results {
            for (k, v) in acked {
                let got = get(&mut client, &k).expect("an acknowledged key is present");
                // A later write whose outcome is unknown may have landed.
                let later = unknown.get(&k).is_some_and(|u| u.contains(&got));
                assert!(
                    got == v || later,
                    "round {round}: key {k} holds {got}, acknowledged {v}"
                );
                checked += 1;
            }
        }
        assert!(checked > 0, "no write was acknowledged before the kill");
        println!("round {round}: {checked} acknowledged keys survived kill -9 of every node");
    }
    cluster.assert_all_alive();
}

#[test]
fn a_minority_cannot_write_and_a_returning_majority_serves_again() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    let mut client = cluster.client(PATIENT);
    put(&mut client, "base", "before");
    // Leave the leader alone: it may take the write into its log but can
    // never commit it.
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
    for &f in &followers {
        cluster.kill(f);
    }
    let out = cluster.cli(&["--timeout", "2000", "put", "minority", "m"], None);
    assert_eq!(out.code, Some(1), "{out:?}");
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(
        lines[0].starts_with("ERROR unknown: ") || lines[0].starts_with("ERROR failed: "),
        "{out:?}"
    );
    let definitely_not_applied = lines[0].starts_with("ERROR failed: ");
    // status still reports every node; the dead ones as unreachable.
    let status = cluster.cli(&["status"], None);
    assert_eq!(status.code, Some(0), "{status:?}");
    for (i, line) in status.lines().iter().enumerate() {
        let id = i as u64 + 1;
        let unreachable = format!("{id} {} unreachable", cluster.raft_addr(id));
        assert_eq!(*line == unreachable, followers.contains(&id), "{status:?}");
    }
    assert_eq!(status.lines().len(), 3, "{status:?}");
    let read = cluster.cli(&["--timeout", "2000", "get", "base"], None);
    assert_eq!(read.code, Some(1), "{read:?}");
    assert!(read.lines()[0].starts_with("ERROR failed: "), "{read:?}");

    // One node back makes a majority.
    cluster.restart(followers[0]);
    put(&mut client, "after", "majority");
    assert_eq!(get(&mut client, "base").as_deref(), Some("before"));
    assert_eq!(get(&mut client, "after").as_deref(), Some("majority"));
    let minority = get(&mut client, "minority");
    if definitely_not_applied {
        assert_eq!(minority, None, "a write reported as failed was applied");
    } else {
        assert!(
            matches!(minority.as_deref(), None | Some("m")),
            "{minority:?}"
        );
    }
    println!(
        "minority write ended with {:?}; after recovery the key holds {minority:?}",
        lines[0]
    );
    cluster.restart(followers[1]);
    wait_caught_up(&cluster);
    cluster.assert_all_alive();
}

#[test]
fn a_paused_leader_serves_no_stale_read_and_rejoins_as_follower() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader();
    let mut writer = cluster.client(PATIENT);
    // The writer gives up on a paused node quickly.
    writer.set_attempt_timeout(Duration::from_millis(300));
    put(&mut writer, "k", "v0");
    // Whether the old leader sees its new term or a reader's request first
    // after SIGCONT is a race, so several rounds with several readers each.
    for round in 1..=5 {
        let old = format!("v{}", round - 1);
        let new = format!("v{round}");

        // Readers whose next request goes to the current leader and waits
        // for it however long it is paused (retried if a spurious election
        // moves the leader meanwhile).
        let (leader, readers) = wait_for("readers aimed at the leader", RECOVERY_DEADLINE, || {
            let leader = cluster.wait_leader();
            let readers: Vec<Client> = (0..8)
                .map(|_| {
                    let mut c = cluster.client(PATIENT);
                    c.set_attempt_timeout(PATIENT);
                    assert_eq!(get(&mut c, "k"), Some(old.clone()));
                    c
                })
                .collect();
            readers
                .iter()
                .all(|c| c.leader_hint() == Some(leader))
                .then_some((leader, readers))
        });

        cluster.pause(leader);
        // The others elect a new leader, which accepts a write.
        put(&mut writer, "k", &new);
        let new_leader = writer.leader_hint().expect("a leader");
        assert_ne!(new_leader, leader);

        // Reads that begin now, after the write completed, go to the paused
        // node first and sit in its socket until it runs again.
        let handles: Vec<_> = readers
            .into_iter()
            .map(|mut c| thread::spawn(move || c.get(b"k").map(|v| v.map(String::from_utf8))))
            .collect();
        thread::sleep(Duration::from_millis(300));
        cluster.resume(leader);
        for h in handles {
            match h.join().expect("reader thread") {
                Ok(Some(Ok(v))) => assert_eq!(
                    v, new,
                    "round {round}: a read that began after the write of {new} returned {v}"
                ),
                other => panic!("round {round}: read after the write: {other:?}"),
            }
        }

        // The old leader learns the new term and follows.
        let ids = cluster.ids();
        wait_for("the old leader to follow", RECOVERY_DEADLINE, || {
            let statuses = cluster.statuses(&ids);
            let old = statuses[leader as usize - 1].1.clone()?;
            let top = statuses
                .iter()
                .filter_map(|(_, s)| s.as_ref().map(|s| s.term))
                .max()?;
            (old.role == "follower" && old.term == top).then_some(())
        });
        wait_caught_up(&cluster);
    }
    cluster.assert_all_alive();
}

#[test]
fn a_paused_follower_does_not_stall_the_leader_and_catches_up() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    let follower = cluster.ids().into_iter().find(|&i| i != leader).unwrap();
    let mut client = cluster.client(PATIENT);
    put(&mut client, "start", "1");
    cluster.pause(follower);
    // Far more than socket buffers hold: 24 MiB of values while the
    // follower cannot read anything.
    let value = "x".repeat(96 * 1024);
    for i in 0..256 {
        put(
            &mut client,
            &format!("big{}", i % 64),
            &format!("{i}{value}"),
        );
    }
    cluster.resume(follower);
    put(&mut client, "end", "1");
    wait_caught_up(&cluster);
    // With the old leader gone, the resumed follower and the third node
    // must have everything.
    let leader = cluster.wait_leader();
    cluster.kill(leader);
    for i in 192..256 {
        let got = get(&mut client, &format!("big{}", i % 64)).expect("present");
        assert!(got.starts_with(&i.to_string()) && got.ends_with(&value));
    }
    assert_eq!(get(&mut client, "end").as_deref(), Some("1"));
    cluster.restart(leader);
    cluster.assert_all_alive();
}

/// A deterministic stream of junk bytes.
fn junk(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `bytes` on a new connection to `addr`, then reads until the node
/// closes or a short while passes.
fn send_junk(addr: std::net::SocketAddr, bytes: &[u8]) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        panic!("cannot connect to {addr}");
    };
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

#[test]
fn garbage_on_either_port_leaves_the_nodes_serving() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader();
    let mut client = cluster.client(PATIENT);
    put(&mut client, "k", "before");

    let http = b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.0\r\n\r\n".to_vec();
    let mut huge_header = frame::MAGIC.to_vec();
    huge_header.push(frame::VERSION);
    huge_header.extend_from_slice(&u32::MAX.to_le_bytes());
    let mut bad_body = frame::MAGIC.to_vec();
    bad_body.push(frame::VERSION);
    bad_body.extend_from_slice(&64u32.to_le_bytes());
    bad_body.extend_from_slice(&junk(7, 64));
    let mut bad_version = frame::MAGIC.to_vec();
    bad_version.extend_from_slice(&[99, 1, 0, 0, 0, 0]);
    let half_header = frame::MAGIC[..3].to_vec();
    let payloads = [
        junk(1, 10),
        junk(2, 4096),
        junk(3, 200_000),
        http,
        huge_header,
        bad_body,
        bad_version,
        half_header,
        Vec::new(),
    ];
    // Idle connections held open meanwhile.
    let mut idle = Vec::new();
    for id in cluster.ids() {
        for addr in [cluster.raft_addr(id), cluster.client_addr(id)] {
            idle.push(TcpStream::connect(addr).expect("idle connection"));
            for p in &payloads {
                send_junk(addr, p);
            }
        }
    }
    cluster.assert_all_alive();
    // Every node still answers on its client port, and the cluster still
    // replicates over the Raft ports.
    for (id, s) in cluster.statuses(&cluster.ids()) {
        assert!(s.is_some(), "node {id} does not answer after the garbage");
    }
    put(&mut client, "k", "after");
    assert_eq!(get(&mut client, "k").as_deref(), Some("after"));
    wait_caught_up(&cluster);
    // And across a leader change, which needs the peer connections.
    let leader = cluster.wait_leader();
    cluster.kill(leader);
    put(&mut client, "k", "after failover");
    assert_eq!(get(&mut client, "k").as_deref(), Some("after failover"));
    drop(idle);
    cluster.restart(leader);
    wait_caught_up(&cluster);
    cluster.assert_all_alive();
    for id in cluster.ids() {
        assert!(
            !cluster.stderr(id).contains("panicked"),
            "node {id}: {}",
            cluster.stderr(id)
        );
    }
}

/// A malformed snapshot from a peer (here forged, claiming to be another
/// member, after a valid handshake) is refused and the node goes on; it
/// used to stop the node, so three frames stopped a cluster.
#[test]
fn a_malformed_snapshot_from_a_peer_is_refused_and_the_node_serves_on() {
    use kvapp_c::network::tcp::{PROTOCOL, cluster_identity};
    use kvapp_c::raft::Message;
    let mut cluster = Cluster::start(3);
    cluster.wait_leader();
    let mut client = cluster.client(PATIENT);
    put(&mut client, "k", "before");

    let addrs: Vec<_> = cluster
        .ids()
        .iter()
        .map(|&id| cluster.raft_addr(id))
        .collect();
    let identity = cluster_identity(&addrs);
    let mut frames = Vec::new();
    for id in cluster.ids() {
        let claimed = id % 3 + 1;
        let snapshot = Message::InstallSnapshot {
            term: 1_000 + id,
            leader: claimed,
            index: 1_000_000,
            index_term: 1,
            offset: 0,
            data: b"this is not a snapshot".to_vec(),
            done: true,
        };
        let mut bytes = common::hello_frame(PROTOCOL, &identity, claimed);
        frame::write_frame(&mut bytes, &frame::encode(&snapshot)).unwrap();
        let mut s = TcpStream::connect(cluster.raft_addr(id)).expect("connect");
        s.write_all(&bytes).expect("send");
        frames.push(s);
    }
    wait_for(
        "the forged snapshots to be refused",
        RECOVERY_DEADLINE,
        || {
            cluster
                .ids()
                .iter()
                .all(|&id| cluster.stderr(id).contains("refusing a snapshot"))
                .then_some(())
        },
    );
    cluster.assert_all_alive();
    put(&mut client, "k", "after");
    assert_eq!(get(&mut client, "k").as_deref(), Some("after"));
    wait_caught_up(&cluster);
    drop(frames);
}

#[test]
fn a_second_server_on_a_data_directory_in_use_fails_at_once() {
    let cluster = Cluster::start(1);
    cluster.wait_leader();
    let mut client = cluster.client(PATIENT);
    put(&mut client, "k", "v");
    // Other ports, same data directory.
    let base = common::free_ports(1);
    let addr = format!("127.0.0.1:{base}");
    let dir = cluster.data_dir(1);
    let out = run(
        &[
            "server",
            "--node-id",
            "1",
            "--bind",
            &addr,
            "--cluster",
            &addr,
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        None,
        Duration::from_secs(30),
    );
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(out.stderr.contains("in use"), "{out:?}");
    assert!(out.stderr.contains(dir.to_str().unwrap()), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    // The first server is untouched.
    assert_eq!(get(&mut client, "k").as_deref(), Some("v"));
}

#[test]
fn sigterm_and_sigint_stop_servers_cleanly_with_acknowledged_writes_kept() {
    let mut cluster = Cluster::start(3);
    cluster.wait_leader();
    let mut client = cluster.client(PATIENT);
    let mut expected = BTreeMap::new();
    for i in 0..50 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        put(&mut client, &k, &v);
        expected.insert(k, Some(v));
    }
    for (id, sig) in [(1, libc::SIGTERM), (2, libc::SIGINT), (3, libc::SIGTERM)] {
        let status = cluster.stop_with(id, sig, Duration::from_secs(30));
        assert!(
            status.success(),
            "node {id} ended with {status}: {}",
            cluster.stderr(id)
        );
        assert!(!cluster.stderr(id).contains("panicked"));
    }
    for id in cluster.ids() {
        cluster.restart(id);
    }
    let mut client = cluster.client(PATIENT);
    assert_store(&mut client, &expected);
    cluster.assert_all_alive();
}

/// The prefix index in a log's start file (read raw: the node holds its
/// directory), or 0 if there is none.
fn discarded_through(dir: &std::path::Path) -> u64 {
    std::fs::read(dir.join("raft.log.start"))
        .ok()
        .filter(|b| b.len() >= 24)
        .map_or(0, |b| u64::from_le_bytes(b[16..24].try_into().unwrap()))
}

#[test]
fn a_follower_killed_while_the_others_compact_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    let mut client = cluster.client(PATIENT);
    put(&mut client, "before", "the follower died");
    let behind = cluster.ids().into_iter().find(|&i| i != leader).unwrap();
    let other = cluster
        .ids()
        .into_iter()
        .find(|&i| i != leader && i != behind)
        .unwrap();
    cluster.kill(behind);

    // 70 000 puts over 20 keys: past the 50 000 entries after which a node
    // flushes its store, then discards its log behind the flush (keeping
    // 10 000 entries), far beyond where the killed follower stopped.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvapp-c"))
        .args(["bench", "--cluster", &cluster.list(), "--workload", "put"])
        .args(["--clients", "32", "--requests", "70000", "--keys", "20"])
        .args(["--warmup", "0", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leader = cluster.wait_leader();
    let leader_dir = cluster.data_dir(leader);
    wait_for("the leader to compact its log", RECOVERY_DEADLINE, || {
        (discarded_through(&leader_dir) > 1_000).then_some(())
    });

    cluster.restart(behind);
    wait_caught_up(&cluster);
    // Its log starts where the leader's snapshot ended: the entries before
    // were never sent to it one by one (the leader no longer had them).
    assert!(
        discarded_through(&cluster.data_dir(behind)) > 1_000,
        "the follower's log does not start after a snapshot"
    );
    // The follower now holds the store and a log that continues the
    // leader's: with the other follower gone, writes commit only with its
    // acknowledgements.
    cluster.kill(other);
    let mut expected = BTreeMap::new();
    expected.insert("before".to_string(), Some("the follower died".to_string()));
    for i in 0..20 {
        let (k, v) = (format!("after-{i}"), format!("v{i}"));
        put(&mut client, &k, &v);
        expected.insert(k, Some(v));
    }
    assert_store(&mut client, &expected);
    // And it keeps them across its own restart.
    cluster.kill(behind);
    cluster.restart(behind);
    assert_store(&mut client, &expected);
    cluster.assert_all_alive();
}

/// Holds `per_port` connections open to each of `addrs` that never send a
/// byte, reopening those the node closes, until `stop` is set. Counts the
/// connections it opened in `opened`.
fn silent_flood(
    addrs: Vec<std::net::SocketAddr>,
    per_port: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    thread::spawn(move || {
        let mut held: Vec<Vec<TcpStream>> = addrs.iter().map(|_| Vec::new()).collect();
        while !stop.load(Ordering::SeqCst) {
            for (addr, conns) in addrs.iter().zip(&mut held) {
                // A node that closed a connection (or died) shows end of
                // input or an error; a silent open one would block.
                conns.retain(|s| {
                    matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
                while conns.len() < per_port {
                    let Ok(s) = TcpStream::connect_timeout(addr, Duration::from_secs(1)) else {
                        break;
                    };
                    s.set_nonblocking(true).unwrap();
                    conns.push(s);
                    opened.fetch_add(1, Ordering::SeqCst);
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Silent connections held open to every Raft port, more of them than a
/// node serves while it waits for their handshakes (64), do not lock the
/// members out: a restarted follower rejoins, and once the leader is
/// killed the others elect a new one and serve writes.
#[test]
fn silent_connections_on_the_raft_ports_do_not_lock_members_out() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const PER_PORT: usize = 100;
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader();
    let mut client = cluster.client(PATIENT);
    put(&mut client, "k", "before the flood");

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let addrs = cluster
        .ids()
        .iter()
        .map(|&id| cluster.raft_addr(id))
        .collect();
    let flood = silent_flood(addrs, PER_PORT, stop.clone(), opened.clone());
    wait_for("the flood to fill every port", RECOVERY_DEADLINE, || {
        (opened.load(Ordering::SeqCst) >= 3 * PER_PORT).then_some(())
    });

    // A restarted follower: the leader's connection to it, and its own
    // to the others, must get through.
    let follower = cluster.ids().into_iter().find(|&i| i != leader).unwrap();
    cluster.kill(follower);
    cluster.restart(follower);
    put(&mut client, "k", "follower restarted");
    wait_caught_up(&cluster);

    // The followers have had no reason to talk to each other: the election
    // needs new connections between them.
    let leader = cluster.wait_leader();
    cluster.kill(leader);
    put(&mut client, "k", "leader killed");
    assert_eq!(get(&mut client, "k").as_deref(), Some("leader killed"));
    cluster.restart(leader);
    wait_caught_up(&cluster);

    stop.store(true, Ordering::SeqCst);
    flood.join().unwrap();
    assert_eq!(get(&mut client, "k").as_deref(), Some("leader killed"));
    cluster.assert_all_alive();
}
