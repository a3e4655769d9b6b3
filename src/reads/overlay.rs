//! The overlay of a follower: the owner's log records of one shard that the follower's
//! checkpoint view (`ShardReader`) may not hold yet, and the rule that merges the two.
//!
//! **The merge rule.** A follower's reader shows a state `S` of the shard's database: the SSTs
//! up to some sequence number `D` (`last_l0_seq` of its manifest). Versions are the database's
//! sequence numbers, assigned in log order and applied in that order, so `S` holds *every*
//! write of the shard with a version `<= D` and none above it. The overlay holds, per key, the
//! newest record the follower has read from the owner's log. So for a key with overlay record
//! `o`:
//! - `o.version > D`: `o` is newer than anything `S` has for the key: `o` decides (a delete or
//!   an expired value means absent);
//! - `o.version <= D`: `S` has `o` or something newer for the key: the reader decides.
//!
//! This holds whatever the checkpoints and the tail have reached, in any order, because the
//! log and the SSTs agree on versions; it does not need the version of a tombstone in `S`,
//! which SlateDB does not return. It does need the `D` of the very state a read saw: see
//! [`Bracket`].

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use crate::storage::log::format::{Op, Record};
use crate::storage::store::Entry;

/// The newest record of one key read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recent {
    /// Its version.
    pub version: u64,
    /// The value, or `None` for a delete.
    pub value: Option<Bytes>,
    /// When the value expires (Unix ms).
    pub expires_at_ms: Option<i64>,
    /// When the owner accepted the write (Unix ms).
    pub written_at_ms: i64,
}

impl Recent {
    fn of(r: &Record) -> Self {
        let (value, expires_at_ms) = match &r.op {
            Op::Put {
                value,
                expires_at_ms,
            } => (Some(value.clone()), *expires_at_ms),
            Op::Delete => (None, None),
        };
        Recent {
            version: r.version,
            value,
            expires_at_ms,
            written_at_ms: r.written_at_ms,
        }
    }

    /// The live value of `key` this record gives at `now_ms`, or `None` (deleted, expired).
    pub fn live(&self, key: &Bytes, now_ms: i64) -> Option<Entry> {
        let value = self.value.as_ref()?;
        if self.expires_at_ms.is_some_and(|t| t <= now_ms) {
            return None;
        }
        Some(Entry {
            key: key.clone(),
            value: value.clone(),
            version: self.version,
            expires_at_ms: self.expires_at_ms,
            written_at_ms: self.written_at_ms,
        })
    }
}

/// Per key, the newest record read from the log and not yet known to be in the reader's
/// view.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    map: BTreeMap<Bytes, Recent>,
}

impl Overlay {
    /// Takes `r` unless the overlay already has a newer (or the same) version of its key.
    pub fn apply(&mut self, r: &Record) {
        match self.map.get(&r.key) {
            Some(have) if have.version >= r.version => {}
            _ => {
                self.map.insert(r.key.clone(), Recent::of(r));
            }
        }
    }

    /// Drops the records at or below `version`: every view the reader shows from now on has
    /// them (or newer), so the merge rule never uses them again.
    pub fn trim(&mut self, version: u64) {
        self.map.retain(|_, r| r.version > version);
    }

    /// The record of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&Recent> {
        self.map.get(key)
    }

    /// The records in `range` (user keys) newer than `above`, in key order.
    pub fn range_above(
        &self,
        range: &(Bound<Bytes>, Bound<Bytes>),
        above: u64,
    ) -> Vec<(Bytes, Recent)> {
        self.map
            .range::<Bytes, _>((range.0.as_ref(), range.1.as_ref()))
            .filter(|(_, r)| r.version > above)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// Records held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// The `D` of the reader state a read saw, bracketed: `low` read before the read (the
/// manifest SlateDB reports *after* installing a state) and `high` after it (the durable
/// sequence number SlateDB advances *before* installing one), so `low <= D <= high`. Both
/// are equal unless a new state was being installed during the read (microseconds). A
/// record with a version in `(low, high]` cannot be placed by the merge rule: the read is
/// retried ([`Bracket::decides`] returns `None`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bracket {
    pub low: u64,
    pub high: u64,
}

impl Bracket {
    /// Whether overlay record `o` decides the key (`Some(true)`), the reader does
    /// (`Some(false)`), or the bracket cannot tell (`None`).
    pub fn decides(&self, o: &Recent) -> Option<bool> {
        if o.version > self.high {
            Some(true)
        } else if o.version <= self.low {
            Some(false)
        } else {
            None
        }
    }
}

/// Merges the reader's answer for `key` with the overlay's record of it, by the merge rule.
pub(crate) fn merge(
    key: &Bytes,
    from_reader: Option<Entry>,
    overlay: Option<&Recent>,
    bracket: Bracket,
    now_ms: i64,
) -> Option<Option<Entry>> {
    match overlay {
        None => Some(from_reader),
        Some(o) => match bracket.decides(o)? {
            true => Some(o.live(key, now_ms)),
            false => Some(from_reader),
        },
    }
}

/// Merges a reader scan with overlay records (already limited to those newer than the
/// reader state's `D`, so each decides its key): in key order, an overlay record replaces
/// the reader's entry of its key, and deletes and expired values are skipped.
pub(crate) struct Merging {
    overlay: std::vec::IntoIter<(Bytes, Recent)>,
    /// The next overlay record, taken from `overlay`.
    next_overlay: Option<(Bytes, Recent)>,
    /// The next reader entry, once pulled.
    next_reader: Option<Entry>,
    reader_done: bool,
    now_ms: i64,
}

impl Merging {
    pub fn new(overlay: Vec<(Bytes, Recent)>, now_ms: i64) -> Self {
        let mut overlay = overlay.into_iter();
        Merging {
            next_overlay: overlay.next(),
            overlay,
            next_reader: None,
            reader_done: false,
            now_ms,
        }
    }

    /// Whether the merge needs the reader's next entry before [`Merging::step`] can answer.
    pub fn wants_reader(&self) -> bool {
        self.next_reader.is_none() && !self.reader_done
    }

    /// Hands over the reader's next entry (`None`: the reader is done).
    pub fn push_reader(&mut self, entry: Option<Entry>) {
        match entry {
            Some(e) => self.next_reader = Some(e),
            None => self.reader_done = true,
        }
    }

    /// One step: `Some(Some(e))` the next entry, `Some(None)` the end, `None` a record was
    /// consumed without output (call again, after feeding the reader if it wants).
    pub fn step(&mut self) -> Option<Option<Entry>> {
        debug_assert!(!self.wants_reader());
        let reader_key = self.next_reader.as_ref().map(|e| e.key.clone());
        match (&self.next_overlay, reader_key) {
            (None, None) => Some(None),
            (None, Some(_)) => Some(self.next_reader.take()),
            (Some((ok, _)), Some(rk)) if rk < *ok => Some(self.next_reader.take()),
            (Some((ok, _)), rk) => {
                if rk.as_ref() == Some(ok) {
                    // The overlay record is newer than the reader's entry of its key.
                    self.next_reader = None;
                }
                let (key, recent) = self.next_overlay.take().expect("matched Some");
                self.next_overlay = self.overlay.next();
                recent.live(&key, self.now_ms).map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardId;

    fn rec(key: &str, version: u64, value: Option<&str>) -> Record {
        Record {
            shard: ShardId(0),
            epoch: 1,
            version,
            written_at_ms: 0,
            key: Bytes::from(key.to_string()),
            op: match value {
                Some(v) => Op::Put {
                    value: Bytes::from(v.to_string()),
                    expires_at_ms: None,
                },
                None => Op::Delete,
            },
        }
    }

    fn entry(key: &str, version: u64) -> Entry {
        Entry {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(format!("{key}@{version}")),
            version,
            expires_at_ms: None,
            written_at_ms: 0,
        }
    }

    fn at(d: u64) -> Bracket {
        Bracket { low: d, high: d }
    }

    #[test]
    fn the_newer_of_reader_and_overlay_wins_and_deletes_hide() {
        let mut o = Overlay::default();
        o.apply(&rec("a", 7, Some("new")));
        o.apply(&rec("a", 5, Some("older, arrives late"))); // never replaces a newer one
        o.apply(&rec("gone", 9, None));
        let a = Bytes::from_static(b"a");
        // The reader holds up to 6: the overlay's 7 decides.
        let got = merge(&a, Some(entry("a", 3)), o.get(b"a"), at(6), 0);
        assert_eq!(got.unwrap().unwrap().value, Bytes::from_static(b"new"));
        // The reader holds up to 8: it has 7 or newer, e.g. a delete at 8 it cannot show.
        assert_eq!(merge(&a, None, o.get(b"a"), at(8), 0), Some(None));
        let gone = Bytes::from_static(b"gone");
        assert_eq!(
            merge(&gone, Some(entry("gone", 4)), o.get(b"gone"), at(6), 0),
            Some(None)
        );
        // A state being installed around the read: no answer, retry.
        let moving = Bracket { low: 6, high: 8 };
        assert_eq!(merge(&a, None, o.get(b"a"), moving, 0), None);
        o.trim(7);
        assert!(o.get(b"a").is_none());
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn expired_overlay_values_are_absent() {
        let mut o = Overlay::default();
        let mut r = rec("t", 4, Some("x"));
        r.op = Op::Put {
            value: Bytes::from_static(b"x"),
            expires_at_ms: Some(1_000),
        };
        o.apply(&r);
        let t = Bytes::from_static(b"t");
        assert!(merge(&t, None, o.get(b"t"), at(0), 999).unwrap().is_some());
        assert_eq!(merge(&t, None, o.get(b"t"), at(0), 1_000), Some(None));
    }

    #[test]
    fn a_scan_merges_in_key_order() {
        let mut o = Overlay::default();
        for r in [
            rec("b", 8, Some("b-new")), // replaces the reader's b
            rec("c", 9, None),          // hides the reader's c
            rec("d", 10, Some("d-new")),
            rec("e", 2, Some("old")), // at or below D: the reader decides
        ] {
            o.apply(&r);
        }
        let all = (Bound::Unbounded, Bound::Unbounded);
        let mut m = Merging::new(o.range_above(&all, 5), 0);
        let mut reader =
            vec![entry("a", 1), entry("b", 2), entry("c", 3), entry("e", 4)].into_iter();
        let mut out = Vec::new();
        loop {
            if m.wants_reader() {
                m.push_reader(reader.next());
            }
            match m.step() {
                Some(Some(e)) => out.push((e.key, e.version)),
                Some(None) => break,
                None => {}
            }
        }
        let keys: Vec<(&[u8], u64)> = out.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
        assert_eq!(
            keys,
            vec![
                (&b"a"[..], 1),
                (&b"b"[..], 8),
                (&b"d"[..], 10),
                (&b"e"[..], 4)
            ]
        );
    }
}
