//! What one benchmark client does: which keys it touches, which operation it
//! runs next, and the values it writes.
//!
//! Every value a benchmark writes starts with a tag naming the client and
//! that client's sequence number ([`value_for`]), so that `--verify` can tell
//! which write a value read back came from ([`parse_tag`]).

use std::fmt;
use std::str::FromStr;

use crate::raft::rng::SplitMix64;
use crate::{Error, Result};

/// The mix of operations the clients run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Every operation is a put.
    Put,
    /// Every operation is a linearizable get; all keys are written first.
    Get,
    /// 90% gets, 10% puts; all keys are written first.
    Mixed,
}

impl Workload {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
        }
    }

    /// Whether every key is written once before the measured run, so that
    /// reads find a value.
    pub fn needs_preload(self) -> bool {
        !matches!(self, Workload::Put)
    }

    /// The next operation for a client whose generator is `rng`.
    pub fn next_op(self, rng: &mut Rng) -> OpKind {
        match self {
            Workload::Put => OpKind::Put,
            Workload::Get => OpKind::Get,
            Workload::Mixed => {
                if rng.below(10) == 0 {
                    OpKind::Put
                } else {
                    OpKind::Get
                }
            }
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Workload {
    type Err = Error;

    fn from_str(s: &str) -> Result<Workload> {
        match s {
            "put" => Ok(Workload::Put),
            "get" => Ok(Workload::Get),
            "mixed" => Ok(Workload::Mixed),
            other => Err(Error::Config(format!(
                "unknown workload '{other}'; choose put, get or mixed"
            ))),
        }
    }
}

/// One operation of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A linearizable read of one key.
    Get,
    /// A write of one key.
    Put,
}

/// The name of key number `index`: `key-%08d`.
pub fn key_name(index: u64) -> String {
    format!("key-{index:08}")
}

/// A small, fast, seedable generator: the Raft core's SplitMix64. Each
/// client has its own, so clients never contend on a shared generator.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(SplitMix64::new(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A number in `0..n`, uniform up to a bias below 2^-32 for any `n` a
    /// benchmark uses. `n` must not be zero.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "Rng::below(0)");
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Length of the tag at the start of every value a benchmark writes:
/// `c` + 6 digits of client + `s` + 12 digits of sequence + `|`.
pub const TAG_LEN: usize = 21;

/// The value client `client` writes with its sequence number `seq`: the tag
/// followed by filler up to `size` bytes. Values shorter than [`TAG_LEN`]
/// hold only the start of the tag and cannot be verified.
pub fn value_for(client: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut v = format!(
        "c{:06}s{:012}|",
        client % 1_000_000,
        seq % 1_000_000_000_000
    )
    .into_bytes();
    debug_assert_eq!(v.len(), TAG_LEN);
    if size <= v.len() {
        v.truncate(size);
    } else {
        v.resize(size, b'.');
    }
    v
}

/// The client and sequence number of a value written by [`value_for`], or
/// `None` if `value` does not start with a well-formed tag.
pub fn parse_tag(value: &[u8]) -> Option<(u32, u64)> {
    let tag = value.get(..TAG_LEN)?;
    if tag[0] != b'c' || tag[7] != b's' || tag[TAG_LEN - 1] != b'|' {
        return None;
    }
    let digits = |b: &[u8]| -> Option<u64> {
        b.iter().try_fold(0u64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
        })
    };
    let client = digits(&tag[1..7])?;
    let seq = digits(&tag[8..20])?;
    Some((client as u32, seq))
}
