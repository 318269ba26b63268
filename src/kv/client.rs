//! The blocking client. (Skeleton: implementation in progress.)

/// Result of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    pub swapped: bool,
    pub current: Option<Vec<u8>>,
}

/// A blocking client for a kvapp-c cluster.
pub struct Client {}
