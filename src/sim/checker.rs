//! The safety properties checked after every simulation step.
//!
//! The checker keeps a global record of what the cluster has done so far and
//! compares every node's state against it as soon as that node changes:
//!
//! - **Election safety**: at most one leader per term, ever. Terms never go
//!   down on a node (across crashes too) and a node never changes the vote
//!   it cast in a term.
//! - **Log matching**: the first node seen holding an entry at `(index,
//!   term)` fixes the prefix hash there; every later holder of `(index,
//!   term)`, on any node at any time, must hold the same prefix.
//! - **Committed entries never change or vanish**: the committed record grows
//!   from every node's commit index; a node's log must agree with it through
//!   the node's commit index, a node never rewrites an entry at or below its
//!   own commit index, and a quorum of nodes must hold every committed entry
//!   in its *durable* log image (checked on each commit advance and each
//!   crash, the only events that could break it).
//! - **Leader completeness**: an entry committed in term `T` is in the log of
//!   every leader of a later term, checked when a node takes office and when
//!   a commit is first observed.
//! - **State machine safety**: every node applies committed entries in order,
//!   and the entry it applies at an index is the committed one; hence all
//!   applied sequences are prefixes of one another. A client command (each
//!   is proposed once) is applied at one index only.
//! - **Linearizable reads**: a read returns a state at least as new as every
//!   write acknowledged, and every read completed, before it was issued.
//!
//! "Committed in term `T`": when a node's commit index first covers an index
//! the checker notes the node's term; the smallest such term is an upper
//! bound on the term the entry was committed in, so completeness is demanded
//! only where it must hold.

use std::collections::HashMap;
use std::fmt;

use crate::raft::Role;
use crate::storage::Entry;
use crate::{LogIndex, NodeId, Term};

use super::log::SimLog;

/// Which property failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    TwoLeaders,
    TermDecreased,
    VoteChanged,
    LogMatching,
    CommittedChanged,
    CommittedLost,
    LeaderCompleteness,
    AppliedDiverged,
    StaleRead,
    /// No leader or no progress within the bound after faults stopped.
    Liveness,
    /// The node returned an error or the harness met an impossible state.
    NodeError,
}

impl ViolationKind {
    /// Whether this is a safety property (as opposed to liveness or an
    /// error in the run itself).
    pub fn is_safety(&self) -> bool {
        !matches!(self, ViolationKind::Liveness | ViolationKind::NodeError)
    }
}

/// A failed check, with the details needed to understand it.
#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: ViolationKind,
    pub detail: String,
}

impl Violation {
    pub fn new(kind: ViolationKind, detail: impl Into<String>) -> Self {
        Violation {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

type Check<T = ()> = Result<T, Violation>;

fn fail<T>(kind: ViolationKind, detail: String) -> Check<T> {
    Err(Violation::new(kind, detail))
}

/// One committed index, as first observed.
#[derive(Clone, Copy, Debug)]
struct Committed {
    term: Term,
    hash: u64,
    /// Upper bound on the term it was committed in.
    commit_term: Term,
}

/// What the checker last saw of one node.
#[derive(Clone, Copy, Debug)]
struct View {
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    commit: LogIndex,
    /// Just restarted: its whole log is looked at once, not as a rewrite.
    reopened: bool,
}

/// The result of observing a node's role and term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleChange {
    pub changed: bool,
    pub became_leader: bool,
}

/// Global record of the run and the per-node views.
pub struct Checker {
    quorum: usize,
    ids: Vec<NodeId>,
    leaders: HashMap<Term, NodeId>,
    entries: HashMap<(LogIndex, Term), u64>,
    committed: Vec<Committed>,
    views: Vec<View>,
    /// Command number -> the index it was applied at.
    commands: HashMap<u64, LogIndex>,
    /// The longest list a read must see: the largest position of an
    /// acknowledged write or value of a completed read.
    read_floor: u64,
}

impl Checker {
    /// A checker for nodes `ids` (index `i` of every per-node slice is node
    /// `ids[i]`).
    pub fn new(ids: Vec<NodeId>) -> Self {
        let view = View {
            term: 0,
            vote: None,
            role: Role::Follower,
            commit: 0,
            reopened: false,
        };
        Checker {
            quorum: ids.len() / 2 + 1,
            views: vec![view; ids.len()],
            ids,
            leaders: HashMap::new(),
            entries: HashMap::new(),
            committed: Vec::new(),
            commands: HashMap::new(),
            read_floor: 0,
        }
    }

    /// Number of terms that had a leader.
    pub fn leaders_elected(&self) -> u64 {
        self.leaders.len() as u64
    }

    /// Highest index known committed.
    pub fn committed_len(&self) -> LogIndex {
        self.committed.len() as LogIndex
    }

    /// The term of the committed entry at `index`.
    pub fn committed_term(&self, index: LogIndex) -> Option<Term> {
        self.committed.get(index as usize - 1).map(|c| c.term)
    }

    /// `(term, prefix hash)` of the committed entries from index 1.
    pub fn committed_shadow(&self) -> Vec<(Term, u64)> {
        self.committed.iter().map(|c| (c.term, c.hash)).collect()
    }

    /// A node installs a snapshot through `index` holding the commands
    /// `list`: exactly the commands applied at or below `index`, in order.
    pub fn check_snapshot(&self, i: usize, index: LogIndex, list: &[u64]) -> Check {
        let id = self.ids[i];
        if index > self.committed_len() {
            return fail(
                ViolationKind::AppliedDiverged,
                format!(
                    "n{id} installs a snapshot through {index}, beyond the committed entries ({})",
                    self.committed_len()
                ),
            );
        }
        let mut last = 0;
        for cmd in list {
            match self.commands.get(cmd) {
                Some(&at) if at > last && at <= index => last = at,
                other => {
                    return fail(
                        ViolationKind::AppliedDiverged,
                        format!(
                            "n{id} installs a snapshot through {index} holding command {cmd}, \
                             applied at {other:?} (after {last})"
                        ),
                    );
                }
            }
        }
        let expected = self.commands.values().filter(|&&at| at <= index).count();
        if expected != list.len() {
            return fail(
                ViolationKind::AppliedDiverged,
                format!(
                    "n{id} installs a snapshot through {index} holding {} commands, not the {expected} applied there",
                    list.len()
                ),
            );
        }
        Ok(())
    }

    /// The node's last observed commit index.
    pub fn commit_of(&self, i: usize) -> LogIndex {
        self.views[i].commit
    }

    /// Resets the volatile part of the view of a restarted node (its commit
    /// index restarts at the state machine's applied index).
    pub fn restarted(&mut self, i: usize, applied: LogIndex) {
        self.views[i].role = Role::Follower;
        self.views[i].commit = applied;
        self.views[i].reopened = true;
    }

    /// Election safety checks on a node's current role, term and vote.
    pub fn observe_role(
        &mut self,
        i: usize,
        role: Role,
        term: Term,
        vote: Option<NodeId>,
    ) -> Check<RoleChange> {
        let id = self.ids[i];
        let v = self.views[i];
        if term < v.term {
            return fail(
                ViolationKind::TermDecreased,
                format!("n{id} went from term {} back to {term}", v.term),
            );
        }
        if term == v.term && v.vote.is_some() && vote != v.vote {
            return fail(
                ViolationKind::VoteChanged,
                format!(
                    "n{id} changed its vote in term {term} from {:?} to {vote:?}",
                    v.vote
                ),
            );
        }
        let mut became_leader = false;
        if role == Role::Leader {
            let holder = *self.leaders.entry(term).or_insert(id);
            if holder != id {
                return fail(
                    ViolationKind::TwoLeaders,
                    format!("n{id} and n{holder} both lead term {term}"),
                );
            }
            became_leader = v.role != Role::Leader || v.term != term;
        }
        let changed = role != v.role || term != v.term;
        let view = &mut self.views[i];
        view.term = term;
        view.vote = vote;
        view.role = role;
        Ok(RoleChange {
            changed,
            became_leader,
        })
    }

    /// Log matching over the entries a node changed since the last look,
    /// and no rewrite at or below the node's own commit index.
    pub fn check_log_change(&mut self, i: usize, log: &SimLog) -> Check {
        let Some(from) = log.take_dirty() else {
            return Ok(());
        };
        let id = self.ids[i];
        let commit = self.views[i].commit;
        let reopened = std::mem::replace(&mut self.views[i].reopened, false);
        if from <= commit && !reopened {
            return fail(
                ViolationKind::CommittedChanged,
                format!(
                    "n{id} rewrote its log from index {from}, at or below its commit index {commit}"
                ),
            );
        }
        for index in from..=log.last() {
            let (Some(term), Some(hash)) = (log.term_at(index), log.hash_at(index)) else {
                break;
            };
            let known = *self.entries.entry((index, term)).or_insert(hash);
            if known != hash {
                return fail(
                    ViolationKind::LogMatching,
                    format!(
                        "n{id} holds an entry at index {index} term {term} whose log prefix differs from another node's entry at the same index and term"
                    ),
                );
            }
        }
        Ok(())
    }

    /// Number of committed entries whose commit term is below `term`.
    fn committed_before(&self, term: Term) -> usize {
        self.committed.partition_point(|c| c.commit_term < term)
    }

    /// Leader completeness for a node that just took office at `term`.
    pub fn check_new_leader(&self, i: usize, term: Term, log: &SimLog) -> Check {
        let k = self.committed_before(term);
        if k == 0 {
            return Ok(());
        }
        if log.hash_at(k as LogIndex) != Some(self.committed[k - 1].hash) {
            let missing = (1..=k)
                .find(|&j| log.hash_at(j as LogIndex) != Some(self.committed[j - 1].hash))
                .unwrap_or(k);
            return fail(
                ViolationKind::LeaderCompleteness,
                format!(
                    "n{} leads term {term} without committed entry {missing} (term {}, committed by term {}); its log ends at {}",
                    self.ids[i],
                    self.committed[missing - 1].term,
                    self.committed[missing - 1].commit_term,
                    log.last()
                ),
            );
        }
        Ok(())
    }

    /// Checks and records a node's commit index. Returns the previous
    /// commit index when it advanced.
    pub fn observe_commit(
        &mut self,
        i: usize,
        term: Term,
        commit: LogIndex,
        log: &SimLog,
    ) -> Check<Option<LogIndex>> {
        let id = self.ids[i];
        let before = self.views[i].commit;
        if commit <= before {
            return Ok(None);
        }
        if commit > log.last() {
            return fail(
                ViolationKind::CommittedChanged,
                format!(
                    "n{id} commit index {commit} is beyond its last entry {}",
                    log.last()
                ),
            );
        }
        let overlap = commit.min(self.committed_len());
        if overlap > 0 && log.hash_at(overlap) != Some(self.committed[overlap as usize - 1].hash) {
            let first = (1..=overlap)
                .find(|&j| log.hash_at(j) != Some(self.committed[j as usize - 1].hash))
                .unwrap_or(overlap);
            return fail(
                ViolationKind::CommittedChanged,
                format!(
                    "n{id} commits through {commit} but its entry {first} (term {:?}) differs from the committed one (term {})",
                    log.term_at(first),
                    self.committed[first as usize - 1].term
                ),
            );
        }
        // A lower term learning of a commit lowers the bound (terms along
        // the record never decrease, so stop at the first that is lower).
        for c in self.committed[..overlap as usize].iter_mut().rev() {
            if c.commit_term <= term {
                break;
            }
            c.commit_term = term;
        }
        for index in self.committed_len() + 1..=commit {
            let (Some(t), Some(hash)) = (log.term_at(index), log.hash_at(index)) else {
                break;
            };
            self.committed.push(Committed {
                term: t,
                hash,
                commit_term: term,
            });
        }
        self.views[i].commit = commit;
        Ok(Some(before))
    }

    /// Leader completeness for a sitting leader at `term` against the
    /// entries committed in earlier terms.
    pub fn check_sitting_leader(&self, i: usize, term: Term, log: &SimLog) -> Check {
        self.check_new_leader(i, term, log)
    }

    /// A quorum must durably hold the committed prefix. `durable` yields
    /// every node's durable prefix hashes.
    pub fn check_durable<'a>(&self, durable: impl Iterator<Item = &'a [u64]>) -> Check {
        let c = self.committed.len();
        if c == 0 {
            return Ok(());
        }
        let want = self.committed[c - 1].hash;
        let holders = durable
            .filter(|d| d.get(c - 1).copied() == Some(want))
            .count();
        if holders < self.quorum {
            return fail(
                ViolationKind::CommittedLost,
                format!(
                    "committed entry {c} (term {}) is durable on only {holders} nodes, fewer than a quorum of {}",
                    self.committed[c - 1].term,
                    self.quorum
                ),
            );
        }
        Ok(())
    }

    /// A node applies `entry`, having applied through `applied` before.
    pub fn check_apply(&self, i: usize, applied: LogIndex, entry: &Entry, log: &SimLog) -> Check {
        let id = self.ids[i];
        if entry.index != applied + 1 {
            return fail(
                ViolationKind::AppliedDiverged,
                format!("n{id} applies entry {} right after {applied}", entry.index),
            );
        }
        let Some(c) = self.committed.get(entry.index as usize - 1) else {
            return fail(
                ViolationKind::AppliedDiverged,
                format!(
                    "n{id} applies entry {} which nobody has committed (committed through {})",
                    entry.index,
                    self.committed_len()
                ),
            );
        };
        if entry.index > self.views[i].commit
            || log.term_at(entry.index) != Some(entry.term)
            || log.hash_at(entry.index) != Some(c.hash)
        {
            return fail(
                ViolationKind::AppliedDiverged,
                format!(
                    "n{id} applies entry {} of term {}, but the committed entry there has term {} (node commit {})",
                    entry.index, entry.term, c.term, self.views[i].commit
                ),
            );
        }
        Ok(())
    }

    /// Every client command is proposed once, so it must be applied at one
    /// index only, by every node.
    pub fn check_command(&mut self, node: NodeId, index: LogIndex, cmd: u64) -> Check {
        let first = *self.commands.entry(cmd).or_insert(index);
        if first != index {
            return fail(
                ViolationKind::AppliedDiverged,
                format!(
                    "n{node} applies command #{cmd} at index {index}, but it was applied at index {first} before"
                ),
            );
        }
        Ok(())
    }

    /// The floor a read issued now must reach.
    pub fn read_floor(&self) -> u64 {
        self.read_floor
    }

    /// A write was acknowledged at list position `position`.
    pub fn write_acked(&mut self, position: u64) {
        self.read_floor = self.read_floor.max(position);
    }

    /// A read issued with `floor` returned a list of length `value`.
    pub fn check_read(&mut self, node: NodeId, id: u64, value: u64, floor: u64) -> Check {
        if value < floor {
            return fail(
                ViolationKind::StaleRead,
                format!(
                    "read r{id} served by n{node} returned a list of length {value}, but a write or read completed before it was issued had seen length {floor}"
                ),
            );
        }
        self.read_floor = self.read_floor.max(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LogStorage;
    use crate::storage::memory::MemoryLog;

    fn log_of(entries: &[(Term, &[u8])]) -> SimLog {
        let mut log = SimLog::open(MemoryLog::new(), &[]).unwrap();
        let es: Vec<Entry> = entries
            .iter()
            .enumerate()
            .map(|(i, (term, data))| Entry {
                index: i as LogIndex + 1,
                term: *term,
                data: data.to_vec(),
            })
            .collect();
        log.append(&es).unwrap();
        log.sync().unwrap();
        log
    }

    fn kind<T: fmt::Debug>(r: Check<T>) -> ViolationKind {
        r.expect_err("the check should fail").kind
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let mut c = Checker::new(vec![1, 2, 3]);
        c.observe_role(0, Role::Leader, 2, Some(1)).unwrap();
        c.observe_role(1, Role::Leader, 3, Some(2)).unwrap();
        assert_eq!(
            kind(c.observe_role(2, Role::Leader, 2, Some(3))),
            ViolationKind::TwoLeaders
        );
    }

    #[test]
    fn terms_never_go_back_and_votes_never_change() {
        let mut c = Checker::new(vec![1, 2, 3]);
        c.observe_role(0, Role::Follower, 4, Some(2)).unwrap();
        assert_eq!(
            kind(c.observe_role(0, Role::Follower, 4, Some(3))),
            ViolationKind::VoteChanged
        );
        assert_eq!(
            kind(c.observe_role(0, Role::Follower, 3, None)),
            ViolationKind::TermDecreased
        );
    }

    #[test]
    fn same_index_and_term_with_different_prefixes_breaks_log_matching() {
        let mut c = Checker::new(vec![1, 2, 3]);
        c.check_log_change(0, &log_of(&[(1, b"a"), (1, b"b")]))
            .unwrap();
        c.check_log_change(1, &log_of(&[(1, b"a")])).unwrap();
        assert_eq!(
            kind(c.check_log_change(2, &log_of(&[(1, b"x"), (1, b"b")]))),
            ViolationKind::LogMatching
        );
    }

    #[test]
    fn committed_entries_never_change_and_stay_on_a_quorum() {
        let mut c = Checker::new(vec![1, 2, 3]);
        let a = log_of(&[(1, b"a"), (1, b"b")]);
        let b = log_of(&[(1, b"a"), (2, b"c")]);
        c.check_log_change(0, &a).unwrap();
        c.observe_commit(0, 1, 2, &a).unwrap();
        assert_eq!(
            kind(c.observe_commit(1, 2, 2, &b)),
            ViolationKind::CommittedChanged
        );
        let empty: &[u64] = &[];
        let (da, db) = (a.durable_hashes(), b.durable_hashes());
        c.check_durable([da.as_slice(), da.as_slice(), empty].into_iter())
            .unwrap();
        assert_eq!(
            kind(c.check_durable([da.as_slice(), db.as_slice(), empty].into_iter())),
            ViolationKind::CommittedLost
        );
        // A node may not rewrite at or below its own commit index.
        let mut a2 = a;
        assert_eq!(a2.take_dirty(), None, "the checker has seen all of it");
        a2.truncate_after(1).unwrap();
        a2.append(&[Entry {
            index: 2,
            term: 3,
            data: b"d".to_vec(),
        }])
        .unwrap();
        assert_eq!(
            kind(c.check_log_change(0, &a2)),
            ViolationKind::CommittedChanged
        );
    }

    #[test]
    fn a_later_leader_must_hold_entries_committed_in_earlier_terms() {
        let mut c = Checker::new(vec![1, 2, 3]);
        c.observe_commit(0, 2, 2, &log_of(&[(1, b"a"), (2, b"b")]))
            .unwrap();
        // A leader of term 2 itself need not (it is the one committing);
        // a leader of term 3 must.
        let short = log_of(&[(1, b"a")]);
        c.check_new_leader(1, 2, &short).unwrap();
        assert_eq!(
            kind(c.check_new_leader(1, 3, &short)),
            ViolationKind::LeaderCompleteness
        );
    }

    #[test]
    fn stale_reads_and_commands_applied_twice_are_caught() {
        let mut c = Checker::new(vec![1, 2, 3]);
        c.write_acked(5);
        let floor = c.read_floor();
        c.check_read(1, 1, 5, floor).unwrap();
        assert_eq!(kind(c.check_read(2, 2, 4, floor)), ViolationKind::StaleRead);
        c.check_command(1, 7, 42).unwrap();
        c.check_command(2, 7, 42).unwrap();
        assert_eq!(
            kind(c.check_command(3, 8, 42)),
            ViolationKind::AppliedDiverged
        );
    }
}
