//! The command-line contract against a real 3-node cluster: every client
//! command's exact output and exit status, piped scripts, and the startup
//! errors of the server.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, CLI_DEADLINE, ChildGuard, Cluster, run, signal, wait_exit, wait_for};

/// Runs a one-shot command and checks its exact output and exit status.
#[track_caller]
fn expect(cluster: &Cluster, args: &[&str], lines: &[&str], code: i32) {
    let out = cluster.cli(args, None);
    assert_eq!(
        (out.lines(), out.code),
        (lines.to_vec(), Some(code)),
        "kvapp-c client {args:?}\nstderr: {}",
        out.stderr
    );
}

/// Runs a one-shot command that must fail with a usage error.
#[track_caller]
fn expect_usage(cluster: &Cluster, args: &[&str]) {
    let out = cluster.cli(args, None);
    let lines = out.lines();
    assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
    assert_eq!(lines.len(), 1, "{args:?}: {out:?}");
    assert!(lines[0].starts_with("ERROR usage: "), "{args:?}: {out:?}");
}

#[test]
fn every_command_prints_what_the_contract_says() {
    let cluster = Cluster::start(3);
    cluster.wait_leader();

    // get / put / delete.
    expect(&cluster, &["get", "k"], &["(nil)"], 0);
    expect(&cluster, &["put", "k", "v1"], &["OK"], 0);
    expect(&cluster, &["get", "k"], &["v1"], 0);
    // A value is the rest of the line, inner spaces included.
    expect(&cluster, &["put", "spaced", "a  b c"], &["OK"], 0);
    expect(&cluster, &["get", "spaced"], &["a  b c"], 0);
    expect(&cluster, &["put", "words", "hello", "world"], &["OK"], 0);
    expect(&cluster, &["get", "words"], &["hello world"], 0);
    expect(&cluster, &["delete", "words"], &["OK"], 0);
    expect(&cluster, &["get", "words"], &["(nil)"], 0);
    expect(&cluster, &["delete", "never-there"], &["OK"], 0);
    expect(&cluster, &["put", "ключ", "значение ✓"], &["OK"], 0);
    expect(&cluster, &["get", "ключ"], &["значение ✓"], 0);
    expect(&cluster, &["delete", "ключ"], &["OK"], 0);

    // cas: success, mismatch (with the current value), and (nil).
    expect(&cluster, &["cas", "k", "v1", "v2"], &["OK"], 0);
    expect(&cluster, &["get", "k"], &["v2"], 0);
    expect(&cluster, &["cas", "k", "v1", "v3"], &["FAILED v2"], 0);
    expect(&cluster, &["get", "k"], &["v2"], 0);
    expect(&cluster, &["cas", "absent", "x", "y"], &["FAILED (nil)"], 0);
    expect(&cluster, &["get", "absent"], &["(nil)"], 0);
    expect(
        &cluster,
        &["cas", "fresh", "(nil)", "new value"],
        &["OK"],
        0,
    );
    expect(&cluster, &["get", "fresh"], &["new value"], 0);
    expect(
        &cluster,
        &["cas", "fresh", "(nil)", "other"],
        &["FAILED new value"],
        0,
    );

    // list, with and without a prefix, sorted.
    for key in ["b2", "a2", "b1", "a1"] {
        expect(&cluster, &["put", key, "x"], &["OK"], 0);
    }
    expect(&cluster, &["list", "a"], &["a1", "a2"], 0);
    expect(&cluster, &["list", "b"], &["b1", "b2"], 0);
    expect(&cluster, &["list", "zzz"], &[], 0);
    expect(
        &cluster,
        &["list"],
        &["a1", "a2", "b1", "b2", "fresh", "k", "spaced"],
        0,
    );

    // status: one line per node, exactly one leader.
    let out = cluster.cli(&["status"], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines = out.lines();
    assert_eq!(lines.len(), 3, "{out:?}");
    let mut leaders = 0;
    for (i, line) in lines.iter().enumerate() {
        let id = i as u64 + 1;
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), 6, "{line}");
        assert_eq!(words[0], id.to_string(), "{line}");
        assert_eq!(words[1], cluster.raft_addr(id).to_string(), "{line}");
        assert!(
            ["leader", "follower", "candidate"].contains(&words[2]),
            "{line}"
        );
        leaders += usize::from(words[2] == "leader");
        for (word, name) in words[3..].iter().zip(["term", "commit", "applied"]) {
            let value = word
                .strip_prefix(&format!("{name}="))
                .unwrap_or_else(|| panic!("{line}: no {name}="));
            let n: u64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            assert!(n > 0, "{line}: {name} is 0 after writes");
        }
    }
    assert_eq!(leaders, 1, "{out:?}");

    // help names every command.
    let out = cluster.cli(&["help"], None);
    assert_eq!(out.code, Some(0), "{out:?}");
    for cmd in [
        "get", "put", "delete", "cas", "list", "status", "help", "quit",
    ] {
        assert!(
            out.lines().iter().any(|l| l.trim_start().starts_with(cmd)),
            "help does not list {cmd}: {out:?}"
        );
    }

    // quit / exit print nothing.
    expect(&cluster, &["quit"], &[], 0);
    expect(&cluster, &["exit"], &[], 0);

    // Usage errors: exit 2, one ERROR usage line, nothing sent.
    for bad in [
        &["get"][..],
        &["get", "a", "b"],
        &["put", "onlykey"],
        &["delete"],
        &["cas", "k", "v2"],
        &["list", "a", "b"],
        &["frobnicate", "x"],
        &["status", "now"],
    ] {
        expect_usage(&cluster, bad);
    }
    expect(&cluster, &["get", "onlykey"], &["(nil)"], 0);
    expect(&cluster, &["get", "k"], &["v2"], 0);
}

#[test]
fn a_piped_script_prints_one_line_per_command_in_order() {
    let cluster = Cluster::start(3);
    cluster.wait_leader();

    // A script of many commands and the exact output a correct store gives.
    let mut script = String::new();
    let mut expected: Vec<String> = Vec::new();
    let mut line = |cmd: String, out: &[&str]| {
        script.push_str(&cmd);
        script.push('\n');
        expected.extend(out.iter().map(|s| s.to_string()));
    };
    for i in 0..60 {
        let key = format!("key{i:03}");
        line(format!("get {key}"), &["(nil)"]);
        line(format!("put {key} value {i}"), &["OK"]);
        line(format!("get {key}"), &[&format!("value {i}")]);
        if i % 3 == 0 {
            line(
                format!("cas {key} wrong x"),
                &[&format!("FAILED value {i}")],
            );
            line(format!("cas {key} x"), &["ERROR usage: *"]);
            line(format!("delete {key}"), &["OK"]);
            line(format!("cas {key} (nil) back"), &["OK"]);
            line(format!("get {key}"), &["back"]);
        }
        if i % 10 == 0 {
            line(String::new(), &[]);
            line(format!("frobnicate {i}"), &["ERROR usage: *"]);
        }
    }
    line(
        "list key00".into(),
        &[
            "key000", "key001", "key002", "key003", "key004", "key005", "key006", "key007",
            "key008", "key009",
        ],
    );
    // Carriage returns from a file written elsewhere are not part of a value.
    line("put crlf windows line\r".into(), &["OK"]);
    line("get crlf".into(), &["windows line"]);
    line("quit".into(), &[]);
    // Nothing after quit runs.
    line("put after-quit x".into(), &[]);

    let out = cluster.cli(&[], Some(&script));
    assert_eq!(out.code, Some(0), "{out:?}");
    let got = out.lines();
    assert_eq!(
        got.len(),
        expected.len(),
        "one line per command, no prompt or banner:\n{}",
        out.stdout
    );
    for (n, (g, e)) in got.iter().zip(&expected).enumerate() {
        match e.strip_suffix('*') {
            Some(prefix) => assert!(g.starts_with(prefix), "line {n}: {g:?}, expected {e:?}"),
            None => assert_eq!(g, e, "line {n}"),
        }
    }
    assert!(!out.stdout.contains("kvapp>"), "{}", out.stdout);
    let check = cluster.cli(&["get", "after-quit"], None);
    assert_eq!(check.lines(), vec!["(nil)"], "{check:?}");
}

#[test]
fn a_client_without_a_cluster_fails_cleanly() {
    // Free ports with no server behind them.
    let base = common::free_ports(2);
    let list = format!("127.0.0.1:{base},127.0.0.1:{}", base + 1);
    let out = put_k_v(&list);
    assert_eq!(out.code, Some(1), "{out:?}");
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].starts_with("ERROR failed: "), "{out:?}");
    let out = run(
        &["client", "--cluster", &list, "--timeout", "500", "get", "k"],
        None,
        CLI_DEADLINE,
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.lines()[0].starts_with("ERROR failed: "), "{out:?}");
    // status still prints a line per node.
    let out = run(
        &["client", "--cluster", &list, "--timeout", "500", "status"],
        None,
        CLI_DEADLINE,
    );
    assert_eq!(
        out.lines(),
        vec![
            format!("1 127.0.0.1:{base} unreachable"),
            format!("2 127.0.0.1:{} unreachable", base + 1),
        ],
        "{out:?}"
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    // A usage error needs no cluster and exits 2.
    let out = run(
        &["client", "--cluster", &list, "put", "k"],
        None,
        CLI_DEADLINE,
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    // A cluster list that does not parse is a clear error, not a panic.
    let out = run(
        &["client", "--cluster", "not an address", "get", "k"],
        None,
        CLI_DEADLINE,
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("not an address"), "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

#[test]
fn server_startup_errors_are_clear() {
    let base = common::free_ports(2);
    let a = format!("127.0.0.1:{base}");
    let b = format!("127.0.0.1:{}", base + 1);
    let list = format!("{a},{b}");
    let gap = format!("{a},,{b}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let data = data.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        // An empty entry would shift the node ids after it.
        (
            vec!["server", "--node-id", "2", "--bind", &b, "--cluster", &gap],
            "empty entry",
        ),
        // Port 0 would make the node listen on ports nobody knows.
        (
            vec![
                "server",
                "--bind",
                "127.0.0.1:0",
                "--cluster",
                "127.0.0.1:0",
            ],
            "port 0",
        ),
        (vec!["server", "--bind", "127.0.0.1:0"], "port 0"),
        // Clients find a node's client port by the flags too.
        (
            vec![
                "server",
                "--node-id",
                "1",
                "--bind",
                &a,
                "--cluster",
                &list,
                "--client-bind",
                "127.0.0.1:0",
            ],
            "--client-bind 127.0.0.1:0 has port 0",
        ),
        // --bind is not node 1's entry.
        (
            vec!["server", "--node-id", "1", "--bind", &b, "--cluster", &list],
            "does not match",
        ),
        // Node id outside the cluster.
        (
            vec!["server", "--node-id", "3", "--bind", &a, "--cluster", &list],
            "outside the cluster",
        ),
        // Election timeout not above the heartbeat.
        (
            vec![
                "server",
                "--node-id",
                "1",
                "--bind",
                &a,
                "--cluster",
                &list,
                "--heartbeat-interval",
                "50",
                "--election-timeout-min",
                "40",
            ],
            "40",
        ),
        // min >= max.
        (
            vec![
                "server",
                "--node-id",
                "1",
                "--bind",
                &a,
                "--cluster",
                &list,
                "--election-timeout-min",
                "400",
                "--election-timeout-max",
                "300",
            ],
            "400",
        ),
    ];
    for (mut args, needle) in cases {
        args.extend(["--data-dir", data]);
        let out = run(&args, None, Duration::from_secs(30));
        assert!(
            out.code.is_some_and(|c| c != 0),
            "{args:?} should fail: {out:?}"
        );
        assert!(out.stderr.contains(needle), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{args:?}: {out:?}");
    }
    // A port held by another program: the node says which one.
    for taken in [base, base + 1000] {
        let _holder = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
        let args = [
            "server",
            "--node-id",
            "1",
            "--bind",
            &a,
            "--cluster",
            &list,
            "--data-dir",
            data,
        ];
        let out = run(&args, None, Duration::from_secs(30));
        assert!(out.code.is_some_and(|c| c != 0), "port {taken}: {out:?}");
        assert!(
            out.stderr.contains(&format!("127.0.0.1:{taken}")),
            "port {taken}: {out:?}"
        );
        assert!(!out.stderr.contains("panicked"), "{out:?}");
    }
    // The data directory now belongs to node 1 (the runs above claimed it):
    // node 2 may not start on it.
    let args = [
        "server",
        "--node-id",
        "2",
        "--bind",
        &b,
        "--cluster",
        &list,
        "--data-dir",
        data,
    ];
    let out = run(&args, None, Duration::from_secs(30));
    assert!(out.code.is_some_and(|c| c != 0), "{out:?}");
    assert!(
        out.stderr.contains("belongs to node 1"),
        "node 2 on node 1's data: {out:?}"
    );
}

/// `kvapp-c client --cluster CLUSTER --timeout 500 put k v`.
fn put_k_v(cluster: &str) -> common::Output {
    run(
        &[
            "client",
            "--cluster",
            cluster,
            "--timeout",
            "500",
            "put",
            "k",
            "v",
        ],
        None,
        CLI_DEADLINE,
    )
}

/// A free address for a one-node cluster and a directory for its data.
fn single_node_spot() -> (String, tempfile::TempDir) {
    let base = common::free_ports(1);
    (format!("127.0.0.1:{base}"), tempfile::tempdir().unwrap())
}

/// Stops a server with SIGTERM and checks it exits with status 0.
fn stop_cleanly(mut server: ChildGuard) {
    signal(server.pid(), libc::SIGTERM);
    let status = wait_exit(&mut server.child, Duration::from_secs(30)).expect("server stops");
    assert!(status.success(), "{status}");
}

#[test]
fn the_seed_spellings_without_a_subcommand_still_work() {
    let (addr, dir) = single_node_spot();
    // `kvapp-c --node-id 1 --bind ... --cluster ...` runs a server.
    let server = ChildGuard::spawn(
        Command::new(BIN)
            .args(["--node-id", "1", "--bind", &addr, "--cluster", &addr])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    // `kvapp-c --cluster ...` is the client; piped, it prints only results.
    let out = wait_for(
        "the legacy server to serve",
        common::RECOVERY_DEADLINE,
        || {
            let out = run(
                &["--cluster", &addr, "--timeout", "1000"],
                Some("put k legacy\nget k\n"),
                CLI_DEADLINE,
            );
            (out.code == Some(0) && out.lines().first() == Some(&"OK")).then_some(out)
        },
    );
    assert_eq!(out.lines(), vec!["OK", "legacy"], "{out:?}");
    stop_cleanly(server);
}

#[test]
fn a_node_whose_term_or_identity_file_was_deleted_refuses_to_start() {
    let (addr, dir) = single_node_spot();
    let data = dir.path().join("data");
    let server_args = [
        "server",
        "--node-id",
        "1",
        "--bind",
        &addr,
        "--cluster",
        &addr,
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let server = ChildGuard::spawn(
        Command::new(BIN)
            .args(server_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for(
        "the server to take a write",
        common::RECOVERY_DEADLINE,
        || (put_k_v(&addr).code == Some(0)).then_some(()),
    );
    stop_cleanly(server);

    for name in ["raft.state", "node.id"] {
        let path = data.join(name);
        let saved = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let out = run(&server_args, None, Duration::from_secs(30));
        assert!(out.code.is_some_and(|c| c != 0), "without {name}: {out:?}");
        assert!(
            out.stderr.contains(&format!("{name} (")) && out.stderr.contains("is missing"),
            "without {name}: {out:?}"
        );
        assert!(!out.stderr.contains("panicked"), "{out:?}");
        assert!(!path.exists(), "{name} was written again");
        std::fs::write(&path, saved).unwrap();
    }
}

#[test]
fn values_up_to_the_size_limit_go_through_and_larger_ones_are_refused() {
    let cluster = Cluster::start(3);
    cluster.wait_leader();
    let max = kvapp_c::kv::MAX_VALUE_BYTES;
    let big_a = "a".repeat(max);
    let big_b = "b".repeat(max);
    let key = "k".repeat(kvapp_c::kv::MAX_KEY_BYTES);
    // A piped script: command-line arguments could not hold these.
    let script = format!(
        "put {key} {big_a}\nget {key}\ncas {key} {big_a} {big_b}\nget {key}\n\
         cas {key} {big_a} x\nput k2 {big_a}b\nget k2\nput {key}k v\n"
    );
    let out = cluster.cli(&["--timeout", "20000"], Some(&script));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines = out.lines();
    assert_eq!(
        lines.len(),
        8,
        "{:?}",
        lines
            .iter()
            .map(|l| &l[..l.len().min(80)])
            .collect::<Vec<_>>()
    );
    let short = |l: &str| l[..l.len().min(80)].to_string();
    assert_eq!(lines[0], "OK");
    assert!(lines[1] == big_a, "get returned {}", short(lines[1]));
    assert_eq!(short(lines[2]), "OK", "a cas with two values at the limit");
    assert!(lines[3] == big_b, "get returned {}", short(lines[3]));
    assert!(lines[4] == format!("FAILED {big_b}"), "{}", short(lines[4]));
    assert!(lines[5].starts_with("ERROR usage: "), "{}", short(lines[5]));
    assert_eq!(lines[6], "(nil)");
    assert!(lines[7].starts_with("ERROR usage: "), "{}", short(lines[7]));
}

#[test]
fn on_a_terminal_the_client_shows_a_banner_and_a_prompt() {
    use std::io::Write;

    let cluster = Cluster::start(1);
    cluster.wait_leader();
    let (mut master, slave) = common::open_pty();
    let mut cmd = Command::new(BIN);
    cmd.args(["client", "--cluster", &cluster.list()])
        // A plain terminal: prompt and line input, no escape sequences.
        .env("TERM", "dumb")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let mut client = ChildGuard::spawn(&mut cmd);
    drop(cmd);
    let output = common::read_pty(master.try_clone().unwrap());
    master
        .write_all(b"put tty on a terminal\nget tty\nquit\n")
        .unwrap();
    let status = wait_exit(&mut client.child, CLI_DEADLINE).expect("the client leaves on quit");
    assert!(status.success(), "{status}");
    drop(master);
    let text = output.join().unwrap();
    // The terminal echoes the typed lines whenever they arrive, before or
    // after the banner; without the echo, the banner comes first, then each
    // result after a prompt.
    let shown = text
        .split_once("kvapp-c client: cluster ")
        .unwrap_or_else(|| panic!("no banner: {text:?}"))
        .1;
    let without_echo = ["put tty on a terminal\n", "get tty\n", "quit\n"]
        .iter()
        .fold(shown.to_string(), |s, echo| s.replacen(echo, "", 1));
    assert!(
        without_echo.contains("\nkvapp> OK\nkvapp> on a terminal\nkvapp> "),
        "{text:?}"
    );
}

#[test]
fn a_server_starts_on_a_new_relative_data_directory() {
    let (addr, dir) = single_node_spot();
    let err_path = dir.path().join("server.err");
    let mut server = ChildGuard::spawn(
        Command::new(BIN)
            .current_dir(dir.path())
            .args(["server", "--bind", &addr, "--data-dir", "mydata"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    );
    let out = wait_for("the server to serve", common::RECOVERY_DEADLINE, || {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "the server exited with {status}: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        let out = put_k_v(&addr);
        (out.code == Some(0)).then_some(out)
    });
    assert_eq!(out.lines(), vec!["OK"]);
    assert!(dir.path().join("mydata").is_dir());
    stop_cleanly(server);
}
