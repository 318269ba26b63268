//! The parts of `kvapp-c bench` that need no cluster: flag checking, key
//! and value generation, the operation mix, percentiles, the text and JSON
//! reports, the `--verify` rule, and the floor measurements' bookkeeping.
//! Nothing here asserts a speed.

use std::time::Duration;

use clap::Parser;

use kvapp_c::Error;
use kvapp_c::bench::cpu::MachineShare;
use kvapp_c::bench::report::{
    Ceiling, Floor, Percentiles, Summary, json_number, json_string, micros, new_histogram, record,
};
use kvapp_c::bench::verify::{History, Problem, PutOutcome, PutRecord};
use kvapp_c::bench::workload::{OpKind, Rng, TAG_LEN, Workload, key_name, parse_tag, value_for};
use kvapp_c::bench::{BenchArgs, Plan, Stop, Target, parse_cluster};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn args(flags: &[&str]) -> Result<BenchArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied())).map(|c| c.bench)
}

fn plan(flags: &[&str]) -> kvapp_c::Result<Plan> {
    Plan::from_args(&args(flags).expect("flags parse"))
}

fn config_error(flags: &[&str]) -> String {
    match plan(flags) {
        Err(Error::Config(msg)) => msg,
        other => panic!("{flags:?}: expected a configuration error, got {other:?}"),
    }
}

#[test]
fn defaults_follow_the_command_line_contract() {
    let p = plan(&[]).unwrap();
    assert_eq!(
        p.target,
        Target::Cluster(vec!["127.0.0.1:7001".parse().unwrap()])
    );
    assert_eq!(p.workload, Workload::Put);
    assert_eq!(p.clients, 64);
    assert_eq!(p.stop, Stop::After(Duration::from_secs(10)));
    assert_eq!(p.warmup, Duration::from_secs(2));
    assert_eq!(p.keys, 100_000);
    assert_eq!(p.value_size, 256);
    assert_eq!(p.timeout, Duration::from_secs(5));
    assert!(!p.json && !p.verify && !p.floor);
}

#[test]
fn flags_are_carried_into_the_plan() {
    let p = plan(&[
        "--cluster",
        "127.0.0.1:9001,127.0.0.1:9002",
        "--workload",
        "mixed",
        "--clients",
        "3",
        "--requests",
        "500",
        "--warmup",
        "0",
        "--keys",
        "10",
        "--value-size",
        "32",
        "--json",
        "--verify",
        "--floor",
        "--floor-dir",
        "/tmp",
    ])
    .unwrap();
    assert_eq!(
        p.target,
        Target::Cluster(parse_cluster("127.0.0.1:9001,127.0.0.1:9002").unwrap())
    );
    assert_eq!(p.workload, Workload::Mixed);
    assert_eq!(p.clients, 3);
    assert_eq!(p.stop, Stop::Requests(500));
    assert_eq!(p.warmup, Duration::ZERO);
    assert_eq!((p.keys, p.value_size), (10, 32));
    assert!(p.json && p.verify && p.floor);
    assert_eq!(p.floor_dir.as_deref(), Some(std::path::Path::new("/tmp")));

    let p = plan(&["--duration", "0.5", "--workload", "get"]).unwrap();
    assert_eq!(p.stop, Stop::After(Duration::from_millis(500)));
    assert_eq!(p.workload, Workload::Get);

    let p = plan(&["--local"]).unwrap();
    assert_eq!(
        p.target,
        Target::Local {
            nodes: 3,
            base_port: None,
            parent_dir: None
        }
    );
    let p = plan(&[
        "--local",
        "--nodes",
        "5",
        "--base-port",
        "20001",
        "--data-dir",
        "/x",
    ])
    .unwrap();
    assert_eq!(
        p.target,
        Target::Local {
            nodes: 5,
            base_port: Some(20001),
            parent_dir: Some("/x".into())
        }
    );

    let p = plan(&["--floor-only"]).unwrap();
    assert_eq!(p.target, Target::None);
    assert!(p.floor);
}

#[test]
fn bad_values_are_clear_errors() {
    assert!(config_error(&["--clients", "0"]).contains("--clients"));
    assert!(config_error(&["--clients", "10001"]).contains("--clients"));
    assert!(config_error(&["--keys", "0"]).contains("--keys"));
    assert!(config_error(&["--value-size", "1048577"]).contains("--value-size"));
    assert!(config_error(&["--verify", "--value-size", "8"]).contains("--verify"));
    for d in ["0", "-1", "NaN", "inf"] {
        let flag = format!("--duration={d}");
        assert!(config_error(&[&flag]).contains("--duration"), "{d}");
    }
    assert!(config_error(&["--warmup=-0.5"]).contains("--warmup"));
    assert!(config_error(&["--requests", "0"]).contains("--requests"));
    assert!(config_error(&["--timeout", "0"]).contains("--timeout"));
    assert!(config_error(&["--local", "--nodes", "0"]).contains("--nodes"));
    assert!(config_error(&["--cluster", ","]).contains("no address"));
    for list in ["127.0.0.1:1,,127.0.0.1:3", "127.0.0.1:1,", ",127.0.0.1:1"] {
        assert!(
            config_error(&["--cluster", list]).contains("empty entry"),
            "{list}"
        );
    }
    assert!(config_error(&["--cluster", "127.0.0.1:1,127.0.0.1:1"]).contains("twice"));
    assert!(config_error(&["--cluster", "127.0.0.1:1,127.0.0.1:0"]).contains("port 0"));
    assert!(config_error(&["--cluster", "not-an-address"]).contains("not-an-address"));
    // A verified run may use exactly the tag's length.
    assert!(plan(&["--verify", "--value-size", &TAG_LEN.to_string()]).is_ok());
}

#[test]
fn contradictory_or_unknown_flags_are_usage_errors() {
    for flags in [
        &["--duration", "1", "--requests", "5"][..],
        &["--cluster", "127.0.0.1:7001", "--local"],
        &["--nodes", "3"],
        &["--base-port", "7001"],
        &["--data-dir", "/tmp"],
        &["--floor-only", "--verify"],
        &["--floor-only", "--local"],
        &["--workload", "scan"],
        &["--clients", "many"],
    ] {
        assert!(args(flags).is_err(), "{flags:?} should be rejected");
    }
    let direct = BenchArgs {
        duration: Some(1.0),
        requests: Some(5),
        ..args(&[]).unwrap()
    };
    assert!(matches!(Plan::from_args(&direct), Err(Error::Config(_))));
    let direct = BenchArgs {
        workload: "scan".into(),
        ..args(&[]).unwrap()
    };
    assert!(matches!(Plan::from_args(&direct), Err(Error::Config(_))));
}

#[test]
fn keys_are_named_key_and_eight_digits() {
    assert_eq!(key_name(0), "key-00000000");
    assert_eq!(key_name(42), "key-00000042");
    assert_eq!(key_name(99_999_999), "key-99999999");
    assert_eq!(key_name(123_456_789), "key-123456789");
}

#[test]
fn workloads_parse_and_print_by_name() {
    for w in [Workload::Put, Workload::Get, Workload::Mixed] {
        assert_eq!(w.as_str().parse::<Workload>().unwrap(), w);
        assert_eq!(w.to_string(), w.as_str());
    }
    assert!("PUT".parse::<Workload>().is_err());
    assert!(!Workload::Put.needs_preload());
    assert!(Workload::Get.needs_preload() && Workload::Mixed.needs_preload());
}

#[test]
fn the_generator_is_seeded_and_stays_in_range() {
    let mut a = Rng::new(7);
    let mut b = Rng::new(7);
    let mut c = Rng::new(8);
    let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
    let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
    let zs: Vec<u64> = (0..100).map(|_| c.next_u64()).collect();
    assert_eq!(xs, ys);
    assert_ne!(xs, zs);

    let mut r = Rng::new(1);
    let mut buckets = [0u32; 10];
    for _ in 0..100_000 {
        let x = r.below(10);
        assert!(x < 10);
        buckets[x as usize] += 1;
    }
    // Uniform: each bucket near 10000 (a fixed seed, so no flakiness).
    for (i, n) in buckets.iter().enumerate() {
        assert!((9_000..11_000).contains(n), "bucket {i}: {n}");
    }
    assert_eq!(Rng::new(3).below(1), 0);
}

#[test]
fn the_mixed_workload_is_one_put_in_ten() {
    let mut r = Rng::new(99);
    let n = 100_000;
    let puts = (0..n)
        .filter(|_| Workload::Mixed.next_op(&mut r) == OpKind::Put)
        .count();
    assert!((9_000..11_000).contains(&puts), "{puts} puts in {n}");
    assert!((0..1000).all(|_| Workload::Put.next_op(&mut r) == OpKind::Put));
    assert!((0..1000).all(|_| Workload::Get.next_op(&mut r) == OpKind::Get));
}

#[test]
fn values_have_the_requested_size_and_name_their_writer() {
    for size in [TAG_LEN, 64, 256, 4096] {
        let v = value_for(12, 345, size);
        assert_eq!(v.len(), size);
        assert_eq!(parse_tag(&v), Some((12, 345)));
    }
    let v = value_for(999_999, 999_999_999_999, 256);
    assert_eq!(parse_tag(&v), Some((999_999, 999_999_999_999)));
    assert_ne!(value_for(1, 2, 256), value_for(1, 3, 256));
    assert_ne!(value_for(1, 2, 256), value_for(2, 2, 256));
    // Too short to hold the tag: the requested size wins, the tag is lost.
    assert_eq!(value_for(1, 2, 0).len(), 0);
    assert_eq!(value_for(1, 2, 10).len(), 10);
    assert_eq!(parse_tag(&value_for(1, 2, 10)), None);
    for junk in [
        &b""[..],
        b"hello world, this is not a tag",
        b"c00001xs000000000002|...",
    ] {
        assert_eq!(parse_tag(junk), None, "{:?}", String::from_utf8_lossy(junk));
    }
}

#[test]
fn percentiles_come_from_the_histogram() {
    let mut h = new_histogram();
    assert_eq!(Percentiles::of(&h), Percentiles::default());
    for us in 1..=1000u64 {
        record(&mut h, Duration::from_micros(us));
    }
    let p = Percentiles::of(&h);
    assert_eq!(p.count, 1000);
    assert_eq!(p.p50_us, 500);
    assert_eq!(p.p90_us, 900);
    assert_eq!(p.p99_us, 990);
    assert_eq!(p.p999_us, 999);
    assert_eq!(p.max_us, 1000);
    // Out-of-range latencies are clamped, not dropped.
    record(&mut h, Duration::ZERO);
    record(&mut h, Duration::from_secs(100_000));
    assert_eq!(Percentiles::of(&h).count, 1002);
}

fn summary() -> Summary {
    Summary {
        workload: Workload::Mixed,
        clients: 16,
        ops: 25_000,
        elapsed: Duration::from_secs(5),
        latency: Percentiles {
            count: 25_000,
            p50_us: 1200,
            p90_us: 2500,
            p99_us: 4100,
            p999_us: 9000,
            max_us: 15_321,
        },
        errors: 2,
    }
}

#[test]
fn the_json_line_has_the_contract_keys_in_order() {
    let s = summary();
    assert_eq!(s.ops_per_s(), 5000.0);
    assert_eq!(
        s.to_json(&[]),
        "{\"workload\":\"mixed\",\"clients\":16,\"ops\":25000,\"ops_per_s\":5000.0,\
         \"p50_us\":1200,\"p90_us\":2500,\"p99_us\":4100,\"p999_us\":9000,\
         \"max_us\":15321,\"errors\":2}"
    );
    let with_extra = s.to_json(&[("lost", "0".into()), ("note", json_string("a\"b"))]);
    assert!(
        with_extra.ends_with(",\"errors\":2,\"lost\":0,\"note\":\"a\\\"b\"}"),
        "{with_extra}"
    );
    assert!(!with_extra.contains('\n'));

    let empty = Summary {
        ops: 0,
        elapsed: Duration::ZERO,
        ..summary()
    };
    assert_eq!(empty.ops_per_s(), 0.0);
    assert!(empty.to_json(&[]).contains("\"ops_per_s\":0.0,"));
}

#[test]
fn json_strings_and_numbers_are_valid_json() {
    assert_eq!(json_string("put"), "\"put\"");
    assert_eq!(json_string("a\\b\n\t\u{1}"), "\"a\\\\b\\n\\t\\u0001\"");
    assert_eq!(json_number(1234.56), "1234.6");
    assert_eq!(json_number(f64::NAN), "0");
    assert_eq!(json_number(f64::INFINITY), "0");
}

#[test]
fn the_text_report_names_every_figure() {
    let text = summary().render_text();
    for part in [
        "workload mixed",
        "clients 16",
        "ops 25000",
        "5000 ops/s",
        "p50 1.20 ms",
        "p90 2.50 ms",
        "p99 4.10 ms",
        "p99.9 9.00 ms",
        "max 15.32 ms",
        "errors      2",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    assert_eq!(micros(850), "850 us");
    assert_eq!(micros(12_345), "12.35 ms");
    assert_eq!(micros(2_010_000), "2.01 s");
}

#[test]
fn the_floor_adds_one_sync_and_two_round_trips() {
    let f = Floor {
        sync_dir: "/data".into(),
        fdatasync: Percentiles {
            count: 100,
            p50_us: 2000,
            p99_us: 5000,
            max_us: 9000,
            ..Default::default()
        },
        shared_writers: 3,
        shared_fdatasync: Percentiles {
            count: 300,
            p50_us: 3500,
            p99_us: 12000,
            max_us: 20000,
            ..Default::default()
        },
        loopback_rtt: Percentiles {
            count: 1000,
            p50_us: 30,
            p99_us: 80,
            max_us: 400,
            ..Default::default()
        },
        ceiling: Ok(Ceiling {
            clients: 64,
            round_trips: 150_000,
            seconds: 2.0,
            machine: Some(MachineShare {
                cpus: 2,
                busy_seconds: 3.0,
                busy: 0.75,
                softirq: 0.25,
                iowait: 0.0,
                idle: 0.25,
            }),
        }),
    };
    assert_eq!(f.write_floor_us(), 2060);
    assert_eq!(f.shared_write_floor_us(), 3560);
    let text = f.render_text();
    assert!(text.contains("/data") && text.contains("2.00 ms") && text.contains("2.06 ms"));
    assert!(
        text.contains("3 writers at once") && text.contains("3.50 ms") && text.contains("3.56 ms"),
        "{text}"
    );
    let fields = f.json_fields();
    assert!(fields.contains(&("fdatasync_p50_us", "2000".to_string())));
    assert!(fields.contains(&("rtt_p50_us", "30".to_string())));
    assert!(fields.contains(&("write_floor_us", "2060".to_string())));
    assert!(fields.contains(&("shared_writers", "3".to_string())));
    assert!(fields.contains(&("fdatasync_shared_p50_us", "3500".to_string())));
    assert!(fields.contains(&("fdatasync_shared_p99_us", "12000".to_string())));
    assert!(fields.contains(&("write_floor_shared_us", "3560".to_string())));

    // 150 000 round trips in 2 s on 3 s of CPU: 75 000/s, 20 us each.
    assert!(
        text.contains("64 client threads") && text.contains("75000/s, 20.0 us of CPU each"),
        "{text}"
    );
    assert!(fields.contains(&("ceiling_clients", "64".to_string())));
    assert!(fields.contains(&("ceiling_round_trips_per_s", "75000".to_string())));
    assert!(fields.contains(&("ceiling_cpu_us_per_round_trip", "20.0".to_string())));
    let ceiling = f.ceiling.clone().unwrap();
    assert!((ceiling.share_of(30_000.0) - 0.4).abs() < 1e-9);
    let share = ceiling.render_share(30_000.0);
    assert!(share.contains("is 40% of the 75000"), "{share}");

    // Without the machine's counters there is no CPU figure, and a window
    // of no length has no rate.
    let unmeasured = Ceiling {
        clients: 1,
        round_trips: 0,
        seconds: 0.0,
        machine: None,
    };
    assert_eq!(unmeasured.per_second(), 0.0);
    assert_eq!(unmeasured.cpu_us_per_round_trip(), None);
    assert_eq!(unmeasured.share_of(10.0), 0.0);

    // A ceiling that failed says why, and leaves its fields out.
    let failed = Floor {
        ceiling: Err("too many open files".into()),
        ..f
    };
    let text = failed.render_text();
    assert!(
        text.contains("ceiling of round trips not measured: too many open files"),
        "{text}"
    );
    let fields = failed.json_fields();
    assert!(
        fields.iter().all(|(k, _)| !k.starts_with("ceiling")),
        "{fields:?}"
    );
    assert!(fields.contains(&("write_floor_us", "2060".to_string())));
}

fn put(key: u64, client: u32, seq: u64, start_us: u64, outcome: PutOutcome) -> PutRecord {
    PutRecord {
        key,
        client,
        seq,
        start_us,
        outcome,
    }
}

fn acked(end_us: u64) -> PutOutcome {
    PutOutcome::Acked { end_us }
}

#[test]
fn verify_accepts_the_last_acknowledged_value_or_a_concurrent_one() {
    let h = History::new([
        put(1, 0, 0, 0, acked(10)),
        put(1, 0, 1, 20, acked(30)),
        // Overlaps client 0's second put: either may be last.
        put(1, 1, 0, 25, acked(40)),
        // Unknown outcome, started last: may or may not have taken effect.
        put(1, 2, 0, 50, PutOutcome::Unknown),
        put(2, 0, 2, 5, acked(15)),
    ]);
    assert_eq!(h.keys_to_check(), vec![1, 2]);
    assert_eq!(h.check(1, Some(&value_for(0, 1, 64))), Ok(()));
    assert_eq!(h.check(1, Some(&value_for(1, 0, 64))), Ok(()));
    assert_eq!(h.check(1, Some(&value_for(2, 0, 64))), Ok(()));
    assert_eq!(h.check(2, Some(&value_for(0, 2, 64))), Ok(()));
}

#[test]
fn verify_reports_lost_stale_and_foreign_values() {
    let h = History::new([
        put(1, 0, 0, 0, acked(10)),
        put(1, 1, 0, 20, acked(30)),
        put(1, 2, 0, 25, PutOutcome::Failed),
        put(2, 0, 1, 40, acked(50)),
    ]);
    assert_eq!(h.check(1, None), Err(Problem::Missing { key: 1 }));
    assert_eq!(
        h.check(1, Some(&value_for(0, 0, 64))),
        Err(Problem::Stale {
            key: 1,
            client: 0,
            seq: 0,
            newer_client: 1,
            newer_seq: 0
        })
    );
    assert_eq!(
        h.check(1, Some(&value_for(2, 0, 64))),
        Err(Problem::FromFailedPut {
            key: 1,
            client: 2,
            seq: 0
        })
    );
    // A tag that no put wrote, one from another key's put, and no tag.
    assert_eq!(
        h.check(1, Some(&value_for(7, 7, 64))),
        Err(Problem::Foreign { key: 1 })
    );
    assert_eq!(
        h.check(1, Some(&value_for(0, 1, 64))),
        Err(Problem::Foreign { key: 1 })
    );
    assert_eq!(h.check(1, Some(b"plain")), Err(Problem::Foreign { key: 1 }));
    for p in [
        Problem::Missing { key: 1 },
        Problem::Stale {
            key: 1,
            client: 0,
            seq: 0,
            newer_client: 1,
            newer_seq: 0,
        },
    ] {
        assert!(p.to_string().starts_with("key-00000001: "), "{p}");
    }
}

#[test]
fn verify_promises_nothing_for_keys_without_an_acknowledged_put() {
    let h = History::new([
        put(3, 0, 0, 0, PutOutcome::Unknown),
        put(4, 0, 1, 0, PutOutcome::Failed),
    ]);
    assert!(h.keys_to_check().is_empty());
    assert_eq!(h.check(3, None), Ok(()));
    assert_eq!(h.check(4, None), Ok(()));
    assert_eq!(h.check(5, None), Ok(()));
}

#[test]
fn the_floor_measurements_take_samples_and_clean_up() {
    use kvapp_c::bench::floor::{
        FloorBudget, measure_fdatasync, measure_loopback_rtt, measure_round_trip_ceiling,
        measure_shared_fdatasync,
    };
    let dir = tempfile::tempdir().unwrap();
    let budget = FloorBudget {
        samples: 20,
        time: Duration::from_secs(5),
    };
    let sync = measure_fdatasync(dir.path(), budget).unwrap();
    assert!((10..=20).contains(&sync.count), "{sync:?}");
    assert!(sync.p50_us <= sync.p99_us && sync.p99_us <= sync.max_us);
    // The scratch file is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // Three writers, 7 samples each: every sync of every writer counts.
    let shared = measure_shared_fdatasync(dir.path(), 3, budget).unwrap();
    assert_eq!(shared.count, 21, "{shared:?}");
    assert!(shared.p50_us <= shared.p99_us && shared.p99_us <= shared.max_us);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let rtt = measure_loopback_rtt(budget).unwrap();
    assert!((11..=20).contains(&rtt.count), "{rtt:?}");
    assert!(rtt.p50_us <= rtt.max_us);

    // Eight client threads for 300 ms: every thread connects, and round
    // trips are counted over the window.
    let short = FloorBudget {
        samples: 20,
        time: Duration::from_millis(300),
    };
    let ceiling = measure_round_trip_ceiling(8, short).unwrap();
    assert_eq!(ceiling.clients, 8);
    assert!(ceiling.round_trips > 0, "{ceiling:?}");
    assert!(ceiling.seconds >= 0.3, "{ceiling:?}");
    assert!(ceiling.per_second() > 0.0);
    // Zero clients means one.
    assert_eq!(measure_round_trip_ceiling(0, short).unwrap().clients, 1);

    // Interrupted before it starts: nothing is measured and nothing is left.
    let interrupted = std::sync::atomic::AtomicBool::new(true);
    let err = kvapp_c::bench::floor::measure(dir.path(), 3, 4, budget, &interrupted)
        .unwrap_err()
        .to_string();
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Interrupted during the ceiling's window, which would otherwise last
    // a minute: the whole floor says so instead of returning figures.
    let long = FloorBudget {
        samples: 20,
        time: Duration::from_secs(60),
    };
    let interrupted = std::sync::atomic::AtomicBool::new(false);
    let started = std::time::Instant::now();
    let result = std::thread::scope(|scope| {
        let measuring =
            scope.spawn(|| kvapp_c::bench::floor::measure(dir.path(), 1, 2, long, &interrupted));
        // The disk and round-trip parts take 20 samples each, nearly always
        // done by then; the ceiling would run for the budget's minute.
        std::thread::sleep(Duration::from_millis(500));
        interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
        measuring.join().unwrap()
    });
    let err = result.unwrap_err().to_string();
    assert!(err.contains("interrupted"), "{err}");
    // A deadline, not a speed: the ceiling left its minute early.
    assert!(started.elapsed() < Duration::from_secs(45), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let missing = dir.path().join("no-such-dir");
    let err = measure_fdatasync(&missing, budget).unwrap_err().to_string();
    assert!(err.contains("no-such-dir"), "{err}");
    let err = measure_shared_fdatasync(&missing, 3, budget)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-dir"), "{err}");
}

#[test]
fn cpu_counters_parse_from_proc_texts() {
    use kvapp_c::bench::cpu::{MachineTicks, parse_pid_stat, parse_proc_stat};
    // A command name with spaces and parentheses; utime 1500, stime 250.
    let stat = "4242 (kvapp-c (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 1500 250 0 0 20 0 \
                9 0 77 123456 789 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
    assert_eq!(parse_pid_stat(stat), Some(1750));
    assert_eq!(parse_pid_stat("4242 (cut short) S 1 2"), None);
    assert_eq!(parse_pid_stat("no parenthesis"), None);

    let proc_stat = "cpu  100 5 50 1000 40 3 20 2 0 0\n\
                     cpu0 50 2 25 500 20 1 10 1 0 0\n\
                     cpu1 50 3 25 500 20 2 10 1 0 0\n\
                     intr 12345\nctxt 999\n";
    assert_eq!(
        parse_proc_stat(proc_stat),
        Some(MachineTicks {
            total: 100 + 5 + 50 + 1000 + 40 + 3 + 20 + 2,
            idle: 1000,
            iowait: 40,
            softirq: 20,
            cpus: 2,
        })
    );
    assert_eq!(parse_proc_stat("cpu  1 2 3\n"), None);
    assert_eq!(parse_proc_stat("intr 1\n"), None);
}

#[test]
fn cpu_usage_is_cores_and_shares_of_the_window() {
    use kvapp_c::bench::cpu::{CpuSample, CpuUsage, MachineTicks, usage_between};
    let t0 = std::time::Instant::now();
    let start = CpuSample {
        at: t0,
        nodes: vec![Some(1000), Some(500), None],
        bench: Some(200),
        machine: Some(MachineTicks {
            total: 10_000,
            idle: 4_000,
            iowait: 1_000,
            softirq: 500,
            cpus: 2,
        }),
    };
    // Two seconds later, at 100 ticks a second: 400 ticks of two CPUs.
    let end = CpuSample {
        at: t0 + Duration::from_secs(2),
        nodes: vec![Some(1150), Some(540), Some(10)],
        bench: Some(300),
        machine: Some(MachineTicks {
            total: 10_400,
            idle: 4_040,
            iowait: 1_020,
            softirq: 560,
            cpus: 2,
        }),
    };
    let usage = usage_between(&start, &end, 100);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(usage.nodes[0].unwrap(), 0.75), "{usage:?}");
    assert!(close(usage.nodes[1].unwrap(), 0.20), "{usage:?}");
    assert_eq!(usage.nodes[2], None);
    assert!(close(usage.bench.unwrap(), 0.5), "{usage:?}");
    let m = usage.machine.unwrap();
    assert_eq!(m.cpus, 2);
    assert!(close(m.idle, 0.10) && close(m.iowait, 0.05) && close(m.busy, 0.85));
    assert!(close(m.softirq, 0.15));
    // 340 busy ticks = 3.4 s of CPU over 1 000 operations.
    assert!(close(m.busy_seconds, 3.4), "{m:?}");
    assert!(close(usage.machine_us_per_op(1_000).unwrap(), 3_400.0));
    assert_eq!(usage.machine_us_per_op(0), None);
    assert!(!usage.is_unknown());

    let text = usage.render_text(1_000);
    assert!(
        text.starts_with(
            "cpu: nodes 0.75 + 0.20 + ? cores, bench 0.50 cores; machine (2 CPUs) busy 85%"
        ),
        "{text}"
    );
    assert!(text.contains("3400.0 us of CPU per op"), "{text}");
    assert!(
        !text.contains("rough"),
        "a 2 s window is long enough: {text}"
    );
    let fields = usage.json_fields(1_000);
    // A node whose counters were unreadable leaves the nodes' sum out.
    assert!(!fields.iter().any(|(k, _)| *k == "cpu_nodes_cores"));
    assert!(fields.contains(&("cpu_bench_cores", "0.50".to_string())));
    assert!(fields.contains(&("cpu_machine_busy", "0.85".to_string())));
    assert!(fields.contains(&("cpu_us_per_op", "3400.00".to_string())));

    // Against a remote cluster (no local nodes) the line says whose CPUs
    // it measured.
    let remote = CpuUsage {
        nodes: Vec::new(),
        ..usage.clone()
    };
    let text = remote.render_text(1_000);
    assert!(
        text.starts_with("cpu: bench 0.50 cores; this host, not the cluster's (2 CPUs) busy 85%"),
        "{text}"
    );

    // A short window (a run of a few requests) is flagged as rough.
    let short = CpuSample {
        at: t0 + Duration::from_millis(40),
        ..end.clone()
    };
    let text = usage_between(&start, &short, 100).render_text(1_000);
    assert!(
        text.trim_end()
            .ends_with("(rough: over 40 ms, counted in the kernel's ticks)"),
        "{text}"
    );

    // Counters that went backwards (a pid reused) say nothing.
    let backwards = CpuSample {
        nodes: vec![Some(10), Some(10), Some(10)],
        ..end.clone()
    };
    let usage = usage_between(&start, &backwards, 100);
    assert_eq!(usage.nodes[0], None);
}
