//! `kvapp-c bench` run as a user runs it: the real binary against a local
//! cluster it starts itself, and its flag checking. No speed is asserted.

/// A short run of the real binary
/// against a local cluster it starts itself, checking the report's shape,
/// the read-back and the clean-up (no speed is asserted).
#[test]
fn a_short_local_run_reports_verifies_and_cleans_up() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvapp-c"))
        .args([
            "bench",
            "--local",
            "--workload",
            "mixed",
            "--clients",
            "4",
            "--requests",
            "200",
            "--warmup",
            "0",
            "--keys",
            "50",
            "--verify",
            "--json",
            // The non-default scheduling class, so both are run somewhere.
            "--client-sched",
            "batch",
        ])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.starts_with("{\"workload\":\"mixed\",\"clients\":4,\"ops\":"),
        "{last}"
    );
    for key in [
        "\"ops_per_s\":",
        "\"p50_us\":",
        "\"p90_us\":",
        "\"p99_us\":",
        "\"p999_us\":",
        "\"max_us\":",
        "\"errors\":",
    ] {
        assert!(last.contains(key), "{key} missing from {last}");
    }
    assert!(last.contains("\"verified_keys\":50,\"lost\":0,"), "{last}");
    // Where the CPU went: the three local nodes and the bench process were
    // read from /proc. (The machine's share needs a clock tick to pass in
    // the window, which so short a run may not see.)
    if cfg!(target_os = "linux") {
        for key in ["\"cpu_nodes_cores\":", "\"cpu_bench_cores\":"] {
            assert!(last.contains(key), "{key} missing from {last}");
        }
        let cpu_line = stdout.lines().find(|l| l.starts_with("cpu: nodes "));
        assert!(
            cpu_line.is_some_and(|l| l.matches(" + ").count() == 2),
            "{stdout}"
        );
    }
    assert!(last.ends_with('}'));
    // Every measured request either succeeded or counted as an error.
    let field = |name: &str| -> u64 {
        let start = last.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        last[start..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("ops") + field("errors"), 200, "{last}");
    assert!(stdout.contains("verify: all 50 key(s) hold"), "{stdout}");
    // The cluster's data directory is gone.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn the_binary_rejects_bad_flags_with_a_message() {
    let run = |flags: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kvapp-c"))
            .arg("bench")
            .args(flags)
            .output()
            .unwrap()
    };
    let out = run(&["--clients", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clients"));
    let out = run(&["--duration", "1", "--requests", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["--client-sched", "idle"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--client-sched"));
}

/// `--floor-only` as a user runs it before deploying: the disk, loopback
/// and the ceiling of round trips for `--clients` threads, in text and
/// JSON, with no cluster (no speed is asserted).
#[test]
fn the_floor_alone_reports_the_disk_loopback_and_the_ceiling() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvapp-c"))
        .args(["bench", "--floor-only", "--clients", "3", "--json"])
        .arg("--floor-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("floor: fdatasync of a small append in"),
        "{stdout}"
    );
    assert!(
        stdout.contains("floor: loopback TCP round trip"),
        "{stdout}"
    );
    assert!(
        stdout.contains("floor: ceiling of round trips for 3 client threads"),
        "{stdout}"
    );
    let last = stdout.lines().last().unwrap_or("");
    assert!(last.starts_with('{') && last.ends_with('}'), "{last}");
    assert!(last.contains("\"ceiling_clients\":3,"), "{last}");
    let rate = last
        .split("\"ceiling_round_trips_per_s\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|n| n.parse::<f64>().ok());
    assert!(rate.is_some_and(|r| r > 0.0), "{last}");
    // Its scratch files are gone.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
