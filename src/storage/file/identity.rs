//! `node.id`: which member of which cluster a data directory belongs to.
//!
//! A node started with another node's data directory (a wrong `--node-id` or
//! `--data-dir`) would carry that node's votes and log under a different
//! identity, and two members could then vote twice in one term. The first
//! start records the owner; every later start checks it.
//!
//! # File format
//!
//! All integers are little-endian.
//!
//! ```text
//!   0  magic      8 bytes  "KVAPPNID"
//!   8  version    u32      1
//!   12 node id    u64
//!   20 members    u64      size of the cluster
//!   28 length     u32      length of the cluster list that follows
//!   32 cluster    UTF-8    the members' Raft addresses, comma-separated
//!   ...crc        u32      CRC-32 of everything before it
//! ```

use std::path::Path;

use super::{check_checksummed, corrupt_at, read_file, replace_file, u32_at, u64_at};
use crate::{Error, NodeId, Result};

const MAGIC: [u8; 8] = *b"KVAPPNID";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
/// Far larger than any real cluster list; bounds what a damaged file makes
/// us read.
const MAX_FILE: u64 = 1 << 20;

/// The owner of a data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node: NodeId,
    pub members: u64,
    /// The members' Raft addresses, comma-separated, as the node was started.
    pub cluster: String,
}

impl Identity {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + self.cluster.len() + 4);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.node.to_le_bytes());
        b.extend_from_slice(&self.members.to_le_bytes());
        b.extend_from_slice(&(self.cluster.len() as u32).to_le_bytes());
        b.extend_from_slice(self.cluster.as_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(path: &Path, b: &[u8]) -> Result<Identity> {
        let body_end = check_checksummed(
            path,
            b,
            &MAGIC,
            "kvapp-c node identity file",
            VERSION,
            HEADER_LEN,
        )?;
        let corrupt = |offset: usize, reason: String| corrupt_at(path, offset, reason);
        let len = u32_at(b, 28) as usize;
        if HEADER_LEN + len != body_end {
            return Err(corrupt(
                28,
                format!("cluster list of {len} bytes does not fill the file"),
            ));
        }
        let cluster = String::from_utf8(b[HEADER_LEN..body_end].to_vec())
            .map_err(|_| corrupt(HEADER_LEN, "cluster list is not UTF-8".into()))?;
        Ok(Identity {
            node: u64_at(b, 12),
            members: u64_at(b, 20),
            cluster,
        })
    }
}

/// Records `me` as the owner of the directory holding `path` if nobody is
/// recorded yet; otherwise checks that the recorded owner is `me`. A node id
/// or cluster size that differs is an error; a changed address list (the
/// same members moved to new addresses) is logged and recorded.
pub(super) fn claim(path: &Path, me: &Identity) -> Result<()> {
    let Some(bytes) = read_file(path, MAX_FILE)? else {
        return replace_file(path, &me.encode());
    };
    let owner = Identity::decode(path, &bytes)?;
    let dir = path.parent().unwrap_or(Path::new(".")).display();
    if owner.node != me.node || owner.members != me.members {
        return Err(Error::Config(format!(
            "data directory {dir} belongs to node {} of a {}-node cluster, not to node {} of \
             a {}-node cluster; check --node-id and --data-dir",
            owner.node, owner.members, me.node, me.members
        )));
    }
    if owner.cluster != me.cluster {
        ::log::warn!(
            "data directory {dir} was used with the cluster {}; now {}",
            owner.cluster,
            me.cluster
        );
        return replace_file(path, &me.encode());
    }
    Ok(())
}
