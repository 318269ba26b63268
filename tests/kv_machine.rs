//! The key-value state machine: operations, client sessions (exactly-once,
//! stale requests, bounded and deterministic eviction, restart), bad input.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvapp_c::kv::KvStateMachine;
use kvapp_c::kv::protocol::{Command, Op, Outcome, Query};
use kvapp_c::network::frame;
use kvapp_c::storage::memory::MemoryKv;
use kvapp_c::storage::{Entry, KvStorage, KvWrite};
use kvapp_c::{Error, LogIndex, Result};
use proptest::prelude::*;

/// A test store: a map shared between handles, so a state machine can be
/// dropped and reopened over the same contents. Counts writes and can be
/// told to fail them.
#[derive(Clone, Default)]
struct SharedKv(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    applied: LogIndex,
    writes: usize,
    fail_writes: bool,
}

impl SharedKv {
    fn dump(&self) -> (LogIndex, BTreeMap<Vec<u8>, Vec<u8>>) {
        let inner = self.0.lock().unwrap();
        (inner.applied, inner.data.clone())
    }
    fn writes(&self) -> usize {
        self.0.lock().unwrap().writes
    }
    fn set_fail_writes(&self, fail: bool) {
        self.0.lock().unwrap().fail_writes = fail;
    }
    fn raw_put(&self, key: &[u8], value: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .data
            .insert(key.to_vec(), value.to_vec());
    }
}

impl KvStorage for SharedKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.lock().unwrap().data.get(key).cloned())
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let inner = self.0.lock().unwrap();
        Ok(inner
            .data
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
    fn write(&mut self, applied: LogIndex, batch: Vec<KvWrite>) -> Result<()> {
        let mut inner = self.0.lock().unwrap();
        if inner.fail_writes {
            return Err(Error::io(
                "writing the test store",
                std::io::Error::other("injected failure"),
            ));
        }
        for w in batch {
            match w {
                KvWrite::Put(k, v) => {
                    inner.data.insert(k, v);
                }
                KvWrite::Delete(k) => {
                    inner.data.remove(&k);
                }
            }
        }
        inner.applied = applied;
        inner.writes += 1;
        Ok(())
    }
    fn applied_index(&self) -> LogIndex {
        self.0.lock().unwrap().applied
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A state machine over a fresh store, plus a handle on that store and the
/// next log index to feed it.
struct Harness {
    store: SharedKv,
    sm: KvStateMachine,
    next: LogIndex,
    max_sessions: usize,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_max_sessions(kvapp_c::kv::DEFAULT_MAX_SESSIONS)
    }
    fn with_max_sessions(max_sessions: usize) -> Harness {
        let store = SharedKv::default();
        let sm = KvStateMachine::with_max_sessions(Box::new(store.clone()), max_sessions).unwrap();
        Harness {
            store,
            sm,
            next: 1,
            max_sessions,
        }
    }
    /// Drops the state machine and opens a new one over the same store.
    fn reopen(&mut self) {
        self.sm =
            KvStateMachine::with_max_sessions(Box::new(self.store.clone()), self.max_sessions)
                .unwrap();
        self.next = self.sm.applied_index() + 1;
    }
    fn apply_data(&mut self, data: Vec<u8>) -> Option<Outcome> {
        let entry = Entry {
            index: self.next,
            term: 1,
            data,
        };
        self.next += 1;
        self.sm.apply(&entry).unwrap()
    }
    fn apply(&mut self, client_id: u64, seq: u64, op: Op) -> Outcome {
        let data = frame::encode(&Command { client_id, seq, op });
        self.apply_data(data)
            .expect("a command entry yields an outcome")
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.sm.query(&Query::Get { key: key.to_vec() }).unwrap() {
            Outcome::Value(v) => v,
            other => panic!("get answered {other:?}"),
        }
    }
    fn list(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        match self
            .sm
            .query(&Query::List {
                prefix: prefix.to_vec(),
            })
            .unwrap()
        {
            Outcome::Keys(k) => k,
            other => panic!("list answered {other:?}"),
        }
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}
fn del(key: &str) -> Op {
    Op::Delete {
        key: key.as_bytes().to_vec(),
    }
}
fn cas(key: &str, expected: Option<&str>, new: &str) -> Op {
    Op::Cas {
        key: key.as_bytes().to_vec(),
        expected: expected.map(|e| e.as_bytes().to_vec()),
        new: new.as_bytes().to_vec(),
    }
}
fn v(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}
fn is_rejected(o: &Outcome, needle: &str) -> bool {
    matches!(o, Outcome::Rejected(msg) if msg.contains(needle))
}

#[test]
fn put_get_delete_list() {
    let mut h = Harness::new();
    assert_eq!(h.apply(7, 1, put("b", "2")), Outcome::Done);
    assert_eq!(h.apply(7, 2, put("a", "1")), Outcome::Done);
    assert_eq!(h.apply(7, 3, put("ab", "3")), Outcome::Done);
    assert_eq!(h.get(b"a"), v("1"));
    assert_eq!(h.get(b"zz"), None);
    assert_eq!(
        h.list(b""),
        vec![b"a".to_vec(), b"ab".to_vec(), b"b".to_vec()]
    );
    assert_eq!(h.list(b"a"), vec![b"a".to_vec(), b"ab".to_vec()]);
    assert_eq!(h.list(b"c"), Vec::<Vec<u8>>::new());

    assert_eq!(h.apply(7, 4, put("a", "one")), Outcome::Done);
    assert_eq!(h.get(b"a"), v("one"));
    assert_eq!(h.apply(7, 5, del("a")), Outcome::Done);
    assert_eq!(h.get(b"a"), None);
    // Deleting an absent key is still done.
    assert_eq!(h.apply(7, 6, del("a")), Outcome::Done);
    assert_eq!(h.list(b""), vec![b"ab".to_vec(), b"b".to_vec()]);
    assert_eq!(h.sm.applied_index(), 6);
    // An empty value is a value, not an absence.
    assert_eq!(h.apply(7, 7, put("e", "")), Outcome::Done);
    assert_eq!(h.get(b"e"), Some(Vec::new()));
}

#[test]
fn cas_semantics() {
    let mut h = Harness::new();
    // Expected absent, key absent: swaps.
    assert_eq!(
        h.apply(1, 1, cas("k", None, "v1")),
        Outcome::Cas {
            swapped: true,
            current: None
        }
    );
    assert_eq!(h.get(b"k"), v("v1"));
    // Expected absent, key present: no swap, reports the current value.
    assert_eq!(
        h.apply(1, 2, cas("k", None, "v2")),
        Outcome::Cas {
            swapped: false,
            current: v("v1")
        }
    );
    // Wrong expected value: no swap.
    assert_eq!(
        h.apply(1, 3, cas("k", Some("nope"), "v2")),
        Outcome::Cas {
            swapped: false,
            current: v("v1")
        }
    );
    assert_eq!(h.get(b"k"), v("v1"));
    // Right expected value: swaps, reports the value before.
    assert_eq!(
        h.apply(1, 4, cas("k", Some("v1"), "v2")),
        Outcome::Cas {
            swapped: true,
            current: v("v1")
        }
    );
    assert_eq!(h.get(b"k"), v("v2"));
    // Expected a value, key absent: no swap.
    assert_eq!(
        h.apply(1, 5, cas("absent", Some("x"), "y")),
        Outcome::Cas {
            swapped: false,
            current: None
        }
    );
    assert_eq!(h.get(b"absent"), None);
}

#[test]
fn repeated_seq_returns_first_outcome_without_reapplying() {
    let mut h = Harness::new();
    let first = h.apply(9, 1, cas("k", None, "a"));
    assert_eq!(
        first,
        Outcome::Cas {
            swapped: true,
            current: None
        }
    );
    // Another client changes the key in between.
    assert_eq!(h.apply(10, 1, put("k", "other")), Outcome::Done);
    // The retry of (9, 1) gets the first answer and does not swap again.
    assert_eq!(h.apply(9, 1, cas("k", None, "a")), first);
    assert_eq!(h.get(b"k"), v("other"));
    // Even if the retried entry carries a different op, the first answer
    // stands and nothing is applied.
    assert_eq!(h.apply(9, 1, put("k", "zzz")), first);
    assert_eq!(h.get(b"k"), v("other"));
    assert_eq!(h.sm.session_seq(9), Some(1));

    // A put applied once: the retry neither rewrites the value nor fails.
    assert_eq!(h.apply(9, 2, put("p", "1")), Outcome::Done);
    assert_eq!(h.apply(10, 2, put("p", "2")), Outcome::Done);
    assert_eq!(h.apply(9, 2, put("p", "1")), Outcome::Done);
    assert_eq!(h.get(b"p"), v("2"));
    // Every entry advanced the applied index.
    assert_eq!(h.sm.applied_index(), 7);
}

#[test]
fn stale_seq_is_rejected_and_not_applied() {
    let mut h = Harness::new();
    assert_eq!(h.apply(3, 5, put("k", "five")), Outcome::Done);
    let stale = h.apply(3, 4, put("k", "four"));
    assert!(is_rejected(&stale, "stale request"), "{stale:?}");
    assert_eq!(h.get(b"k"), v("five"));
    assert_eq!(h.sm.session_seq(3), Some(5));
    // Sequence numbers may skip (a request that failed before reaching the
    // log leaves a gap).
    assert_eq!(h.apply(3, 9, put("k", "nine")), Outcome::Done);
    assert_eq!(h.get(b"k"), v("nine"));
    let zero = h.apply(4, 0, put("k", "zero"));
    assert!(is_rejected(&zero, "sequence number 0"), "{zero:?}");
    assert_eq!(h.get(b"k"), v("nine"));
    assert_eq!(h.sm.session_seq(4), None);
}

#[test]
fn invalid_keys_and_values_are_rejected_at_apply() {
    let mut h = Harness::new();
    let long_key = "k".repeat(kvapp_c::kv::MAX_KEY_BYTES + 1);
    let long_value = vec![b'v'; kvapp_c::kv::MAX_VALUE_BYTES + 1];
    let cases = [
        (put("", "x"), "empty"),
        (put(&long_key, "x"), "limit"),
        (
            Op::Put {
                key: b"\0s-looks-internal".to_vec(),
                value: b"x".to_vec(),
            },
            "0x00",
        ),
        (
            Op::Put {
                key: b"k".to_vec(),
                value: long_value.clone(),
            },
            "limit",
        ),
        (del(""), "empty"),
        (
            Op::Cas {
                key: b"k".to_vec(),
                expected: None,
                new: long_value,
            },
            "limit",
        ),
        (
            Op::Cas {
                key: vec![0],
                expected: None,
                new: b"x".to_vec(),
            },
            "0x00",
        ),
    ];
    let before = h.list(b"");
    for (seq, (op, needle)) in (1..).zip(cases) {
        let outcome = h.apply(1, seq, op);
        assert!(is_rejected(&outcome, needle), "{outcome:?} lacks {needle}");
    }
    assert_eq!(h.list(b""), before);
    assert_eq!(h.get(b"k"), None);
    // A rejected command still uses up its sequence number: its retry gets
    // the same rejection.
    let again = h.apply(1, 7, put("k", "fine"));
    assert!(is_rejected(&again, "0x00"), "{again:?}");
    // Reads of invalid keys are rejected too.
    for key in [Vec::new(), vec![0u8, b's'], vec![b'k'; 5000]] {
        let outcome = h.sm.query(&Query::Get { key }).unwrap();
        assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");
    }
}

/// Keys with whitespace are refused where requests come in (the server and
/// the client library), but an entry that holds one, written before that
/// rule, applies as it always did: replicas replaying one log must agree
/// whichever version replays it.
#[test]
fn keys_with_whitespace_are_refused_on_entry_but_old_entries_apply() {
    use kvapp_c::kv::validate_op;
    for key in ["a b", "tab\there", "line\nfeed", "nbsp\u{a0}x"] {
        for op in [put(key, "v"), cas(key, None, "v")] {
            let err = validate_op(&op).unwrap_err().to_string();
            assert!(err.contains("whitespace"), "{key:?}: {err}");
        }
        // Such a key stored earlier can still be removed.
        validate_op(&del(key)).unwrap();
    }
    validate_op(&put("no-space", "v")).unwrap();

    let mut h = Harness::new();
    assert_eq!(h.apply(7, 1, put("old key", "v")), Outcome::Done);
    assert_eq!(h.get(b"old key"), v("v"));
    assert_eq!(h.apply(7, 2, del("old key")), Outcome::Done);
    assert_eq!(h.get(b"old key"), None);
}

#[test]
fn list_never_shows_internal_keys() {
    let mut h = Harness::new();
    for client in 1..=5 {
        h.apply(client, 1, put(&format!("user{client}"), "x"));
    }
    assert_eq!(h.sm.session_count(), 5);
    // The store does hold internal records...
    let (_, data) = h.store.dump();
    assert!(data.keys().any(|k| k.first() == Some(&0)));
    // ...but no listing shows them.
    let all = h.list(b"");
    assert_eq!(all.len(), 5);
    assert!(all.iter().all(|k| k.starts_with(b"user")));
    assert!(h.list(&[0]).is_empty());
    assert!(h.list(&[0, b's']).is_empty());
}

#[test]
fn noop_ignored_and_malformed_entries() {
    let mut h = Harness::new();
    assert_eq!(h.apply_data(Vec::new()), None);
    assert_eq!(h.sm.applied_index(), 1);
    for garbage in [
        vec![0xff; 3],
        vec![0x01],
        b"GET / HTTP/1.1".to_vec(),
        // A valid command, truncated.
        frame::encode(&Command {
            client_id: 1,
            seq: 1,
            op: put("key", "value"),
        })[..6]
            .to_vec(),
    ] {
        let outcome = h.apply_data(garbage);
        assert!(
            matches!(&outcome, Some(Outcome::Rejected(m)) if m.contains("no valid command")),
            "{outcome:?}"
        );
    }
    assert_eq!(h.sm.applied_index(), 5);
    assert!(h.list(b"").is_empty());
    assert_eq!(h.sm.session_count(), 0);

    // Entries at or below the applied index are ignored entirely.
    let writes = h.store.writes();
    let old = Entry {
        index: 3,
        term: 1,
        data: frame::encode(&Command {
            client_id: 1,
            seq: 1,
            op: put("late", "x"),
        }),
    };
    assert_eq!(h.sm.apply(&old).unwrap(), None);
    assert_eq!(h.store.writes(), writes);
    assert_eq!(h.get(b"late"), None);

    // An entry that skips an index is an error and changes nothing.
    let gap = Entry {
        index: 7,
        term: 1,
        data: Vec::new(),
    };
    let err = h.sm.apply(&gap).unwrap_err();
    assert!(err.to_string().contains("entry 7"), "{err}");
    assert_eq!(h.sm.applied_index(), 5);
}

#[test]
fn storage_errors_propagate_and_leave_state_unchanged() {
    let mut h = Harness::new();
    assert_eq!(h.apply(1, 1, put("a", "1")), Outcome::Done);
    h.store.set_fail_writes(true);
    let entry = Entry {
        index: 2,
        term: 1,
        data: frame::encode(&Command {
            client_id: 1,
            seq: 2,
            op: put("a", "2"),
        }),
    };
    assert!(matches!(h.sm.apply(&entry), Err(Error::Io { .. })));
    assert_eq!(h.sm.applied_index(), 1);
    assert_eq!(h.sm.session_seq(1), Some(1));
    // Once the store works again, the same entry applies normally.
    h.store.set_fail_writes(false);
    assert_eq!(h.sm.apply(&entry).unwrap(), Some(Outcome::Done));
    assert_eq!(h.get(b"a"), v("2"));
}

#[test]
fn restart_restores_sessions() {
    let mut h = Harness::new();
    let first = h.apply(42, 1, cas("k", None, "a"));
    h.apply(42, 2, put("x", "1"));
    h.apply(43, 7, put("y", "1"));
    h.reopen();
    assert_eq!(h.sm.applied_index(), 3);
    assert_eq!(h.sm.session_count(), 2);
    assert_eq!(h.sm.session_seq(42), Some(2));
    assert_eq!(h.sm.session_seq(43), Some(7));
    // Retries after the restart are still recognised.
    h.apply(44, 1, put("x", "changed"));
    assert_eq!(h.apply(42, 2, put("x", "1")), Outcome::Done);
    assert_eq!(h.get(b"x"), v("changed"));
    let stale = h.apply(42, 1, cas("k", None, "a"));
    assert!(is_rejected(&stale, "stale"), "{stale:?}");
    assert_ne!(stale, first);
}

#[test]
fn corrupt_session_record_is_reported_on_open() {
    let store = SharedKv::default();
    store.raw_put(&[0, b's', 0, 0, 0, 0, 0, 0, 0, 1], b"\xff\xff\xff");
    let err = KvStateMachine::new(Box::new(store.clone()))
        .err()
        .expect("a corrupt session must not load");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    let store = SharedKv::default();
    store.raw_put(&[0, b's', 1], b"");
    assert!(KvStateMachine::new(Box::new(store)).is_err());

    assert!(matches!(
        KvStateMachine::with_max_sessions(Box::new(SharedKv::default()), 0),
        Err(Error::Config(_))
    ));
}

#[test]
fn sessions_are_bounded_and_evict_least_recently_used() {
    let mut h = Harness::with_max_sessions(3);
    h.apply(1, 1, put("a", "1")); // index 1
    h.apply(2, 1, put("b", "1")); // index 2
    h.apply(3, 1, put("c", "1")); // index 3
    // Client 1 becomes the most recently used, through a repeated request.
    assert_eq!(h.apply(1, 1, put("a", "1")), Outcome::Done); // index 4
    assert_eq!(h.sm.session_count(), 3);
    // A fourth client evicts the least recently used: client 2.
    h.apply(4, 1, put("d", "1")); // index 5
    assert_eq!(h.sm.session_count(), 3);
    assert_eq!(h.sm.session_seq(2), None);
    assert_eq!(h.sm.session_seq(1), Some(1));
    assert_eq!(h.sm.session_seq(3), Some(1));
    assert_eq!(h.sm.session_seq(4), Some(1));
    // The eviction is in the store too.
    let sessions_in_store = |h: &Harness| {
        let (_, data) = h.store.dump();
        data.keys().filter(|k| k.first() == Some(&0)).count()
    };
    assert_eq!(sessions_in_store(&h), 3);
    // An existing client writing again evicts nobody.
    h.apply(3, 2, put("c", "2"));
    assert_eq!(h.sm.session_count(), 3);
    // The order survives a restart: next to go is client 1 (index 4).
    h.reopen();
    h.apply(5, 1, put("e", "1"));
    assert_eq!(h.sm.session_seq(1), None);
    assert_eq!(h.sm.session_seq(4), Some(1));
    assert_eq!(sessions_in_store(&h), 3);

    // Reopening with a smaller limit trims the table at the next new client.
    h.max_sessions = 1;
    h.reopen();
    assert_eq!(h.sm.session_count(), 3);
    h.apply(6, 1, put("f", "1"));
    assert_eq!(h.sm.session_count(), 1);
    assert_eq!(h.sm.session_seq(6), Some(1));
    assert_eq!(sessions_in_store(&h), 1);
}

/// One step of a random log: a command, a no-op or garbage.
#[derive(Clone, Debug)]
enum Step {
    Command { client: u64, seq: u64, op: Op },
    Noop,
    Garbage(Vec<u8>),
}

fn arb_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "ab", "c", "ca"]).prop_map(|k| k.as_bytes().to_vec()),
        1 => Just(Vec::new()),
        1 => Just(vec![0u8, b's']),
    ]
}

fn arb_value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec!["", "1", "2", "33"]).prop_map(|v| v.as_bytes().to_vec())
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (arb_key(), arb_value()).prop_map(|(key, value)| Op::Put { key, value }),
        arb_key().prop_map(|key| Op::Delete { key }),
        (arb_key(), prop::option::of(arb_value()), arb_value())
            .prop_map(|(key, expected, new)| Op::Cas { key, expected, new }),
    ]
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (0u64..6, 0u64..6, arb_op()).prop_map(|(client, seq, op)| Step::Command { client, seq, op }),
        1 => Just(Step::Noop),
        1 => prop::collection::vec(any::<u8>(), 1..12).prop_map(Step::Garbage),
    ]
}

fn entry_data(step: &Step) -> Vec<u8> {
    match step {
        Step::Command { client, seq, op } => frame::encode(&Command {
            client_id: *client,
            seq: *seq,
            op: op.clone(),
        }),
        Step::Noop => Vec::new(),
        Step::Garbage(bytes) => bytes.clone(),
    }
}

/// A deliberately naive model of the state machine.
#[derive(Default)]
struct Model {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// client -> (seq, last index, outcome)
    sessions: BTreeMap<u64, (u64, LogIndex, Outcome)>,
}

impl Model {
    fn valid_key(key: &[u8]) -> bool {
        !key.is_empty() && key[0] != 0
    }

    fn execute(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Put { key, value } => {
                if !Model::valid_key(key) {
                    return Outcome::Rejected(String::new());
                }
                self.data.insert(key.clone(), value.clone());
                Outcome::Done
            }
            Op::Delete { key } => {
                if !Model::valid_key(key) {
                    return Outcome::Rejected(String::new());
                }
                self.data.remove(key);
                Outcome::Done
            }
            Op::Cas { key, expected, new } => {
                if !Model::valid_key(key) {
                    return Outcome::Rejected(String::new());
                }
                let current = self.data.get(key).cloned();
                let swapped = current == *expected;
                if swapped {
                    self.data.insert(key.clone(), new.clone());
                }
                Outcome::Cas { swapped, current }
            }
        }
    }

    /// Applies a command at `index`; rejection messages are left empty.
    fn apply(&mut self, index: LogIndex, client: u64, seq: u64, op: &Op, max: usize) -> Outcome {
        if seq == 0 {
            return Outcome::Rejected(String::new());
        }
        if let Some((last, _, outcome)) = self.sessions.get(&client).cloned() {
            self.sessions.get_mut(&client).unwrap().1 = index;
            if seq == last {
                return outcome;
            }
            if seq < last {
                return Outcome::Rejected(String::new());
            }
        } else {
            while self.sessions.len() >= max {
                let oldest = *self
                    .sessions
                    .iter()
                    .min_by_key(|(_, (_, last_index, _))| *last_index)
                    .unwrap()
                    .0;
                self.sessions.remove(&oldest);
            }
        }
        let outcome = self.execute(op);
        self.sessions.insert(client, (seq, index, outcome.clone()));
        outcome
    }
}

/// Blanks rejection messages so outcomes compare with the model's.
fn shape(outcome: Option<Outcome>) -> Option<Outcome> {
    outcome.map(|o| match o {
        Outcome::Rejected(_) => Outcome::Rejected(String::new()),
        other => other,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Two replicas fed the same log, one of them restarted at random
    /// points, answer identically, end with identical stores (data,
    /// sessions and applied index), and agree with a naive model.
    #[test]
    fn replicas_agree_with_each_other_and_the_model(
        steps in prop::collection::vec(arb_step(), 1..120),
        restarts in prop::collection::vec(any::<bool>(), 120),
        max_sessions in 1usize..5,
    ) {
        let mut a = Harness::with_max_sessions(max_sessions);
        let mut b = Harness::with_max_sessions(max_sessions);
        let mut model = Model::default();
        for (i, step) in steps.iter().enumerate() {
            let index = i as LogIndex + 1;
            if restarts[i] {
                b.reopen();
            }
            let data = entry_data(step);
            let out_a = a.apply_data(data.clone());
            let out_b = b.apply_data(data);
            prop_assert_eq!(&out_a, &out_b, "step {} {:?}", index, step);
            let expected = match step {
                Step::Command { client, seq, op } => {
                    Some(model.apply(index, *client, *seq, op, max_sessions))
                }
                Step::Noop => None,
                // Random bytes occasionally form a valid command.
                Step::Garbage(bytes) => match frame::decode::<Command>(bytes) {
                    Ok(c) => Some(model.apply(index, c.client_id, c.seq, &c.op, max_sessions)),
                    Err(_) => Some(Outcome::Rejected(String::new())),
                },
            };
            prop_assert_eq!(shape(out_a), expected, "step {} {:?}", index, step);
        }
        b.reopen();
        prop_assert_eq!(a.store.dump(), b.store.dump());
        prop_assert_eq!(a.list(b""), model.data.keys().cloned().collect::<Vec<_>>());
        for (key, value) in &model.data {
            prop_assert_eq!(a.get(key), Some(value.clone()));
        }
        prop_assert_eq!(a.sm.session_count(), model.sessions.len());
        for (client, (seq, _, _)) in &model.sessions {
            prop_assert_eq!(b.sm.session_seq(*client), Some(*seq));
        }
    }
}

/// What a crash-and-replay run does before each entry.
#[derive(Clone, Copy, Debug)]
enum Event {
    Nothing,
    Flush,
    Crash,
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::Nothing),
        2 => Just(Event::Flush),
        1 => Just(Event::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Over the in-memory backend, a replica that crashes at random points
    /// (losing every unflushed write), reopens and replays the log from its
    /// applied index gives every replayed entry the outcome it had the first
    /// time, and ends with exactly the store of a replica that never crashed.
    #[test]
    fn crash_and_replay_reproduces_the_same_state(
        steps in prop::collection::vec(arb_step(), 1..100),
        events in prop::collection::vec(arb_event(), 100),
        max_sessions in 1usize..5,
    ) {
        let log: Vec<Entry> = steps
            .iter()
            .enumerate()
            .map(|(i, step)| Entry { index: i as LogIndex + 1, term: 1, data: entry_data(step) })
            .collect();

        let reference_store = MemoryKv::new();
        let mut reference =
            KvStateMachine::with_max_sessions(Box::new(reference_store.clone()), max_sessions)
                .unwrap();
        let outcomes: Vec<Option<Outcome>> =
            log.iter().map(|e| reference.apply(e).unwrap()).collect();

        let store = MemoryKv::new();
        let open = |store: &MemoryKv| {
            KvStateMachine::with_max_sessions(Box::new(store.clone()), max_sessions).unwrap()
        };
        let mut sm = open(&store);
        let mut i = 0;
        // Crash at each position at most once, or replay would loop.
        let mut crashed_up_to = 0;
        while i < log.len() {
            match events[i] {
                Event::Nothing => {}
                Event::Flush => sm.flush().unwrap(),
                Event::Crash if i < crashed_up_to => {}
                Event::Crash => {
                    crashed_up_to = i + 1;
                    drop(sm);
                    store.crash();
                    sm = open(&store);
                    prop_assert!(sm.applied_index() <= i as LogIndex);
                    // Replay from the first entry the store lost.
                    i = sm.applied_index() as usize;
                }
            }
            let outcome = sm.apply(&log[i]).unwrap();
            prop_assert_eq!(&outcome, &outcomes[i], "entry {}", i + 1);
            i += 1;
        }
        prop_assert_eq!(sm.applied_index(), log.len() as LogIndex);
        prop_assert_eq!(
            store.scan_prefix(b"").unwrap(),
            reference_store.scan_prefix(b"").unwrap()
        );
    }
}
