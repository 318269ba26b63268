//! A linearizability checker in the style of Wing and Gong, with the state
//! cache of Lowe: a depth-first search for an order of the operations that
//! respects real time (an operation that returned before another was invoked
//! comes first) and that a sequential model accepts.
//!
//! Operations whose outcome is unknown (the client gave up; the operation
//! may or may not have happened) are treated as returning at the end of
//! time, with an unconstrained result: the search may place them anywhere
//! after their invocation, or leave them out entirely.
//!
//! The checker is generic over a [`Model`]; [`Register`] models one key of
//! kvapp-c (get, put, delete, compare-and-swap). Keys are independent, so a
//! key-value history is checked one key at a time.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. `output` is what the operation returned
    /// (`None`: unknown). Returns the next state, or `None` if the operation
    /// could not have returned `output` in `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Clone, Debug)]
pub struct Operation<I, O> {
    /// Which client issued it (for messages only).
    pub client: usize,
    pub input: I,
    /// What it returned; `None` if the outcome is unknown.
    pub output: Option<O>,
    /// When it was invoked.
    pub call: u64,
    /// When it returned; ignored when the outcome is unknown.
    pub ret: u64,
}

/// Why a history is not linearizable.
#[derive(Debug)]
pub struct Violation {
    /// The longest prefix of a linearization the search found (indices into
    /// the history, in order).
    pub longest_prefix: Vec<usize>,
    /// Operations that had returned (or were running) right after that
    /// prefix, none of which could come next.
    pub stuck: Vec<usize>,
    /// A human-readable account.
    pub message: String,
}

/// How the search ended without a verdict.
#[derive(Debug)]
pub enum CheckError {
    NotLinearizable(Violation),
    /// The search exceeded its step budget.
    Inconclusive {
        steps: u64,
    },
}

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return event.
    partner: usize,
    prev: usize,
    next: usize,
}

/// A doubly linked list of events (index 0 is the head) from which a call
/// and its return can be taken out and put back in LIFO order.
struct Events {
    ev: Vec<Event>,
}

impl Events {
    fn unlink(&mut self, i: usize) {
        let Event { prev, next, .. } = self.ev[i];
        self.ev[prev].next = next;
        if next != NIL {
            self.ev[next].prev = prev;
        }
    }

    fn relink(&mut self, i: usize) {
        let Event { prev, next, .. } = self.ev[i];
        self.ev[prev].next = i;
        if next != NIL {
            self.ev[next].prev = i;
        }
    }

    /// Takes call `i` and its return out of the list.
    fn lift(&mut self, i: usize) {
        self.unlink(i);
        self.unlink(self.ev[i].partner);
    }

    /// Puts back what the matching `lift(i)` took out.
    fn unlift(&mut self, i: usize) {
        self.relink(self.ev[i].partner);
        self.relink(i);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The default step budget of [`check`].
pub const DEFAULT_BUDGET: u64 = 200_000_000;

/// Checks that `history` is linearizable with respect to `model`.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
) -> Result<(), CheckError> {
    check_with_budget(model, history, DEFAULT_BUDGET)
}

/// [`check`] with an explicit bound on the number of search steps.
pub fn check_with_budget<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: u64,
) -> Result<(), CheckError> {
    // Events in time order; at equal times calls go first, which treats the
    // two operations as concurrent (the lenient reading of a tie).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(history.len() * 2);
    for (i, op) in history.iter().enumerate() {
        let ret = if op.output.is_some() {
            op.ret
        } else {
            u64::MAX
        };
        assert!(
            op.output.is_none() || op.call <= op.ret,
            "operation {i} returns before it is invoked"
        );
        order.push((op.call, false, i));
        order.push((ret, true, i));
    }
    order.sort();
    let mut ev = Vec::with_capacity(order.len() + 1);
    ev.push(Event {
        op: NIL,
        is_call: false,
        partner: NIL,
        prev: NIL,
        next: NIL,
    });
    let mut position = vec![(0usize, 0usize); history.len()];
    for (k, &(_, is_return, op)) in order.iter().enumerate() {
        let idx = k + 1;
        ev.push(Event {
            op,
            is_call: !is_return,
            partner: NIL,
            prev: idx - 1,
            next: if k + 1 < order.len() { idx + 1 } else { NIL },
        });
        if is_return {
            position[op].1 = idx;
        } else {
            position[op].0 = idx;
        }
    }
    if !order.is_empty() {
        ev[0].next = 1;
    }
    for &(call, ret) in &position {
        ev[call].partner = ret;
    }
    let mut events = Events { ev };

    let mut remaining_known = history.iter().filter(|op| op.output.is_some()).count();
    let mut linearized = Bits::new(history.len());
    let mut cache: HashSet<(Bits, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut entry = events.ev[0].next;
    let mut best: Vec<usize> = Vec::new();
    let mut best_stuck: Vec<usize> = Vec::new();
    let mut steps = 0u64;

    loop {
        if remaining_known == 0 {
            return Ok(());
        }
        steps += 1;
        if steps > budget {
            return Err(CheckError::Inconclusive { steps });
        }
        let e = if entry == NIL {
            None
        } else {
            Some(events.ev[entry])
        };
        match e {
            Some(e) if e.is_call => {
                let op = &history[e.op];
                if let Some(next) = model.step(&state, &op.input, op.output.as_ref()) {
                    linearized.set(e.op);
                    if cache.insert((linearized.clone(), next.clone())) {
                        stack.push((entry, std::mem::replace(&mut state, next)));
                        events.lift(entry);
                        if op.output.is_some() {
                            remaining_known -= 1;
                        }
                        entry = events.ev[0].next;
                        continue;
                    }
                    linearized.clear(e.op);
                }
                entry = e.next;
            }
            _ => {
                // A return (or the end): the operations before it could not
                // be placed next, so undo the last choice.
                if best_stuck.is_empty() || stack.len() > best.len() {
                    best = stack.iter().map(|&(c, _)| events.ev[c].op).collect();
                    best_stuck = pending(&events);
                }
                let Some((call, previous)) = stack.pop() else {
                    let message = describe(history, &best, &best_stuck);
                    return Err(CheckError::NotLinearizable(Violation {
                        longest_prefix: best,
                        stuck: best_stuck,
                        message,
                    }));
                };
                let op = events.ev[call].op;
                linearized.clear(op);
                state = previous;
                events.unlift(call);
                if history[op].output.is_some() {
                    remaining_known += 1;
                }
                entry = events.ev[call].next;
            }
        }
    }
}

/// The operations still in the list up to and including its first return.
fn pending(events: &Events) -> Vec<usize> {
    let mut out = Vec::new();
    let mut i = events.ev[0].next;
    while i != NIL {
        let e = events.ev[i];
        if e.is_call {
            out.push(e.op);
        } else {
            if !out.contains(&e.op) {
                out.push(e.op);
            }
            break;
        }
        i = e.next;
    }
    out
}

fn describe<I: Debug, O: Debug>(
    history: &[Operation<I, O>],
    prefix: &[usize],
    stuck: &[usize],
) -> String {
    let show = |i: usize| {
        let op = &history[i];
        match &op.output {
            Some(out) => format!(
                "  #{i} client {} {:?} -> {:?}  [{} .. {}]",
                op.client, op.input, out, op.call, op.ret
            ),
            None => format!(
                "  #{i} client {} {:?} -> unknown  [{} .. ]",
                op.client, op.input, op.call
            ),
        }
    };
    let mut s = format!(
        "no linearization of {} operations; the longest prefix found has {}:\n",
        history.len(),
        prefix.len()
    );
    let tail = prefix.len().saturating_sub(10);
    if tail > 0 {
        s.push_str(&format!("  ... {tail} earlier operations\n"));
    }
    for &i in &prefix[tail..] {
        s.push_str(&show(i));
        s.push('\n');
    }
    s.push_str("after it, none of these could come next:\n");
    for &i in stuck {
        s.push_str(&show(i));
        s.push('\n');
    }
    s
}

/// An operation on one key of kvapp-c.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvInput {
    Get,
    Put(String),
    Delete,
    Cas {
        expected: Option<String>,
        new: String,
    },
}

/// What an operation on one key returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// A get's value (`None`: absent).
    Value(Option<String>),
    /// A put or delete.
    Done,
    /// A cas: whether it swapped and the value before.
    Cas {
        swapped: bool,
        current: Option<String>,
    },
}

/// One key: absent or holding a value.
pub struct Register;

impl Model for Register {
    type State = Option<String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<String> {
        None
    }

    fn step(
        &self,
        state: &Option<String>,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Option<String>> {
        match (input, output) {
            (KvInput::Get, None) => Some(state.clone()),
            (KvInput::Get, Some(KvOutput::Value(v))) => (v == state).then(|| state.clone()),
            (KvInput::Put(v), None | Some(KvOutput::Done)) => Some(Some(v.clone())),
            (KvInput::Delete, None | Some(KvOutput::Done)) => Some(None),
            (KvInput::Cas { expected, new }, None) => Some(if state == expected {
                Some(new.clone())
            } else {
                state.clone()
            }),
            (KvInput::Cas { expected, new }, Some(KvOutput::Cas { swapped, current })) => {
                if current != state || *swapped != (state == expected) {
                    return None;
                }
                Some(if *swapped {
                    Some(new.clone())
                } else {
                    state.clone()
                })
            }
            _ => None,
        }
    }
}
