//! What travels on the peer port: the message types and their binary encoding.
//!
//! Peer bodies are MessagePack (`rmp-serde`, with field names, so enums tagged by name and
//! `serde_json::Value` inside log entries round-trip exactly). JSON would do, but it is about
//! three times larger and slower to write for the same entry, and snapshots would travel as
//! arrays of numbers.
//!
//! Two bodies are framed by hand because their size matters:
//! - AppendEntries: a header (vote, previous log id, leader commit, entry count), then each
//!   entry encoded on its own. Encoding entries one by one is what lets the sender cap a
//!   request by bytes ([`encode_append`]) instead of by entry count.
//! - Snapshots: a header (vote and snapshot metadata), then the snapshot file's bytes as they
//!   are on disk, streamed.
//!
//! Each frame is `u32 length (little-endian) + MessagePack`.
//!
//! Replication runs over a long-lived stream rather than one HTTP request per AppendEntries
//! (see [`stream`]): an HTTP/1.1 upgrade turns a peer connection into a pipe of frames, the
//! leader sends requests without waiting for earlier answers, and the follower answers each in
//! order once its log is durable.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogId, LogIndex, NodeId, Op, SnapshotMeta, TypeConfig, Vote};

/// MIME type of peer bodies.
pub const CONTENT_TYPE: &str = "application/msgpack";
/// Header naming the node a peer request is for.
pub const TARGET_HEADER: &str = "x-kv-target";
/// Header naming the cluster a peer request belongs to: the sender's cluster id (see
/// `cluster`). Absent from a node that has none yet, which can only probe, take part in a
/// formation, and ask to be admitted.
pub const CLUSTER_HEADER: &str = "x-kv-cluster";

/// Peer routes.
pub mod route {
    /// AppendEntries (framed, see [`super::encode_append`]).
    pub const APPEND: &str = "/raft/append";
    /// Upgrade to a stream of AppendEntries (see [`super::stream`]).
    pub const STREAM: &str = "/raft/stream";
    /// RequestVote.
    pub const VOTE: &str = "/raft/vote";
    /// Pre-vote: would the peer grant a vote?
    pub const PRE_VOTE: &str = "/raft/pre-vote";
    /// A whole snapshot, streamed.
    pub const SNAPSHOT: &str = "/raft/snapshot";
    /// Hand leadership to a node.
    pub const TRANSFER_LEADER: &str = "/raft/transfer-leader";
    /// Who are you, and do you hold Raft state?
    pub const PROBE: &str = "/raft/probe";
    /// Take part in forming the cluster with this id (see `cluster`).
    pub const ADOPT: &str = "/raft/adopt";
    /// Admit the sending node (a learner to be, or a member that lost its data); any member
    /// forwards it to the leader.
    pub const ADMIT: &str = "/raft/admit";
    /// A membership request (`/admin/members`, leader transfer) forwarded to the leader.
    pub const FORWARD_ADMIN: &str = "/forward/admin";
    /// A client write forwarded to the leader.
    pub const FORWARD_WRITE: &str = "/forward/write";
    /// A read index asked of the leader.
    pub const FORWARD_READ_INDEX: &str = "/forward/read-index";
}

/// Why a peer body could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable peer message: {0}")]
pub struct DecodeError(pub String);

/// Encode a peer message.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Every type sent here is plain data; encoding into memory cannot fail for them.
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

/// Decode a peer message.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|e| DecodeError(e.to_string()))
}

/// A forwarded write, as sent over the peer port.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardWrite {
    /// The write.
    pub op: Op,
    /// Its size in bytes, for batching.
    pub size: usize,
}

/// Answer to a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadIndex {
    /// Apply at least this far before reading.
    pub index: Option<LogIndex>,
}

/// Answer to a probe: who a peer is and whether it already belongs to a running cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReply {
    /// The peer's id.
    pub node_id: NodeId,
    /// The peer's client address.
    pub http: String,
    /// True when the peer holds any Raft state (vote, log or snapshot).
    pub initialized: bool,
    /// The peer's cluster id: adopted for a formation under way, or that of its cluster.
    #[serde(default)]
    pub cluster: Option<String>,
    /// The fingerprint of the peer's seed (empty for a node started with `--join`).
    #[serde(default)]
    pub seed: String,
}

/// Take part in forming cluster `cluster` from the seed with fingerprint `seed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Adopt {
    /// The new cluster's id.
    pub cluster: String,
    /// The fingerprint of the forming node's seed; must equal the receiver's.
    pub seed: String,
}

/// A node asking to be admitted to the cluster (see `membership`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admit {
    /// Its id.
    pub id: NodeId,
    /// Its client address.
    pub http: String,
    /// Its peer address.
    pub raft: String,
    /// True for `--join`: add it as a learner when it is not a member. Otherwise only a
    /// member is admitted (a node started from a seed is never added by surprise).
    pub join: bool,
}

/// The leader's answer to [`Admit`]: the node is a learner of this cluster now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admitted {
    /// The cluster's id.
    pub cluster: String,
    /// The admitting leader's vote: the admitted node records it before it accepts any
    /// request, so that no older leader can count on it.
    pub vote: Vote,
    /// It was a voter that lost its data (or never had any): it was made a learner and the
    /// leader promotes it again once it has caught up.
    pub was_voter: bool,
}

#[derive(Serialize, Deserialize)]
struct AppendHeader {
    vote: Vote,
    prev_log_id: Option<LogId>,
    leader_commit: Option<LogId>,
    entries: u32,
}

/// The header of a streamed snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The sending leader's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// Length of the snapshot bytes that follow.
    pub len: u64,
}

fn push_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Encode a frame (length + MessagePack).
pub fn frame<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    push_frame(&mut out, &encode(value));
    out
}

/// Split one frame off the front of `bytes`: the frame's content and the rest.
pub fn split_frame(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(len)?;
    Some((bytes.get(4..end)?, bytes.get(end..)?))
}

/// Encode an AppendEntries request, taking entries in order while the body stays within
/// `max_bytes` (always at least one). Returns the body and how many entries it holds.
pub fn encode_append(
    req: &openraft::raft::AppendEntriesRequest<TypeConfig>,
    max_bytes: usize,
) -> (Vec<u8>, usize) {
    let mut entries = Vec::new();
    let mut taken = 0usize;
    for entry in &req.entries {
        let bytes = encode(entry);
        if taken > 0 && entries.len() + bytes.len() + 4 > max_bytes {
            break;
        }
        push_frame(&mut entries, &bytes);
        taken += 1;
    }
    let header = AppendHeader {
        vote: req.vote,
        prev_log_id: req.prev_log_id,
        leader_commit: req.leader_commit,
        entries: taken as u32,
    };
    let mut out = frame(&header);
    out.extend_from_slice(&entries);
    (out, taken)
}

/// Decode what [`encode_append`] wrote.
pub fn decode_append(bytes: &[u8]) -> Result<openraft::raft::AppendEntriesRequest<TypeConfig>, DecodeError> {
    let truncated = || DecodeError("the AppendEntries body is truncated".into());
    let (head, mut rest) = split_frame(bytes).ok_or_else(truncated)?;
    let header: AppendHeader = decode(head)?;
    let mut entries: Vec<Entry> = Vec::with_capacity((header.entries as usize).min(1 << 16));
    for _ in 0..header.entries {
        let (entry, tail) = split_frame(rest).ok_or_else(truncated)?;
        entries.push(decode(entry)?);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(DecodeError(
            "the AppendEntries body has bytes after its entries".into(),
        ));
    }
    Ok(openraft::raft::AppendEntriesRequest {
        vote: header.vote,
        prev_log_id: header.prev_log_id,
        leader_commit: header.leader_commit,
        entries,
    })
}

/// Split an AppendEntries request into parts whose bodies stay within `max_bytes` each (a
/// single larger entry goes alone); every part names the last entry of the one before it as its
/// previous log id. Returns the encoded bodies.
pub fn encode_append_parts(
    req: &openraft::raft::AppendEntriesRequest<TypeConfig>,
    max_bytes: usize,
) -> Vec<Vec<u8>> {
    let (first, mut taken) = encode_append(req, max_bytes);
    let mut parts = vec![first];
    while taken < req.entries.len() {
        let rest = openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote: req.vote,
            prev_log_id: Some(req.entries[taken - 1].log_id),
            leader_commit: req.leader_commit,
            entries: req.entries[taken..].to_vec(),
        };
        let (body, n) = encode_append(&rest, max_bytes);
        parts.push(body);
        taken += n;
    }
    parts
}

/// The replication stream: frames over an upgraded HTTP/1.1 connection.
///
/// The leader opens it with `POST /raft/stream` carrying `Connection: upgrade` and
/// `Upgrade: kv-raft-stream` plus the usual identity headers, and the follower answers `101`.
/// From then on the leader writes one frame per AppendEntries part (the body of
/// [`encode_append`]) and the follower writes one frame per part, in order: the MessagePack of
/// openraft's `StreamAppendResult`, sent once the part is durable in its log.
pub mod stream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The protocol name in the `Upgrade` header.
    pub const PROTOCOL: &str = "kv-raft-stream";
    /// Largest frame accepted: a generous bound on one part, so that a corrupt length cannot
    /// make a reader allocate without limit.
    pub const MAX_FRAME: usize = 64 * 1024 * 1024;

    /// Write frames with one write call.
    pub async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
        w: &mut W,
        bodies: &[Vec<u8>],
    ) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(bodies.iter().map(|b| b.len() + 4).sum());
        for body in bodies {
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(body);
        }
        w.write_all(&buf).await
    }

    /// Read one frame of at most [`MAX_FRAME`] bytes; `None` at a clean end of the stream.
    pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
        read_frame_limited(r, MAX_FRAME).await
    }

    /// Read one frame of at most `max` bytes; `None` at a clean end of the stream. A larger
    /// length is refused before anything is allocated for it.
    pub async fn read_frame_limited<R: tokio::io::AsyncRead + Unpin>(
        r: &mut R,
        max: usize,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a replication frame of {len} bytes is larger than {max}"),
            ));
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Batch, Command};
    use openraft::EntryPayload;
    use serde_json::json;

    fn entry(index: u64, value: serde_json::Value) -> Entry {
        Entry {
            log_id: LogId::new(
                openraft::impls::leader_id_adv::LeaderId { term: 3, node_id: 1 },
                index,
            ),
            payload: EntryPayload::Normal(Batch {
                ts_ms: 7,
                ops: vec![Op {
                    key: "k".into(),
                    cmd: Command::Append(value),
                    idem: None,
                    cond: None,
                }],
            }),
        }
    }

    #[test]
    fn append_requests_round_trip_and_are_capped_by_bytes() {
        let values = [
            json!({"a": [1, 2.5, null, true]}),
            json!("x".repeat(1000)),
            json!(u64::MAX),
        ];
        let req = openraft::raft::AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: values
                .iter()
                .enumerate()
                .map(|(i, v)| entry(i as u64 + 1, v.clone()))
                .collect(),
        };
        let (all, n) = encode_append(&req, usize::MAX);
        assert_eq!(n, 3);
        let back = decode_append(&all).expect("decodes");
        assert_eq!(
            (back.vote, back.prev_log_id, back.leader_commit, back.entries),
            (req.vote, req.prev_log_id, req.leader_commit, req.entries.clone())
        );

        let (some, n) = encode_append(&req, 600);
        assert_eq!(n, 1, "the second entry would pass the byte budget");
        assert_eq!(decode_append(&some).expect("decodes").entries, req.entries[..1]);
        let (one, n) = encode_append(&req, 1);
        assert_eq!(n, 1, "at least one entry goes even when it alone is too large");
        assert!(decode_append(&one).is_ok());

        assert!(decode_append(&all[..all.len() - 1]).is_err());

        // Split into parts: each within the budget (bar a lone large entry), chained by their
        // previous log ids, together carrying every entry once.
        let parts = encode_append_parts(&req, 600);
        assert_eq!(parts.len(), 3);
        let decoded: Vec<_> = parts.iter().map(|p| decode_append(p).expect("part")).collect();
        assert_eq!(decoded[0].prev_log_id, None);
        assert_eq!(decoded[1].prev_log_id, Some(req.entries[0].log_id));
        assert_eq!(decoded[2].prev_log_id, Some(req.entries[1].log_id));
        let all_entries: Vec<_> = decoded.into_iter().flat_map(|d| d.entries).collect();
        assert_eq!(all_entries, req.entries);
        assert!(decode_append(b"\xff\xff\xff\xff").is_err());
    }
}
