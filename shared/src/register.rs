//! The register's rules, without AWS: how an incoming mapped record changes a stored one.
//!
//! A run writes only attributes its mapping names, only when the source reports a value, never over
//! a hand edit or a higher-precedence source's value; unchanged records cause no write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{Mode, ObjectType};
use crate::mapping::MappedRecord;

/// Provenance owner name for hand edits (`assetsync assets set`).
pub const HAND: &str = "hand";

/// Attributes a run derives on create or from assignment (not from the mapping).
pub mod attr {
    pub const ASSET_TAG: &str = "Asset Tag";
    pub const ASSET_NAME: &str = "Asset Name";
    pub const CATEGORY: &str = "Category";
    pub const STATUS: &str = "Status";
    pub const ASSIGNED_TO: &str = "Assigned To";
    pub const ASSIGNMENT_NOTE: &str = "Assignment Note";
    pub const USER_EMAIL: &str = "User Email";
    pub const USER_NAME: &str = "User Name";
    pub const EMAIL: &str = "Email";
    pub const MODEL: &str = "Model";
    pub const NAME: &str = "Name";
    pub const OS_NAME: &str = "OS Name";
    pub const DEVICE_TYPE: &str = "Device Type";
    pub const DISPLAY_NAME: &str = "Display Name";
    pub const FIRST_NAME: &str = "First Name";
    pub const LAST_NAME: &str = "Last Name";
}

/// Who last set an attribute, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Provenance {
    /// Connection name, or `hand`.
    pub c: String,
    /// Source kind of the connection (empty for hand edits).
    #[serde(default)]
    pub s: String,
    /// RFC 3339 time of the write.
    pub t: String,
    /// The run that wrote it.
    #[serde(default)]
    pub r: String,
}

/// What a connection last reported for a record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SourceRef {
    /// The vendor's id of the source record that feeds this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// When that source record last checked in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<String>,
    /// The run that last wrote this entry.
    #[serde(default)]
    pub run: String,
    /// Set while the connection no longer reports the record (date it was found missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// A register record as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(from = "RecordRepr", into = "RecordRepr")]
pub struct StoredRecord {
    pub object_type: String,
    pub key: String,
    /// Attribute values.
    #[serde(default)]
    pub a: BTreeMap<String, String>,
    /// Attribute provenance.
    #[serde(default)]
    pub p: BTreeMap<String, Provenance>,
    /// Per connection: the source record feeding this one.
    #[serde(default)]
    pub src: BTreeMap<String, SourceRef>,
    /// Optimistic-lock version.
    #[serde(default)]
    pub ver: i64,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub created_by: String,
    /// Per connection: the page write that last touched this record, so a redelivered page
    /// counts and completes what it already wrote.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub w: BTreeMap<String, WriteMark>,
    /// Set when a revert undid the run that created this record (`assetsync runs revert`): the
    /// record stays (its asset tag is never reused) and is no longer fed by that connection,
    /// until a run of it reports the record again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rv: Option<Reverted>,
}

/// How a record is stored. One write gives every attribute it sets the same provenance, so each
/// attribute names its provenance by index into the record's distinct ones (`pv`): a record of
/// 15 attributes is about half the bytes (one write unit instead of two) and a third of the
/// attributes. Records stored with a provenance per attribute read as before.
#[derive(Serialize, Deserialize)]
struct RecordRepr {
    object_type: String,
    key: String,
    #[serde(default)]
    a: BTreeMap<String, String>,
    #[serde(default)]
    p: ProvenanceRepr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pv: Vec<Provenance>,
    #[serde(default)]
    src: BTreeMap<String, SourceRef>,
    #[serde(default)]
    ver: i64,
    #[serde(default)]
    created_at: String,
    #[serde(default)]
    created_by: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    w: BTreeMap<String, WriteMark>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rv: Option<Reverted>,
}

/// Attribute → index into `pv` (written), or attribute → provenance (records from before).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ProvenanceRepr {
    Indexed(BTreeMap<String, u32>),
    Inline(BTreeMap<String, Provenance>),
}

impl Default for ProvenanceRepr {
    fn default() -> Self {
        ProvenanceRepr::Indexed(BTreeMap::new())
    }
}

impl From<StoredRecord> for RecordRepr {
    fn from(r: StoredRecord) -> Self {
        let mut pv: Vec<Provenance> = Vec::new();
        let p =
            r.p.into_iter()
                .map(|(attr, prov)| {
                    let i = match pv.iter().position(|x| *x == prov) {
                        Some(i) => i,
                        None => {
                            pv.push(prov);
                            pv.len() - 1
                        }
                    };
                    (attr, i as u32)
                })
                .collect();
        RecordRepr {
            object_type: r.object_type,
            key: r.key,
            a: r.a,
            p: ProvenanceRepr::Indexed(p),
            pv,
            src: r.src,
            ver: r.ver,
            created_at: r.created_at,
            created_by: r.created_by,
            w: r.w,
            rv: r.rv,
        }
    }
}

impl From<RecordRepr> for StoredRecord {
    fn from(r: RecordRepr) -> Self {
        let p = match r.p {
            // An index past the table (a damaged item) leaves that attribute without provenance.
            ProvenanceRepr::Indexed(m) => m
                .into_iter()
                .filter_map(|(attr, i)| Some((attr, r.pv.get(i as usize)?.clone())))
                .collect(),
            ProvenanceRepr::Inline(m) => m,
        };
        StoredRecord {
            object_type: r.object_type,
            key: r.key,
            a: r.a,
            p,
            src: r.src,
            ver: r.ver,
            created_at: r.created_at,
            created_by: r.created_by,
            w: r.w,
            rv: r.rv,
        }
    }
}

/// A record whose creating run was reverted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Reverted {
    /// The revert run.
    pub run: String,
    /// The run it reverted (the one that created the record).
    pub of: String,
    /// When.
    pub at: String,
}

/// What a page's write left on a record: run, page, outcome, and the history it owes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct WriteMark {
    pub run: String,
    pub pg: String,
    /// `created`, `updated` or `duplicate`.
    pub o: String,
    /// The changes of that write (for the history row); empty on create (the record is the change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub h: Vec<Change>,
    /// Whether the write (re)joined the connection's membership.
    #[serde(default)]
    pub m: bool,
}

/// One attribute change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Change {
    pub attr: String,
    pub old: Option<String>,
    pub new: String,
}

/// What the run does to one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A new record (asset tag etc. are added at write time).
    Create,
    /// Changed attributes, and whether the connection's source entry must be (re)written.
    Update {
        changes: Vec<Change>,
        src_changed: bool,
        duplicate: bool,
    },
    /// Nothing but volatile attributes moved (or nothing at all).
    Unchanged,
    /// Update-only mode and no such record.
    NotFound,
    /// Another source record with the same key checked in more recently; this one is ignored.
    Duplicate,
}

/// Which source wins an attribute when two disagree: one order of sources for all attributes,
/// and optionally an order of its own for named attributes (`ATTRIBUTE_PRECEDENCE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precedence {
    order: Vec<String>,
    by_attr: BTreeMap<String, Vec<String>>,
}

fn names(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

impl Precedence {
    /// Parse a comma-separated list of connection names or source kinds, highest first.
    pub fn parse(s: &str) -> Self {
        Precedence {
            order: names(s),
            by_attr: BTreeMap::new(),
        }
    }

    /// Add per-attribute orders: `ATTR=src,src;ATTR=src` (attribute names as the register spells
    /// them). Returns the entries that could not be read (they are ignored).
    pub fn with_attributes(mut self, spec: &str) -> (Self, Vec<String>) {
        let mut bad = Vec::new();
        for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((a, list)) if !a.trim().is_empty() && !names(list).is_empty() => {
                    self.by_attr.insert(a.trim().to_string(), names(list));
                }
                _ => bad.push(part.to_string()),
            }
        }
        (self, bad)
    }

    /// Rank of a writer for an attribute: lower is stronger. Under an attribute's own order, the
    /// sources it names come first and the others follow in the source order; unknown writers
    /// rank last.
    pub fn rank(&self, attr: &str, connection: &str, source: &str) -> usize {
        let pos = |list: &[String]| {
            list.iter()
                .position(|p| p == connection)
                .or_else(|| list.iter().position(|p| p == source))
        };
        let base = pos(&self.order).unwrap_or(self.order.len());
        match self.by_attr.get(attr) {
            Some(list) => pos(list).unwrap_or(list.len() + base),
            None => base,
        }
    }

    /// A stable digest of the effective precedence: page packs mix it into their fingerprints, so
    /// a changed precedence makes the next run of each connection reconsider every record.
    pub fn digest(&self) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |b: &[u8]| {
            for x in b {
                h ^= u64::from(*x);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for o in &self.order {
            eat(o.as_bytes());
            eat(&[0]);
        }
        for (a, list) in &self.by_attr {
            eat(&[1]);
            eat(a.as_bytes());
            for o in list {
                eat(&[2]);
                eat(o.as_bytes());
            }
        }
        h
    }
}

/// Who is importing.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    pub connection: &'a str,
    pub source: &'a str,
    pub run_id: &'a str,
    pub mode: Mode,
    pub object_type: ObjectType,
    pub precedence: &'a Precedence,
    /// Attributes that move at every check-in: they never make a record `updated` on their own.
    pub volatile: &'a std::collections::BTreeSet<String>,
}

impl Writer<'_> {
    /// The provenance of what this writer sets at `ts`.
    pub fn provenance(&self, ts: &str) -> Provenance {
        Provenance {
            c: self.connection.to_string(),
            s: self.source.to_string(),
            t: ts.to_string(),
            r: self.run_id.to_string(),
        }
    }

    /// This writer's source entry for `r` (the record as the source reports it this run).
    pub fn source_ref(&self, r: &MappedRecord) -> SourceRef {
        SourceRef {
            id: r.source_id.clone(),
            ci: r.checked_in.clone(),
            run: self.run_id.to_string(),
            missing: None,
        }
    }

    /// May this writer overwrite `attr`, last set by `prov`?
    pub fn may_overwrite(&self, attr: &str, prov: Option<&Provenance>) -> bool {
        match prov {
            None => true,
            Some(p) if p.c == HAND => false,
            Some(p) if p.c == self.connection => true,
            Some(p) => {
                self.precedence.rank(attr, self.connection, self.source)
                    <= self.precedence.rank(attr, &p.c, &p.s)
            }
        }
    }
}

/// Decide what happens to `stored` given `incoming` (which has a key).
pub fn decide(incoming: &MappedRecord, stored: Option<&StoredRecord>, w: &Writer<'_>) -> Decision {
    let Some(stored) = stored else {
        return match w.mode {
            Mode::CreateUpdate => Decision::Create,
            Mode::UpdateOnly => Decision::NotFound,
        };
    };
    let mine = stored.src.get(w.connection);
    let mut duplicate = false;
    if let (Some(m), Some(in_id)) = (mine, incoming.source_id.as_deref()) {
        if m.id.as_deref().is_some_and(|id| id != in_id) {
            // Two source records of one connection share this key (a re-enrolled device).
            let stored_newer = match (m.ci.as_deref(), incoming.checked_in.as_deref()) {
                (Some(s), Some(i)) => s >= i,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if stored_newer {
                return Decision::Duplicate;
            }
            duplicate = m.run == w.run_id;
        }
    }
    let mut changes = Vec::new();
    for (attr, new) in &incoming.attrs {
        let old = stored.a.get(attr);
        if old == Some(new)
            || !w.may_overwrite(attr, stored.p.get(attr))
            || w.volatile.contains(attr)
        {
            continue;
        }
        changes.push(Change {
            attr: attr.clone(),
            old: old.cloned(),
            new: new.clone(),
        });
    }
    let src_changed = match mine {
        None => true,
        Some(m) => {
            m.missing.is_some() || (incoming.source_id.is_some() && m.id != incoming.source_id)
        }
    };
    if changes.is_empty() && !src_changed {
        return if duplicate {
            Decision::Duplicate
        } else {
            Decision::Unchanged
        };
    }
    Decision::Update {
        changes,
        src_changed,
        duplicate,
    }
}

/// Keep one record per key within a page: the most recently checked-in. Returns (kept, duplicates).
pub fn dedupe_page(records: Vec<MappedRecord>) -> (Vec<MappedRecord>, Vec<MappedRecord>) {
    let mut best: BTreeMap<String, MappedRecord> = BTreeMap::new();
    let mut dups = Vec::new();
    let mut order = Vec::new();
    for r in records {
        let Some(k) = r.key.clone() else { continue };
        match best.get(&k) {
            None => {
                order.push(k.clone());
                best.insert(k, r);
            }
            Some(cur) => {
                if r.checked_in > cur.checked_in {
                    if let Some(old) = best.insert(k, r) {
                        dups.push(old);
                    }
                } else {
                    dups.push(r);
                }
            }
        }
    }
    let kept = order.into_iter().filter_map(|k| best.remove(&k)).collect();
    (kept, dups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prov(c: &str, r: &str) -> Provenance {
        Provenance {
            c: c.into(),
            s: "jamf".into(),
            t: "2026-12-03T10:00:00Z".into(),
            r: r.into(),
        }
    }

    #[test]
    fn records_store_each_distinct_provenance_once_and_read_both_forms() {
        let mut r = StoredRecord {
            object_type: "Hardware".into(),
            key: "C02".into(),
            ver: 3,
            ..Default::default()
        };
        for (attr, p) in [
            ("Model", prov("jamf-prod", "run1")),
            ("Name", prov("jamf-prod", "run1")),
            ("Status", prov("hand", "")),
            ("OS Version", prov("jamf-prod", "run1")),
        ] {
            r.a.insert(attr.into(), "v".into());
            r.p.insert(attr.into(), p);
        }
        let item = crate::store::to_item("R#Hardware#C02", "#", &r).expect("item");
        let pv = item.get("pv").and_then(|v| v.as_l().ok()).expect("pv");
        assert_eq!(pv.len(), 2, "two distinct provenances");
        assert!(item["p"]
            .as_m()
            .expect("p")
            .values()
            .all(|v| v.as_n().is_ok()));
        let back: StoredRecord = crate::store::from_item(item).expect("read");
        assert_eq!(back, r);

        // A record written before: a provenance per attribute.
        let old = serde_json::json!({
            "object_type": "Hardware", "key": "C02", "ver": 3, "created_at": "", "created_by": "",
            "a": {"Model": "v", "Name": "v", "Status": "v", "OS Version": "v"},
            "p": {
                "Model": {"c": "jamf-prod", "s": "jamf", "t": "2026-12-03T10:00:00Z", "r": "run1"},
                "Name": {"c": "jamf-prod", "s": "jamf", "t": "2026-12-03T10:00:00Z", "r": "run1"},
                "Status": {"c": "hand", "s": "jamf", "t": "2026-12-03T10:00:00Z", "r": ""},
                "OS Version": {"c": "jamf-prod", "s": "jamf", "t": "2026-12-03T10:00:00Z", "r": "run1"}
            },
            "src": {}
        });
        let item: crate::store::Item = serde_dynamo::to_item(old).expect("old item");
        let back: StoredRecord = crate::store::from_item(item).expect("read old");
        assert_eq!(back, r);
    }

    fn rec(attrs: &[(&str, &str)], id: &str, ci: &str) -> MappedRecord {
        MappedRecord {
            key: Some("K1".into()),
            attrs: attrs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            source_id: Some(id.into()),
            checked_in: Some(ci.into()),
            parent: None,
        }
    }

    fn stored(attrs: &[(&str, &str, &str)], conn: &str, id: &str, ci: &str) -> StoredRecord {
        let mut s = StoredRecord {
            object_type: "Hardware".into(),
            key: "K1".into(),
            ..Default::default()
        };
        for (a, v, owner) in attrs {
            s.a.insert(a.to_string(), v.to_string());
            s.p.insert(
                a.to_string(),
                Provenance {
                    c: owner.to_string(),
                    s: "jamf".into(),
                    t: String::new(),
                    r: String::new(),
                },
            );
        }
        s.src.insert(
            conn.into(),
            SourceRef {
                id: Some(id.into()),
                ci: Some(ci.into()),
                run: "r0".into(),
                missing: None,
            },
        );
        s
    }

    static NO_VOLATILE: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();

    fn writer<'a>(p: &'a Precedence, conn: &'a str, source: &'a str) -> Writer<'a> {
        Writer {
            volatile: &NO_VOLATILE,
            connection: conn,
            source,
            run_id: "r1",
            mode: Mode::CreateUpdate,
            object_type: ObjectType::Hardware,
            precedence: p,
        }
    }

    #[test]
    fn unchanged_and_hand_edits() {
        let p = Precedence::default();
        let w = writer(&p, "jamf-prod", "jamf");
        let s = stored(
            &[
                ("OS Version", "14.5", "jamf-prod"),
                ("Location", "Room 4", HAND),
                ("Name", "Mine", HAND),
            ],
            "jamf-prod",
            "1",
            "2024",
        );
        assert_eq!(
            decide(&rec(&[("OS Version", "14.5")], "1", "2024"), Some(&s), &w),
            Decision::Unchanged
        );
        // A hand-edited attribute the mapping names is left alone.
        assert_eq!(
            decide(
                &rec(&[("OS Version", "14.5"), ("Name", "Theirs")], "1", "2024"),
                Some(&s),
                &w
            ),
            Decision::Unchanged
        );
        match decide(&rec(&[("OS Version", "15.0")], "1", "2024"), Some(&s), &w) {
            Decision::Update { changes, .. } => assert_eq!(
                changes,
                vec![Change {
                    attr: "OS Version".into(),
                    old: Some("14.5".into()),
                    new: "15.0".into()
                }]
            ),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn precedence_decides_between_sources() {
        let p = Precedence::parse("intune,endpoint-central,jamf");
        let s = stored(
            &[("Model", "ThinkPad T14", "intune-prod")],
            "intune-prod",
            "x",
            "2024",
        );
        let mut s2 = s.clone();
        s2.p.get_mut("Model").unwrap().s = "intune".into();
        let w = writer(&p, "ec-prod", "endpoint-central");
        let d = decide(&rec(&[("Model", "20XW")], "9", "2024"), Some(&s2), &w);
        assert_eq!(
            d,
            Decision::Update {
                changes: vec![],
                src_changed: true,
                duplicate: false
            }
        );
        let w = writer(&p, "intune-prod", "intune");
        assert!(matches!(
            decide(&rec(&[("Model", "T14 Gen 4")], "x", "2024"), Some(&s2), &w),
            Decision::Update { .. }
        ));
    }

    #[test]
    fn an_attribute_may_have_its_own_order() {
        let (p, bad) = Precedence::parse("jamf,intune")
            .with_attributes(" OS Version = intune , jamf ; Warranty Expiry=ec-prod; junk");
        assert_eq!(bad, vec!["junk".to_string()]);
        assert!(p.rank("OS Version", "intune-prod", "intune") < p.rank("OS Version", "j", "jamf"));
        assert!(p.rank("Model", "j", "jamf") < p.rank("Model", "intune-prod", "intune"));
        // Not named for the attribute: after the named ones, in the source order.
        assert_eq!(p.rank("Warranty Expiry", "ec-prod", "endpoint-central"), 0);
        assert!(p.rank("Warranty Expiry", "j", "jamf") < p.rank("Warranty Expiry", "i", "intune"));
        assert_ne!(p.digest(), Precedence::parse("jamf,intune").digest());
        assert_eq!(p.digest(), p.clone().digest());
    }

    #[test]
    fn duplicates_keep_the_newest() {
        let p = Precedence::default();
        let w = writer(&p, "jamf-prod", "jamf");
        let s = stored(
            &[("OS Version", "14.5", "jamf-prod")],
            "jamf-prod",
            "new",
            "2024-06-20",
        );
        assert_eq!(
            decide(
                &rec(&[("OS Version", "13.0")], "old", "2024-01-01"),
                Some(&s),
                &w
            ),
            Decision::Duplicate
        );
        assert!(matches!(
            decide(
                &rec(&[("OS Version", "15.0")], "newer", "2024-07-01"),
                Some(&s),
                &w
            ),
            Decision::Update { .. }
        ));
        let (kept, dups) = dedupe_page(vec![
            rec(&[], "a", "2024-01"),
            rec(&[], "b", "2024-06"),
            rec(&[], "c", "2024-03"),
        ]);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].source_id.as_deref(), Some("b"));
        assert_eq!(dups.len(), 2);
    }

    #[test]
    fn volatile_attributes_alone_leave_a_record_unchanged() {
        let p = Precedence::default();
        let vol: std::collections::BTreeSet<String> = ["Last Check-in".to_string()].into();
        let w = Writer {
            volatile: &vol,
            ..writer(&p, "jamf-prod", "jamf")
        };
        let s = stored(
            &[
                ("OS Version", "14.5", "jamf-prod"),
                ("Last Check-in", "t1", "jamf-prod"),
            ],
            "jamf-prod",
            "1",
            "2024",
        );
        let moved = rec(
            &[("OS Version", "14.5"), ("Last Check-in", "t2")],
            "1",
            "2024",
        );
        assert_eq!(decide(&moved, Some(&s), &w), Decision::Unchanged);
        match decide(
            &rec(
                &[("OS Version", "15"), ("Last Check-in", "t2")],
                "1",
                "2024",
            ),
            Some(&s),
            &w,
        ) {
            Decision::Update { changes, .. } => {
                assert_eq!(
                    changes.len(),
                    1,
                    "the check-in is written, not recorded as a change"
                )
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn update_only_counts_not_found() {
        let p = Precedence::default();
        let mut w = writer(&p, "jamf-prod", "jamf");
        w.mode = Mode::UpdateOnly;
        assert_eq!(decide(&rec(&[], "1", "x"), None, &w), Decision::NotFound);
    }
}
