//! Page packs: per connection and page, one small item holding, for every key the page reported,
//! a fingerprint of its mapped (non-volatile) source attributes and its volatile values.
//!
//! An unchanged re-sync reads one pack per page (bytes per record) instead of every record, and
//! writes one pack per page instead of one record per moved check-in time. The pack is written
//! only by its page (no hot item); the keys of a run's packs are the keys the run saw.
//!
//! Item: `F#<connection>#<Type>` / `<page_id>`, `run` (the run that wrote it), `va` (volatile
//! attribute names, `\x1f`-separated) and `d`: one line per key, `key \t fp \t flag \t v1 \x1f v2…`.

use std::collections::{BTreeMap, BTreeSet};

use crate::mapping::MappedRecord;

/// One key's entry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PackEntry {
    /// Fingerprint of what the connection last reported (0: never matches).
    pub fp: u64,
    /// Whether an equal fingerprint lets the next run count the record unchanged unread.
    pub settled: bool,
    /// Volatile values, in the order of [`Pack::attrs`] (empty: not reported).
    pub vals: Vec<String>,
}

/// A page pack.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pack {
    pub run: String,
    pub attrs: Vec<String>,
    pub entries: BTreeMap<String, PackEntry>,
}

/// The partition of a connection's packs.
pub fn pack_pk(connection: &str, object_type: &str) -> String {
    format!("F#{connection}#{object_type}")
}

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not).
fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

/// The fingerprint of a mapped record: its non-volatile attributes, source id and parent.
pub fn fingerprint(r: &MappedRecord, volatile: &BTreeSet<String>) -> u64 {
    fingerprint_under(r, volatile, 0)
}

/// The fingerprint of a mapped record under a rule set (`salt`: the precedence's digest), so a
/// change of the rules no longer matches the packs written under the old ones.
pub fn fingerprint_under(r: &MappedRecord, volatile: &BTreeSet<String>, salt: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    if salt != 0 {
        fnv(&mut h, &salt.to_le_bytes());
    }
    for (a, v) in &r.attrs {
        if volatile.contains(a) {
            continue;
        }
        fnv(&mut h, a.as_bytes());
        fnv(&mut h, &[0]);
        fnv(&mut h, v.as_bytes());
        fnv(&mut h, &[1]);
    }
    fnv(&mut h, &[2]);
    fnv(
        &mut h,
        r.source_id.as_deref().unwrap_or_default().as_bytes(),
    );
    fnv(&mut h, &[3]);
    fnv(&mut h, r.parent.as_deref().unwrap_or_default().as_bytes());
    // 0 is reserved for "no fingerprint".
    h.max(1)
}

fn clean(s: &str) -> String {
    s.replace(['\t', '\n', '\x1f'], " ")
}

impl Pack {
    /// Encode the `va` and `d` attributes.
    pub fn encode(&self) -> (String, String) {
        let va = self
            .attrs
            .iter()
            .map(|a| clean(a))
            .collect::<Vec<_>>()
            .join("\x1f");
        let mut d = String::new();
        for (k, e) in &self.entries {
            d.push_str(&clean(k));
            d.push('\t');
            d.push_str(&format!("{:x}", e.fp));
            d.push('\t');
            d.push(if e.settled { 's' } else { '-' });
            d.push('\t');
            d.push_str(
                &e.vals
                    .iter()
                    .map(|v| clean(v))
                    .collect::<Vec<_>>()
                    .join("\x1f"),
            );
            d.push('\n');
        }
        (va, d)
    }

    /// Decode; malformed lines are ignored (they only cost a record read).
    pub fn decode(run: &str, va: &str, d: &str) -> Pack {
        let attrs: Vec<String> = if va.is_empty() {
            vec![]
        } else {
            va.split('\x1f').map(str::to_string).collect()
        };
        let mut entries = BTreeMap::new();
        for line in d.lines() {
            let mut parts = line.splitn(4, '\t');
            let (Some(k), Some(fp), Some(flag), vals) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(fp) = u64::from_str_radix(fp, 16) else {
                continue;
            };
            let vals = match vals {
                Some(v) if !attrs.is_empty() => v.split('\x1f').map(str::to_string).collect(),
                _ => vec![],
            };
            entries.insert(
                k.to_string(),
                PackEntry {
                    fp,
                    settled: flag == "s",
                    vals,
                },
            );
        }
        Pack {
            run: run.to_string(),
            attrs,
            entries,
        }
    }

    /// The volatile values of a key, by attribute.
    pub fn values(&self, key: &str) -> BTreeMap<String, String> {
        let Some(e) = self.entries.get(key) else {
            return BTreeMap::new();
        };
        self.attrs
            .iter()
            .zip(&e.vals)
            .filter(|(_, v)| !v.is_empty())
            .map(|(a, v)| (a.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_fingerprint_ignores_volatile() {
        let vol: BTreeSet<String> = ["Last Check-in".to_string()].into();
        let mut r = MappedRecord {
            key: Some("K1".into()),
            source_id: Some("7".into()),
            ..Default::default()
        };
        r.attrs.insert("OS".into(), "14".into());
        r.attrs.insert("Last Check-in".into(), "t1".into());
        let fp = fingerprint(&r, &vol);
        r.attrs.insert("Last Check-in".into(), "t2".into());
        assert_eq!(fingerprint(&r, &vol), fp);
        r.attrs.insert("OS".into(), "15".into());
        assert_ne!(fingerprint(&r, &vol), fp);

        let mut p = Pack {
            run: "r1".into(),
            attrs: vec!["Last Check-in".into(), "IP".into()],
            ..Default::default()
        };
        p.entries.insert(
            "K1".into(),
            PackEntry {
                fp,
                settled: true,
                vals: vec!["t2".into(), String::new()],
            },
        );
        p.entries.insert("K\t2".into(), PackEntry::default());
        let (va, d) = p.encode();
        let q = Pack::decode("r1", &va, &d);
        assert_eq!(q.entries["K1"], p.entries["K1"]);
        assert!(q.entries.contains_key("K 2"));
        assert_eq!(
            q.values("K1").get("Last Check-in").map(String::as_str),
            Some("t2")
        );
        assert!(!q.values("K1").contains_key("IP"));
    }
}
