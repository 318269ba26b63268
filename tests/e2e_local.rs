//! `kvapp-c local`: it starts real `kvapp-c server` child processes, serves
//! through them, stops them all on SIGTERM or SIGINT, and reuses its data on
//! the next run; with piped input it runs the script as the client shell.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    BIN, CLI_DEADLINE, ChildGuard, RECOVERY_DEADLINE, can_bind_all, children_of, cmdline,
    group_members, run, signal, wait_exit, wait_for,
};

const NODES: u16 = 3;

/// The `--cluster` list `local` prints for base port `base`.
fn list(base: u16) -> String {
    (0..NODES)
        .map(|i| format!("127.0.0.1:{}", base + i))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `kvapp-c local` in its own process group with stdout and stderr
/// in files under `logs`; `stdin` is piped when given.
fn start_local(base: u16, data: &Path, logs: &Path, extra: &[&str], piped: bool) -> ChildGuard {
    let out = File::create(logs.join("local.out")).unwrap();
    let err = File::create(logs.join("local.err")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["local", "--nodes", &NODES.to_string()])
        .args(["--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(data)
        .args(["--timing-mode", "fast"])
        .args(extra)
        .stdin(if piped { Stdio::piped() } else { Stdio::null() })
        .stdout(out)
        .stderr(err);
    ChildGuard::spawn_group(&mut cmd)
}

fn read(logs: &Path, name: &str) -> String {
    std::fs::read_to_string(logs.join(name)).unwrap_or_default()
}

/// Waits until `local` printed the client command line, and returns it.
fn wait_ready(local: &mut ChildGuard, logs: &Path) -> String {
    wait_for(
        "local to print the client command",
        RECOVERY_DEADLINE,
        || {
            if let Ok(Some(status)) = local.child.try_wait() {
                panic!(
                    "local exited early with {status}:\n{}\n{}",
                    read(logs, "local.out"),
                    read(logs, "local.err")
                );
            }
            let out = read(logs, "local.out");
            let mut lines = out.lines().skip_while(|l| !l.starts_with("connect with:"));
            lines.next()?;
            lines.next().map(|l| l.trim().to_string())
        },
    )
}

/// The `kvapp-c server` children of `local`.
fn server_children(local: &ChildGuard) -> Vec<u32> {
    let children = children_of(local.pid());
    for &c in &children {
        let cmd = cmdline(c);
        assert!(
            cmd.starts_with(BIN) && cmd.contains(" server "),
            "unexpected child {c}: {cmd}"
        );
    }
    children
}

/// Sends `sig` to `local` alone and checks it stops every node and exits 0.
fn stop_local(mut local: ChildGuard, sig: libc::c_int, base: u16, logs: &Path) {
    let pid = local.pid();
    signal(pid, sig);
    let status = wait_exit(&mut local.child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("local did not exit after signal {sig}"));
    assert!(
        status.success(),
        "local ended with {status}:\n{}",
        read(logs, "local.err")
    );
    assert!(read(logs, "local.out").contains("stopping the nodes"));
    // No process of its group is left, and the ports are free again.
    wait_for("local's nodes to be gone", RECOVERY_DEADLINE, || {
        group_members(pid).is_empty().then_some(())
    });
    wait_for("the ports to be free", RECOVERY_DEADLINE, || {
        can_bind_all(base, NODES).then_some(())
    });
}

#[test]
fn local_runs_real_servers_and_stops_them_on_sigterm_and_sigint() {
    let base = common::free_ports(NODES);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let cluster = list(base);
    let client = |args: &[&str]| {
        let mut full = vec!["client", "--cluster", cluster.as_str()];
        full.extend_from_slice(args);
        run(&full, None, CLI_DEADLINE)
    };

    // First run: stopped with SIGTERM.
    let mut local = start_local(base, &data, dir.path(), &["--no-repl"], false);
    let line = wait_ready(&mut local, dir.path());
    assert_eq!(line, format!("kvapp-c client --cluster {cluster}"));
    let out = read(dir.path(), "local.out");
    assert!(out.contains("leader is node"), "{out}");
    let children = server_children(&local);
    assert_eq!(children.len(), NODES as usize, "{children:?}");
    for i in 1..=NODES {
        assert!(
            data.join(format!("node-{i}")).is_dir(),
            "no data directory for node {i}"
        );
    }
    let put = client(&["put", "greeting", "hello from local"]);
    assert_eq!((put.lines(), put.code), (vec!["OK"], Some(0)), "{put:?}");
    let status = client(&["status"]);
    assert_eq!(status.lines().len(), NODES as usize, "{status:?}");
    assert_eq!(
        status
            .lines()
            .iter()
            .filter(|l| l.contains(" leader "))
            .count(),
        1,
        "{status:?}"
    );
    stop_local(local, libc::SIGTERM, base, dir.path());
    for c in children {
        assert!(
            !Path::new(&format!("/proc/{c}")).exists() || !cmdline(c).contains(" server "),
            "node process {c} outlived local"
        );
    }

    // Second run on the same data: the write is still there. Stopped with
    // SIGINT.
    let mut local = start_local(base, &data, dir.path(), &["--no-repl"], false);
    wait_ready(&mut local, dir.path());
    assert_eq!(server_children(&local).len(), NODES as usize);
    let get = client(&["get", "greeting"]);
    assert_eq!(
        (get.lines(), get.code),
        (vec!["hello from local"], Some(0)),
        "{get:?}"
    );
    stop_local(local, libc::SIGINT, base, dir.path());
}

#[test]
fn local_with_piped_input_runs_the_script_then_stops_the_nodes() {
    use std::io::Write;

    let base = common::free_ports(NODES);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let mut local = start_local(base, &data, dir.path(), &[], true);
    let mut stdin = local.child.stdin.take().expect("piped stdin");
    stdin
        .write_all(b"put a first value\nget a\ncas a wrong x\nput b 2\nlist\nget missing\n")
        .unwrap();
    drop(stdin);
    let pid = local.pid();
    let status = wait_exit(&mut local.child, Duration::from_secs(90))
        .unwrap_or_else(|| panic!("local did not finish its script"));
    let out = read(dir.path(), "local.out");
    assert!(
        status.success(),
        "{status}: {out}\n{}",
        read(dir.path(), "local.err")
    );
    // After the banner and the client command line come exactly the
    // script's results, then the stop.
    let lines: Vec<&str> = out.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("kvapp-c client --cluster"))
        .unwrap_or_else(|| panic!("no client line in:\n{out}"));
    assert_eq!(
        &lines[start + 1..],
        &[
            "OK",
            "first value",
            "FAILED first value",
            "OK",
            "a",
            "b",
            "(nil)",
            "stopping the nodes"
        ],
        "{out}"
    );
    wait_for("local's nodes to be gone", RECOVERY_DEADLINE, || {
        group_members(pid).is_empty().then_some(())
    });
}

#[test]
fn a_second_local_on_the_same_data_fails_cleanly_and_leaves_the_first_running() {
    let base = common::free_ports(NODES);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let first_logs = dir.path().join("first");
    let second_logs = dir.path().join("second");
    std::fs::create_dir_all(&first_logs).unwrap();
    std::fs::create_dir_all(&second_logs).unwrap();
    let mut first = start_local(base, &data, &first_logs, &["--no-repl"], false);
    wait_ready(&mut first, &first_logs);

    // Other ports, same data directories: its nodes cannot lock them.
    let other = common::free_ports(NODES);
    let mut second = start_local(other, &data, &second_logs, &["--no-repl"], false);
    let pid = second.pid();
    let status = wait_exit(&mut second.child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the second local did not give up"));
    let err = read(&second_logs, "local.err");
    assert!(!status.success(), "{status}: {err}");
    assert!(err.contains("exited at startup"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    wait_for(
        "the second local's nodes to be gone",
        RECOVERY_DEADLINE,
        || group_members(pid).is_empty().then_some(()),
    );
    // The log of the node local names (in the shared data directory) says
    // why; the others may have been stopped before they got that far.
    let named = (1..=NODES)
        .find(|i| err.contains(&format!("node {i} exited at startup")))
        .unwrap_or_else(|| panic!("no node named in: {err}"));
    let node_log =
        std::fs::read_to_string(data.join(format!("node-{named}.log"))).unwrap_or_default();
    assert!(node_log.contains("in use"), "{node_log}");

    // The first cluster is unharmed.
    assert_eq!(server_children(&first).len(), NODES as usize);
    let cluster = list(base);
    let put = run(
        &["client", "--cluster", &cluster, "put", "still", "here"],
        None,
        CLI_DEADLINE,
    );
    assert_eq!((put.lines(), put.code), (vec!["OK"], Some(0)), "{put:?}");
    stop_local(first, libc::SIGTERM, base, &first_logs);
}

#[test]
fn local_in_shell_mode_stops_its_nodes_on_sigterm_and_sigint() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let base = common::free_ports(NODES);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("cluster");
        // The shell reads from a pipe that stays open: only the signal can
        // end it.
        let mut local = start_local(base, &data, dir.path(), &[], true);
        let stdin = local.child.stdin.take().expect("piped stdin");
        wait_ready(&mut local, dir.path());
        assert_eq!(server_children(&local).len(), NODES as usize);
        stop_local(local, sig, base, dir.path());
        drop(stdin);
    }
}

#[test]
fn local_on_a_terminal_shows_the_shell_and_a_signal_restores_the_terminal() {
    use std::io::Write;

    let base = common::free_ports(NODES);
    let dir = tempfile::tempdir().unwrap();
    let (mut master, slave) = common::open_pty();
    let termios = |fd: &std::os::fd::OwnedFd| {
        use std::os::fd::AsRawFd;
        // SAFETY: tcgetattr fills the termios it is given.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(fd.as_raw_fd(), &mut t), 0);
            (t.c_iflag, t.c_oflag, t.c_lflag)
        }
    };
    let before = termios(&slave);
    let mut cmd = Command::new(BIN);
    cmd.args(["local", "--nodes", &NODES.to_string()])
        .args(["--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("cluster"))
        .env("TERM", "xterm")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    let mut local = ChildGuard::spawn_group(&mut cmd);
    drop(cmd);
    let output = common::read_pty(master.try_clone().unwrap());
    master.write_all(b"put t terminal value\r").unwrap();
    // The shell took the line and answered: the key is there.
    let cluster = list(base);
    wait_for("the shell's put", RECOVERY_DEADLINE, || {
        let out = run(
            &[
                "client",
                "--cluster",
                &cluster,
                "--timeout",
                "1000",
                "get",
                "t",
            ],
            None,
            CLI_DEADLINE,
        );
        (out.lines() == ["terminal value"]).then_some(())
    });
    let pid = local.pid();
    signal(pid, libc::SIGTERM);
    let status = wait_exit(&mut local.child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("local did not exit on SIGTERM"));
    assert!(status.success(), "{status}");
    wait_for("local's nodes to be gone", RECOVERY_DEADLINE, || {
        group_members(pid).is_empty().then_some(())
    });
    // The line editor's raw mode is undone.
    assert_eq!(termios(&slave), before, "terminal settings not restored");
    drop(slave);
    drop(master);
    let text = output.join().unwrap();
    assert!(text.contains("kvapp> "), "{text:?}");
    assert!(text.contains("stopping the nodes"), "{text:?}");
}

/// When one of its nodes dies, `local --no-repl` says which, stops the
/// others and exits with status 1.
#[test]
fn local_reports_a_node_that_died_and_stops_the_rest() {
    let base = common::free_ports(NODES);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let mut local = start_local(base, &data, dir.path(), &["--no-repl"], false);
    wait_ready(&mut local, dir.path());
    let children = server_children(&local);
    assert_eq!(children.len(), NODES as usize, "{children:?}");
    let victim = children[1];
    let victim_id = cmdline(victim)
        .split_whitespace()
        .skip_while(|w| *w != "--node-id")
        .nth(1)
        .expect("the node's --node-id")
        .to_string();
    signal(victim, libc::SIGKILL);
    let pid = local.pid();
    let status =
        wait_exit(&mut local.child, Duration::from_secs(60)).expect("local exits when a node dies");
    assert_eq!(status.code(), Some(1), "{}", read(dir.path(), "local.err"));
    let err = read(dir.path(), "local.err");
    assert!(err.contains(&format!("node {victim_id} exited")), "{err}");
    wait_for("local's other nodes to be gone", RECOVERY_DEADLINE, || {
        group_members(pid).is_empty().then_some(())
    });
}
