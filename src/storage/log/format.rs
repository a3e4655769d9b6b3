//! The bytes of one log object: a header, then record groups (or nothing, for a fence).
//!
//! ```text
//! magic "TSLG" | format u8 | kind u8 (1 records, 2 fence) | seq u64 | log id (u16 len + bytes)
//! | shard count u32 | shards u32… (sorted, distinct: whose records the object holds)
//! | body len u32 | body | crc32 of everything before it, u32
//! body (records): group count u32, then per group: record count u32, then records:
//!   shard u32 | epoch i64 | version u64 | op u8 (1 put, 2 delete) | written_at_ms i64
//!   | expires_at_ms i64 (i64::MIN: none) | key (u32 len + bytes) | value (u32 len + bytes)
//! ```
//!
//! All integers are little-endian. A group is one atomic write (a batch): it is in one object
//! or in none. The shard list in the header lets GC decide without reading the body. Decoding
//! checks the CRC (over every byte), the magic, the format and every length, so a torn,
//! damaged or foreign object is an error, never a wrong record.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::shard::ShardId;

const MAGIC: &[u8; 4] = b"TSLG";
const FORMAT: u8 = 1;
const KIND_RECORDS: u8 = 1;
const KIND_FENCE: u8 = 2;
const NO_EXPIRY: i64 = i64::MIN;

/// What a record does to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets the value, expiring at `expires_at_ms` if given.
    Put {
        value: Bytes,
        expires_at_ms: Option<i64>,
    },
    /// Removes the key.
    Delete,
}

/// One write to one key, as its owner accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key's shard.
    pub shard: ShardId,
    /// The owner's claim epoch when it accepted the write.
    pub epoch: i64,
    /// The version the owner assigned (what clients see as the ETag).
    pub version: u64,
    /// When the owner accepted it (wall clock, ms).
    pub written_at_ms: i64,
    /// The key.
    pub key: Bytes,
    /// What it does.
    pub op: Op,
}

/// A decoded log object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Writes: each group is one atomic write.
    Records {
        log: String,
        seq: u64,
        shards: Vec<ShardId>,
        groups: Vec<Vec<Record>>,
    },
    /// The seal a new owner put at `seq`: nothing after it can exist.
    Fence { log: String, seq: u64 },
}

impl Segment {
    /// Its position in its log.
    pub fn seq(&self) -> u64 {
        match self {
            Segment::Records { seq, .. } | Segment::Fence { seq, .. } => *seq,
        }
    }
}

/// Why bytes are not a log object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid log object: {0}")]
pub struct Corrupt(&'static str);

/// Encodes a records object.
pub fn encode_records(log: &str, seq: u64, groups: &[Vec<Record>]) -> Bytes {
    let mut shards: Vec<ShardId> = groups.iter().flatten().map(|r| r.shard).collect();
    shards.sort_unstable();
    shards.dedup();
    let mut body = BytesMut::new();
    body.put_u32_le(len32(groups.len()));
    for group in groups {
        body.put_u32_le(len32(group.len()));
        for r in group {
            put_record(&mut body, r);
        }
    }
    frame(KIND_RECORDS, log, seq, &shards, &body)
}

/// Encodes a fence at `seq` of `log`.
pub fn encode_fence(log: &str, seq: u64) -> Bytes {
    frame(KIND_FENCE, log, seq, &[], &[])
}

fn frame(kind: u8, log: &str, seq: u64, shards: &[ShardId], body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(32 + log.len() + 4 * shards.len() + body.len());
    out.put_slice(MAGIC);
    out.put_u8(FORMAT);
    out.put_u8(kind);
    out.put_u64_le(seq);
    out.put_u16_le(u16::try_from(log.len()).expect("log ids are short"));
    out.put_slice(log.as_bytes());
    out.put_u32_le(len32(shards.len()));
    for s in shards {
        out.put_u32_le(s.0);
    }
    out.put_u32_le(len32(body.len()));
    out.put_slice(body);
    let crc = crc32fast::hash(&out);
    out.put_u32_le(crc);
    out.freeze()
}

fn put_record(out: &mut BytesMut, r: &Record) {
    out.put_u32_le(r.shard.0);
    out.put_i64_le(r.epoch);
    out.put_u64_le(r.version);
    let (op, value, expires) = match &r.op {
        Op::Put {
            value,
            expires_at_ms,
        } => (1, value.clone(), expires_at_ms.unwrap_or(NO_EXPIRY)),
        Op::Delete => (2, Bytes::new(), NO_EXPIRY),
    };
    out.put_u8(op);
    out.put_i64_le(r.written_at_ms);
    out.put_i64_le(expires);
    out.put_u32_le(len32(r.key.len()));
    out.put_slice(&r.key);
    out.put_u32_le(len32(value.len()));
    out.put_slice(&value);
}

/// Lengths are bounded by the object size cap, far below 4 GiB.
fn len32(n: usize) -> u32 {
    u32::try_from(n).expect("log objects stay far below 4 GiB")
}

/// Decodes a log object.
pub fn decode(bytes: Bytes) -> Result<Segment, Corrupt> {
    let mut b = bytes;
    need(&b, 4)?;
    let mut crc = b.split_off(b.len() - 4);
    if crc32fast::hash(&b) != crc.get_u32_le() {
        return Err(Corrupt("checksum"));
    }
    need(&b, 4 + 1 + 1 + 8 + 2)?;
    if &b[..4] != MAGIC {
        return Err(Corrupt("bad magic"));
    }
    b.advance(4);
    if b.get_u8() != FORMAT {
        return Err(Corrupt("unknown format"));
    }
    let kind = b.get_u8();
    let seq = b.get_u64_le();
    let log_len = b.get_u16_le() as usize;
    need(&b, log_len + 4)?;
    let log = String::from_utf8(b.split_to(log_len).to_vec()).map_err(|_| Corrupt("log id"))?;
    let shard_count = b.get_u32_le() as usize;
    need(&b, shard_count.saturating_mul(4) + 4)?;
    let shards: Vec<ShardId> = (0..shard_count).map(|_| ShardId(b.get_u32_le())).collect();
    let body_len = b.get_u32_le() as usize;
    if b.len() != body_len {
        return Err(Corrupt("body length"));
    }
    match kind {
        KIND_FENCE if body_len == 0 && shards.is_empty() => Ok(Segment::Fence { log, seq }),
        KIND_RECORDS => {
            let groups = decode_groups(&mut b)?;
            if b.has_remaining() {
                return Err(Corrupt("trailing bytes"));
            }
            let mut seen: Vec<ShardId> = groups.iter().flatten().map(|r| r.shard).collect();
            seen.sort_unstable();
            seen.dedup();
            if seen != shards {
                return Err(Corrupt("shard list"));
            }
            Ok(Segment::Records {
                log,
                seq,
                shards,
                groups,
            })
        }
        _ => Err(Corrupt("kind")),
    }
}

fn decode_groups(b: &mut Bytes) -> Result<Vec<Vec<Record>>, Corrupt> {
    need(b, 4)?;
    let count = b.get_u32_le() as usize;
    let mut groups = Vec::new();
    for _ in 0..count {
        need(b, 4)?;
        let n = b.get_u32_le() as usize;
        let mut group = Vec::new();
        for _ in 0..n {
            group.push(decode_record(b)?);
        }
        groups.push(group);
    }
    Ok(groups)
}

fn decode_record(b: &mut Bytes) -> Result<Record, Corrupt> {
    need(b, 4 + 8 + 8 + 1 + 8 + 8 + 4)?;
    let shard = ShardId(b.get_u32_le());
    let epoch = b.get_i64_le();
    let version = b.get_u64_le();
    let op = b.get_u8();
    let written_at_ms = b.get_i64_le();
    let expires = b.get_i64_le();
    let key = take(b)?;
    let value = take(b)?;
    let op = match op {
        1 => Op::Put {
            value,
            expires_at_ms: (expires != NO_EXPIRY).then_some(expires),
        },
        2 if value.is_empty() => Op::Delete,
        _ => return Err(Corrupt("op")),
    };
    Ok(Record {
        shard,
        epoch,
        version,
        written_at_ms,
        key,
        op,
    })
}

fn take(b: &mut Bytes) -> Result<Bytes, Corrupt> {
    need(b, 4)?;
    let n = b.get_u32_le() as usize;
    need(b, n)?;
    Ok(b.split_to(n))
}

fn need(b: &Bytes, n: usize) -> Result<(), Corrupt> {
    if b.len() < n {
        Err(Corrupt("truncated"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(shard: u32, version: u64, key: &str, value: Option<&str>) -> Record {
        Record {
            shard: ShardId(shard),
            epoch: 7,
            version,
            written_at_ms: 1_700_000_000_000,
            key: Bytes::copy_from_slice(key.as_bytes()),
            op: match value {
                Some(v) => Op::Put {
                    value: Bytes::copy_from_slice(v.as_bytes()),
                    expires_at_ms: (version % 2 == 0).then_some(1_800_000_000_000),
                },
                None => Op::Delete,
            },
        }
    }

    #[test]
    fn records_and_fences_round_trip() {
        let groups = vec![
            vec![record(3, 10, "a", Some("x")), record(3, 10, "b", None)],
            vec![record(1, 4, "", Some(""))],
        ];
        let bytes = encode_records("gw-1-00ff", 42, &groups);
        assert_eq!(
            decode(bytes).unwrap(),
            Segment::Records {
                log: "gw-1-00ff".into(),
                seq: 42,
                shards: vec![ShardId(1), ShardId(3)],
                groups,
            }
        );
        let fence = decode(encode_fence("gw-1-00ff", 43)).unwrap();
        assert_eq!(fence.seq(), 43);
        assert!(matches!(fence, Segment::Fence { .. }));
    }

    #[test]
    fn every_damage_is_detected() {
        let bytes = encode_records("l", 1, &[vec![record(0, 2, "key", Some("value"))]]);
        for cut in 0..bytes.len() {
            assert!(decode(bytes.slice(..cut)).is_err(), "truncated at {cut}");
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.to_vec();
            flipped[i] ^= 0x40;
            assert!(
                decode(Bytes::from(flipped)).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }
}
