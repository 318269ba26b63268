//! The leader's view of one follower's log: how far it is known to match,
//! where to send next, and how much is in flight.
//!
//! A follower is in one of three states:
//!
//! - **Probe**: the leader does not know where the follower's log stops
//!   matching. It sends one append at a time (from `next`) and waits for the
//!   answer, or for the next heartbeat if it was lost; each rejection moves
//!   `next` back using the follower's conflict hint.
//! - **Replicate**: the follower's log is known to match through `matched`.
//!   The leader streams appends optimistically, advancing `next` as it sends,
//!   with at most `max_inflight` unacknowledged messages.
//! - **Snapshot**: the follower needs entries the leader's log no longer
//!   holds. The leader sends it a snapshot of its state machine, one piece
//!   at a time, and streams appends again once the follower acknowledges
//!   the snapshot's index.
//!
//! Invariants kept here:
//!
//! - `matched < next`: `matched` only grows (within one leadership), and
//!   `next` never goes back to or below it.
//! - In Replicate, the in-flight list holds the last index of each
//!   unacknowledged append, increasing, and never more than `max_inflight`.
//! - A rejection or an acknowledgement that refers to an older message than
//!   the state already reflects is recognised as stale and changes nothing.

use std::collections::VecDeque;

use crate::LogIndex;

/// The replication state of one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Looking for the match point, one append at a time. `paused` is set
    /// while an append is unanswered.
    Probe { paused: bool },
    /// Streaming appends; `inflight` holds each in-flight append's last index.
    Replicate { inflight: VecDeque<LogIndex> },
    /// Sending a snapshot covering entries through `index` (0 while the
    /// leader waits for one), the next piece starting at byte `offset`;
    /// `paused` while a piece is unanswered.
    Snapshot {
        index: LogIndex,
        offset: u64,
        paused: bool,
    },
}

/// One follower's replication progress, kept by the leader.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The highest index known to match the leader's log (durable there).
    pub matched: LogIndex,
    /// The next index to send.
    pub next: LogIndex,
    /// Probe or Replicate.
    pub state: ProgressState,
    /// Whether the follower answered anything since the last quorum check.
    pub recent_active: bool,
    /// The highest read round the follower has acknowledged.
    pub read_ack: u64,
    /// Heartbeats since `matched` last advanced while entries were
    /// outstanding; used to detect lost appends in Replicate.
    pub stalled_heartbeats: u32,
}

impl Progress {
    /// A follower about which nothing is known yet: probe from `next`.
    pub fn new(next: LogIndex) -> Self {
        Progress {
            matched: 0,
            next: next.max(1),
            state: ProgressState::Probe { paused: false },
            recent_active: false,
            read_ack: 0,
            stalled_heartbeats: 0,
        }
    }

    /// Whether the leader may send an append now, given its last index.
    /// A probe is sent even when there is nothing new (it doubles as a
    /// heartbeat); replication only sends new entries.
    pub fn can_send(&self, last_index: LogIndex, max_inflight: usize) -> bool {
        match &self.state {
            ProgressState::Probe { paused } => !paused,
            ProgressState::Replicate { inflight } => {
                self.next <= last_index && inflight.len() < max_inflight
            }
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Records that an append ending at `last` (the last entry sent, or
    /// `next - 1` for an empty probe) has been sent.
    pub fn sent(&mut self, last: LogIndex) {
        match &mut self.state {
            ProgressState::Probe { paused } => *paused = true,
            ProgressState::Replicate { inflight } => {
                if last >= self.next {
                    self.next = last + 1;
                    inflight.push_back(last);
                }
            }
            ProgressState::Snapshot { .. } => {}
        }
    }

    /// Handles an acknowledgement that the follower matches through `index`.
    /// Returns true if `matched` advanced. A probe that finds its match
    /// switches to Replicate.
    pub fn acknowledge(&mut self, index: LogIndex) -> bool {
        if index <= self.matched {
            return false;
        }
        self.matched = index;
        self.next = self.next.max(index + 1);
        self.stalled_heartbeats = 0;
        match &mut self.state {
            ProgressState::Probe { .. } | ProgressState::Snapshot { .. } => self.become_replicate(),
            ProgressState::Replicate { inflight } => {
                while inflight.front().is_some_and(|last| *last <= index) {
                    inflight.pop_front();
                }
            }
        }
        true
    }

    /// Handles a rejection of the append whose previous index was
    /// `rejected`; `retry` is where the follower's hint says to resume.
    /// Returns true if the rejection was current (and `next` moved).
    pub fn reject(&mut self, rejected: LogIndex, retry: LogIndex) -> bool {
        let current = match &self.state {
            // Only the answer to the outstanding probe counts.
            ProgressState::Probe { .. } => rejected + 1 == self.next,
            // Anything at or below the match point answers an older message.
            ProgressState::Replicate { .. } => rejected > self.matched,
            // Answers an append sent before the snapshot started.
            ProgressState::Snapshot { .. } => false,
        };
        if !current {
            return false;
        }
        self.next = retry.clamp(self.matched + 1, rejected.max(self.matched + 1));
        self.become_probe();
        true
    }

    /// Starts streaming from just past the match point.
    pub fn become_replicate(&mut self) {
        self.next = self.matched + 1;
        self.state = ProgressState::Replicate {
            inflight: VecDeque::new(),
        };
    }

    /// Falls back to probing from `next` (clamped above the match point).
    pub fn become_probe(&mut self) {
        self.next = self.next.max(self.matched + 1);
        self.state = ProgressState::Probe { paused: false };
        self.stalled_heartbeats = 0;
    }

    /// Starts sending a snapshot: the follower needs entries from before the
    /// leader's log. The snapshot to send is chosen by
    /// [`Progress::snapshot_from`].
    pub fn become_snapshot(&mut self) {
        self.state = ProgressState::Snapshot {
            index: 0,
            offset: 0,
            paused: false,
        };
        self.stalled_heartbeats = 0;
    }

    /// Sends the snapshot at `index`, from its start unless that is the
    /// snapshot being sent already.
    pub fn snapshot_from(&mut self, snapshot_index: LogIndex) {
        if let ProgressState::Snapshot { index, offset, .. } = &mut self.state
            && *index != snapshot_index
        {
            *index = snapshot_index;
            *offset = 0;
        }
    }

    /// The follower holds the first `received` bytes of the snapshot at
    /// `index`: the next piece starts there. Returns whether that answered
    /// the snapshot being sent.
    pub fn snapshot_received(&mut self, snapshot_index: LogIndex, received: u64) -> bool {
        match &mut self.state {
            ProgressState::Snapshot {
                index,
                offset,
                paused,
            } if *index == snapshot_index => {
                *offset = received;
                *paused = false;
                true
            }
            _ => false,
        }
    }

    /// Called on each heartbeat: lets a paused probe retry, and detects a
    /// replication stream that stopped advancing (appends lost on the way)
    /// by restarting it from the match point after `stall_limit` heartbeats
    /// without progress.
    pub fn on_heartbeat(&mut self, last_index: LogIndex, stall_limit: u32) {
        match &mut self.state {
            // A lost piece of a snapshot is sent again, like a lost probe.
            ProgressState::Probe { paused } | ProgressState::Snapshot { paused, .. } => {
                *paused = false
            }
            ProgressState::Replicate { .. } => {
                if self.matched >= last_index {
                    self.stalled_heartbeats = 0;
                    return;
                }
                self.stalled_heartbeats += 1;
                if self.stalled_heartbeats >= stall_limit {
                    self.next = self.matched + 1;
                    self.become_probe();
                }
            }
        }
    }

    /// Whether the follower is being probed.
    pub fn is_probe(&self) -> bool {
        matches!(self.state, ProgressState::Probe { .. })
    }

    /// Whether the follower needs a snapshot (being sent one, or waiting).
    pub fn is_snapshot(&self) -> bool {
        matches!(self.state, ProgressState::Snapshot { .. })
    }

    /// The index of the snapshot being sent to the follower, if one is.
    pub fn snapshot_index(&self) -> Option<LogIndex> {
        match self.state {
            ProgressState::Snapshot { index, .. } if index != 0 => Some(index),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sends_one_at_a_time() {
        let mut pr = Progress::new(6);
        assert!(pr.can_send(5, 4));
        pr.sent(5);
        assert!(!pr.can_send(5, 4), "a probe waits for its answer");
        assert_eq!(pr.next, 6, "a probe does not advance next");
        pr.on_heartbeat(5, 2);
        assert!(pr.can_send(5, 4), "a heartbeat lets the probe retry");
    }

    #[test]
    fn probe_rejection_moves_next_back_and_stale_ones_are_ignored() {
        let mut pr = Progress::new(11);
        pr.sent(10);
        assert!(pr.reject(10, 4));
        assert_eq!(pr.next, 4);
        assert!(pr.can_send(10, 4));
        // A duplicate of the first rejection arrives late: ignored.
        pr.sent(10);
        assert!(!pr.reject(10, 2));
        assert_eq!(pr.next, 4);
    }

    #[test]
    fn success_switches_probe_to_replicate_and_pipelines() {
        let mut pr = Progress::new(4);
        pr.sent(5);
        assert!(pr.acknowledge(5));
        assert!(!pr.is_probe());
        assert_eq!((pr.matched, pr.next), (5, 6));
        // Three appends in flight, capped at 3.
        for last in [7, 9, 11] {
            assert!(pr.can_send(20, 3));
            pr.sent(last);
        }
        assert_eq!(pr.next, 12);
        assert!(!pr.can_send(20, 3), "the in-flight window is full");
        assert!(pr.acknowledge(9));
        assert!(pr.can_send(20, 3), "acks free the window");
        assert!(!pr.acknowledge(7), "a late ack is stale");
        assert_eq!(pr.matched, 9);
    }

    #[test]
    fn replicate_rejection_falls_back_to_probe_unless_stale() {
        let mut pr = Progress::new(1);
        pr.sent(0);
        pr.acknowledge(5);
        pr.sent(8);
        pr.sent(12);
        assert!(!pr.reject(4, 1), "rejection below the match point is stale");
        assert!(!pr.is_probe());
        assert!(pr.reject(8, 3));
        assert!(pr.is_probe());
        assert_eq!(pr.next, 6, "never back to or below the match point");
    }

    #[test]
    fn stalled_stream_restarts_from_match() {
        let mut pr = Progress::new(1);
        pr.sent(0);
        pr.acknowledge(2);
        pr.sent(10);
        pr.on_heartbeat(10, 2);
        assert!(!pr.is_probe());
        pr.on_heartbeat(10, 2);
        assert!(pr.is_probe());
        assert_eq!(pr.next, 3);
        // An up-to-date follower is never considered stalled.
        let mut pr = Progress::new(1);
        pr.sent(0);
        pr.acknowledge(10);
        for _ in 0..5 {
            pr.on_heartbeat(10, 2);
        }
        assert!(!pr.is_probe());
    }
}
