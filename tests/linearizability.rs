//! Unit tests of the linearizability checker used by the end-to-end tests:
//! it accepts histories a linearizable store can produce and rejects the
//! classic anomalies (stale reads, lost updates, double compare-and-swaps,
//! values from nowhere).

#[path = "common/linearizability.rs"]
mod linearizability;

use linearizability::{
    CheckError, KvInput, KvOutput, Model, Operation, Register, check, check_with_budget,
};
use proptest::prelude::*;

type Op = Operation<KvInput, KvOutput>;

fn op(client: usize, input: KvInput, output: Option<KvOutput>, call: u64, ret: u64) -> Op {
    Operation {
        client,
        input,
        output,
        call,
        ret,
    }
}

fn put(c: usize, v: &str, call: u64, ret: u64) -> Op {
    op(c, KvInput::Put(v.into()), Some(KvOutput::Done), call, ret)
}

fn put_unknown(c: usize, v: &str, call: u64) -> Op {
    op(c, KvInput::Put(v.into()), None, call, 0)
}

fn del(c: usize, call: u64, ret: u64) -> Op {
    op(c, KvInput::Delete, Some(KvOutput::Done), call, ret)
}

fn get(c: usize, v: Option<&str>, call: u64, ret: u64) -> Op {
    op(
        c,
        KvInput::Get,
        Some(KvOutput::Value(v.map(String::from))),
        call,
        ret,
    )
}

fn cas(
    c: usize,
    expected: Option<&str>,
    new: &str,
    result: (bool, Option<&str>),
    call: u64,
    ret: u64,
) -> Op {
    op(
        c,
        KvInput::Cas {
            expected: expected.map(String::from),
            new: new.into(),
        },
        Some(KvOutput::Cas {
            swapped: result.0,
            current: result.1.map(String::from),
        }),
        call,
        ret,
    )
}

fn accepted(history: &[Op]) -> bool {
    match check(&Register, history) {
        Ok(()) => true,
        Err(CheckError::NotLinearizable(_)) => false,
        Err(e) => panic!("no verdict: {e:?}"),
    }
}

#[test]
fn empty_and_sequential_histories_are_linearizable() {
    assert!(accepted(&[]));
    assert!(accepted(&[
        get(0, None, 0, 1),
        put(0, "a", 2, 3),
        get(1, Some("a"), 4, 5),
        cas(1, Some("a"), "b", (true, Some("a")), 6, 7),
        cas(0, Some("a"), "c", (false, Some("b")), 8, 9),
        del(0, 10, 11),
        get(1, None, 12, 13),
        cas(1, None, "d", (true, None), 14, 15),
        get(0, Some("d"), 16, 17),
    ]));
}

#[test]
fn a_value_never_written_is_rejected() {
    assert!(!accepted(&[put(0, "a", 0, 1), get(1, Some("z"), 2, 3)]));
    assert!(!accepted(&[get(0, Some("a"), 0, 1)]));
}

#[test]
fn a_stale_read_after_a_completed_write_is_rejected() {
    // The second write finished before the read began.
    let h = [
        put(0, "a", 0, 1),
        put(0, "b", 2, 3),
        get(1, Some("a"), 4, 5),
    ];
    let err = check(&Register, &h).unwrap_err();
    match err {
        CheckError::NotLinearizable(v) => {
            assert!(v.message.contains("no linearization"), "{}", v.message);
            assert!(v.stuck.contains(&2), "{v:?}");
            assert_eq!(v.longest_prefix, vec![0, 1], "{v:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_read_overlapping_a_write_may_see_either_value() {
    for seen in ["a", "b"] {
        assert!(accepted(&[
            put(0, "a", 0, 1),
            put(0, "b", 2, 10),
            get(1, Some(seen), 3, 5),
        ]));
    }
}

#[test]
fn a_new_then_old_read_inversion_is_rejected() {
    // While the write of b runs, one read sees b and a later read (which
    // began after the first returned) sees a again: no order explains it.
    let h = [
        put(0, "a", 0, 1),
        put(0, "b", 2, 20),
        get(1, Some("b"), 3, 5),
        get(2, Some("a"), 6, 8),
    ];
    assert!(!accepted(&h));
    // The same reads in the other order are fine.
    let h = [
        put(0, "a", 0, 1),
        put(0, "b", 2, 20),
        get(1, Some("a"), 3, 5),
        get(2, Some("b"), 6, 8),
    ];
    assert!(accepted(&h));
}

#[test]
fn two_successful_swaps_from_the_same_value_are_rejected() {
    // Concurrent or not, only one cas from (nil) can succeed.
    let concurrent = [
        cas(0, None, "x", (true, None), 0, 10),
        cas(1, None, "y", (true, None), 1, 11),
    ];
    assert!(!accepted(&concurrent));
    let sequential = [
        cas(0, None, "x", (true, None), 0, 1),
        cas(1, None, "y", (true, None), 2, 3),
    ];
    assert!(!accepted(&sequential));
    // One wins, the other sees the winner's value.
    let ok = [
        cas(0, None, "x", (true, None), 0, 10),
        cas(1, None, "y", (false, Some("x")), 1, 11),
    ];
    assert!(accepted(&ok));
}

#[test]
fn a_cas_must_report_the_value_it_saw() {
    assert!(!accepted(&[
        put(0, "a", 0, 1),
        cas(1, Some("b"), "c", (false, Some("b")), 2, 3),
    ]));
    assert!(!accepted(&[
        put(0, "a", 0, 1),
        cas(1, Some("b"), "c", (false, None), 2, 3),
    ]));
    assert!(!accepted(&[
        put(0, "a", 0, 1),
        cas(1, Some("a"), "c", (false, Some("a")), 2, 3),
    ]));
}

#[test]
fn a_lost_update_is_rejected() {
    // Two increments by cas that both succeed from the same value: one of
    // them was lost.
    let h = [
        put(0, "0", 0, 1),
        cas(1, Some("0"), "1", (true, Some("0")), 2, 5),
        cas(2, Some("0"), "1", (true, Some("0")), 3, 6),
        get(0, Some("1"), 7, 8),
    ];
    assert!(!accepted(&h));
}

#[test]
fn an_unknown_write_may_or_may_not_have_happened() {
    // Seen.
    assert!(accepted(&[
        put(0, "a", 0, 1),
        put_unknown(1, "b", 2),
        get(2, Some("b"), 10, 11),
    ]));
    // Not seen, even long after.
    assert!(accepted(&[
        put(0, "a", 0, 1),
        put_unknown(1, "b", 2),
        get(2, Some("a"), 100, 101),
    ]));
    // Seen late: it may take effect any time after its invocation.
    assert!(accepted(&[
        put(0, "a", 0, 1),
        put_unknown(1, "b", 2),
        get(2, Some("a"), 100, 101),
        get(2, Some("b"), 200, 201),
    ]));
    // But not before it was invoked.
    assert!(!accepted(&[
        get(2, Some("b"), 0, 1),
        put_unknown(1, "b", 2),
    ]));
    // And it happens at most once: seen, then gone without a delete, then
    // seen again needs a second write of b.
    assert!(!accepted(&[
        put(0, "a", 0, 1),
        put_unknown(1, "b", 2),
        get(2, Some("b"), 10, 11),
        put(0, "a", 12, 13),
        get(2, Some("b"), 14, 15),
    ]));
}

#[test]
fn an_unknown_cas_applies_only_if_it_matched() {
    let unknown_cas = op(
        1,
        KvInput::Cas {
            expected: Some("a".into()),
            new: "b".into(),
        },
        None,
        2,
        0,
    );
    assert!(accepted(&[
        put(0, "a", 0, 1),
        unknown_cas.clone(),
        get(2, Some("b"), 10, 11),
    ]));
    // The key held c when it could have run, so it cannot have set b.
    assert!(!accepted(&[
        put(0, "c", 0, 1),
        unknown_cas,
        get(2, Some("b"), 10, 11),
    ]));
}

#[test]
fn the_step_budget_gives_no_verdict_instead_of_a_wrong_one() {
    // Many concurrent writes and a read that no order explains: the search
    // must try many orders; with a tiny budget it says so.
    let mut h: Vec<Op> = (0..12)
        .map(|i| put(i, &format!("v{i}"), i as u64, 1000))
        .collect();
    h.push(get(99, Some("never"), 1001, 1002));
    match check_with_budget(&Register, &h, 50) {
        Err(CheckError::Inconclusive { steps }) => assert!(steps > 50),
        other => panic!("{other:?}"),
    }
    assert!(!accepted(&h));
}

/// One operation of a simulated execution: it takes effect at `point`,
/// between its invocation and its return.
#[derive(Clone, Debug)]
struct Planned {
    input: KvInput,
    call: u64,
    point: u64,
    ret: u64,
    /// The client gave up: the outcome is unknown, and the operation took
    /// effect only if `happened`.
    unknown: bool,
    happened: bool,
}

fn planned() -> impl Strategy<Value = Planned> {
    let input = prop_oneof![
        Just(KvInput::Get),
        (0..4u8).prop_map(|v| KvInput::Put(format!("v{v}"))),
        Just(KvInput::Delete),
        (proptest::option::of(0..4u8), 0..4u8).prop_map(|(e, n)| KvInput::Cas {
            expected: e.map(|e| format!("v{e}")),
            new: format!("v{n}"),
        }),
    ];
    (
        input,
        0..1000u64,
        0..60u64,
        0..60u64,
        proptest::bool::weighted(0.1),
        any::<bool>(),
    )
        .prop_map(|(input, call, a, b, unknown, happened)| Planned {
            unknown: unknown && input != KvInput::Get,
            input,
            call,
            point: call + a.min(b),
            ret: call + a.max(b),
            happened,
        })
}

/// Runs the planned operations against a real register in the order of
/// their effect points; returns what each returned and the final value.
fn execute(plan: &[Planned]) -> (Vec<Op>, Option<String>) {
    let mut order: Vec<usize> = (0..plan.len()).collect();
    order.sort_by_key(|&i| (plan[i].point, i));
    let mut state: Option<String> = None;
    let mut outputs: Vec<Option<KvOutput>> = vec![None; plan.len()];
    for i in order {
        let p = &plan[i];
        if p.unknown && !p.happened {
            continue;
        }
        let out = match &p.input {
            KvInput::Get => KvOutput::Value(state.clone()),
            KvInput::Put(v) => {
                state = Some(v.clone());
                KvOutput::Done
            }
            KvInput::Delete => {
                state = None;
                KvOutput::Done
            }
            KvInput::Cas { expected, new } => {
                let current = state.clone();
                let swapped = &current == expected;
                if swapped {
                    state = Some(new.clone());
                }
                KvOutput::Cas { swapped, current }
            }
        };
        outputs[i] = Some(out);
    }
    let history = plan
        .iter()
        .zip(outputs)
        .enumerate()
        .map(|(i, (p, out))| {
            op(
                i,
                p.input.clone(),
                if p.unknown { None } else { out },
                p.call,
                p.ret,
            )
        })
        .collect();
    (history, state)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn executions_of_a_linearizable_register_are_accepted(
        plan in proptest::collection::vec(planned(), 0..40)
    ) {
        let (history, _) = execute(&plan);
        prop_assert!(accepted(&history));
    }

    #[test]
    fn a_read_of_a_value_nobody_wrote_is_always_rejected(
        plan in proptest::collection::vec(planned(), 1..40),
        pick in any::<prop::sample::Index>(),
    ) {
        let (mut history, _) = execute(&plan);
        let reads: Vec<usize> = history
            .iter()
            .enumerate()
            .filter(|(_, o)| o.input == KvInput::Get)
            .map(|(i, _)| i)
            .collect();
        prop_assume!(!reads.is_empty());
        let i = reads[pick.index(reads.len())];
        history[i].output = Some(KvOutput::Value(Some("forged".into())));
        prop_assert!(!accepted(&history));
    }

    #[test]
    fn a_stale_read_after_a_completed_overwrite_is_rejected(
        mut plan in proptest::collection::vec(planned(), 0..30),
    ) {
        // Every operation completes; then a put of a fresh value completes,
        // then a read returns what the register held before that put.
        for p in &mut plan {
            p.unknown = false;
        }
        let (mut history, before) = execute(&plan);
        let end = history.iter().map(|o| o.ret).max().unwrap_or(0) + 10;
        history.push(put(100, "fresh", end, end + 1));
        history.push(op(
            101,
            KvInput::Get,
            Some(KvOutput::Value(before)),
            end + 2,
            end + 3,
        ));
        prop_assert!(!accepted(&history));
    }
}

#[test]
fn the_register_model_follows_the_contract() {
    let m = Register;
    let s = m.init();
    assert_eq!(s, None);
    let s = m
        .step(&s, &KvInput::Put("a".into()), Some(&KvOutput::Done))
        .unwrap();
    assert_eq!(s, Some("a".to_string()));
    assert!(
        m.step(&s, &KvInput::Get, Some(&KvOutput::Value(None)))
            .is_none()
    );
    assert!(m.step(&s, &KvInput::Get, Some(&KvOutput::Done)).is_none());
    let s = m.step(&s, &KvInput::Delete, None).unwrap();
    assert_eq!(s, None);
}

#[test]
fn a_long_concurrent_history_is_checked_quickly() {
    // 5 clients, 400 operations each overlapping its neighbours: the cache
    // keeps the search small.
    let mut plan = Vec::new();
    for i in 0..400u64 {
        let input = match i % 4 {
            0 => KvInput::Put(format!("v{i}")),
            1 => KvInput::Get,
            2 => KvInput::Cas {
                expected: Some(format!("v{}", i - 2)),
                new: format!("w{i}"),
            },
            _ => KvInput::Get,
        };
        plan.push(Planned {
            input,
            call: i * 10,
            point: i * 10 + 25,
            ret: i * 10 + 50,
            unknown: i % 37 == 0,
            happened: i % 74 == 0,
        });
    }
    let (history, _) = execute(&plan);
    assert!(accepted(&history));
}
