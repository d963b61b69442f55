//! The mapping language: `key:`, `map:`, `config:` directives, one a line.
//!
//! ```text
//! key:hardware.serialNumber=Serial Number          # match key: source path = attribute
//! map:general.name=Name                            # dotted paths, [n] for array items
//! map:hardware.macAddress|hardware.altMacAddress=MAC Address   # first non-empty wins
//! map:hardware.make|'Apple'=Manufacturer           # 'quoted' is a literal
//! map:computer_live_status~ec_live_status=Live Status           # ~transform
//! map:["managedcomputerextn.service_tag"]=Serial   # a key that contains dots
//! config:api=computers-inventory
//! config:filter=department:$eq:Finance
//! volatile:Last Check-in                           # moves at every check-in: no history, no update
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::error::MappingError;
use crate::event::ObjectType;
use crate::normalize;

/// One step of a source path.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Field(String),
    Index(usize),
}

/// One alternative of a source expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Path(Vec<Segment>),
    Literal(String),
}

/// `alt|alt|...~transform`.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceExpr {
    pub alternatives: Vec<Source>,
    pub transform: Option<Transform>,
}

/// A named value transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Epoch milliseconds to RFC 3339.
    EpochMs,
    /// Any vendor timestamp format to RFC 3339 (UTC).
    Timestamp,
    /// A MAC address (or a comma-separated list) to upper-case colon form; the first one.
    Mac,
    Lower,
    Upper,
    /// Endpoint Central `computer_live_status` (1/2/3).
    EcLiveStatus,
    /// Endpoint Central OS platform code.
    EcOsPlatform,
    /// Endpoint Central agent `installation_status`.
    EcAgentStatus,
    /// Endpoint Central scan status code.
    EcScanStatus,
    /// Boolean "active" flag to `active` / `suspended`.
    ActiveFlag,
    /// Boolean "archived"/"suspended" flag to `suspended` / `active`.
    InactiveFlag,
    /// JumpCloud `state` to `active` / `suspended` / `staged`.
    JcState,
    /// URL-decoding (`%20`), as some Endpoint Central servers send service tags.
    UrlDecode,
}

impl Transform {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "epoch_ms" => Transform::EpochMs,
            "timestamp" => Transform::Timestamp,
            "mac" => Transform::Mac,
            "lower" => Transform::Lower,
            "upper" => Transform::Upper,
            "ec_live_status" => Transform::EcLiveStatus,
            "ec_os_platform" => Transform::EcOsPlatform,
            "ec_agent_status" => Transform::EcAgentStatus,
            "ec_scan_status" => Transform::EcScanStatus,
            "active_flag" => Transform::ActiveFlag,
            "inactive_flag" => Transform::InactiveFlag,
            "jc_state" => Transform::JcState,
            "url_decode" => Transform::UrlDecode,
            _ => return None,
        })
    }

    const NAMES: &'static str = "epoch_ms, timestamp, mac, lower, upper, ec_live_status, ec_os_platform, ec_agent_status, ec_scan_status, active_flag, inactive_flag, jc_state, url_decode";

    fn apply(&self, v: String) -> Option<String> {
        let out = match self {
            Transform::EpochMs => normalize::epoch_ms_to_rfc3339(&v)?,
            Transform::Timestamp => normalize::timestamp(&v)?,
            Transform::Mac => normalize::mac(&v)?,
            Transform::Lower => v.to_lowercase(),
            Transform::Upper => v.to_uppercase(),
            Transform::EcLiveStatus => match v.as_str() {
                "1" => "Live".into(),
                "2" => "Down".into(),
                "3" => "Unknown".into(),
                "0" => "Offline".into(),
                _ => v,
            },
            Transform::EcOsPlatform => match v.as_str() {
                "1" => "Windows".into(),
                "2" => "Mac".into(),
                "3" => "Linux".into(),
                "4" => "iOS".into(),
                "5" => "Android".into(),
                "6" => "Chrome OS".into(),
                _ => v,
            },
            Transform::EcAgentStatus => match v.as_str() {
                "21" => "Yet to install".into(),
                "22" => "Installed".into(),
                "23" => "Uninstalled".into(),
                "24" => "Yet to uninstall".into(),
                "29" => "Installation failed".into(),
                "31" => "Uninstallation failed".into(),
                _ => v,
            },
            Transform::EcScanStatus => match v.as_str() {
                "221" | "Success" => "Scan succeeded".into(),
                "222" => "Scan failed".into(),
                "223" => "Scan in progress".into(),
                "224" => "Not scanned".into(),
                _ => v,
            },
            Transform::ActiveFlag => match v.as_str() {
                "true" => "active".into(),
                "false" => "suspended".into(),
                _ => v,
            },
            Transform::InactiveFlag => match v.as_str() {
                "true" => "suspended".into(),
                "false" => "active".into(),
                _ => v,
            },
            Transform::JcState => match v.to_ascii_uppercase().as_str() {
                "ACTIVATED" | "ACTIVE" => "active".into(),
                "SUSPENDED" => "suspended".into(),
                "STAGED" => "staged".into(),
                _ => v.to_lowercase(),
            },
            Transform::UrlDecode => url::form_urlencoded::parse(format!("x={v}").as_bytes())
                .next()
                .map(|(_, d)| d.into_owned())
                .unwrap_or(v),
        };
        Some(out)
    }
}

/// A parsed mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub key: (SourceExpr, String),
    pub maps: Vec<(SourceExpr, String)>,
    pub config: BTreeMap<String, String>,
    /// Attributes marked `volatile:` (besides [`DEFAULT_VOLATILE`]).
    pub volatile: std::collections::BTreeSet<String>,
}

/// Attributes that move at every check-in in every default mapping: volatile unless a mapping
/// says `volatile:none`.
pub const DEFAULT_VOLATILE: &[&str] = &["Last Check-in", "Last Inventory Update", "Last Contact"];

/// A source record after mapping: what travels to the importer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct MappedRecord {
    /// The normalised key; `None` when the record has none (it is then skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Attribute name → value, only the values the source reported.
    pub attrs: BTreeMap<String, String>,
    /// The vendor's own id of the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// When the source last heard from the device (RFC 3339), to choose among duplicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_in: Option<String>,
    /// For `Software`: the device (hardware key) it is installed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Mapping {
    /// Parse a mapping text; a bad line is an error naming the line.
    pub fn parse(text: &str) -> Result<Self, MappingError> {
        let mut key = None;
        let mut maps = Vec::new();
        let mut config = BTreeMap::new();
        let mut volatile = std::collections::BTreeSet::new();
        let mut no_default_volatile = false;
        for (i, raw_line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = strip_comment(raw_line).trim();
            if line.is_empty() {
                continue;
            }
            let err = |message: &str| MappingError {
                line: line_no,
                text: raw_line.trim().to_string(),
                message: message.to_string(),
            };
            let Some((directive, rest)) = line.split_once(':') else {
                return Err(err(
                    "expected `key:`, `map:` or `config:` followed by `source=Attribute`",
                ));
            };
            match directive.trim() {
                "key" | "map" => {
                    let Some((src, attr)) = rest.rsplit_once('=') else {
                        return Err(err("expected `source.path=Attribute Name`"));
                    };
                    let attr = attr.trim();
                    if attr.is_empty() {
                        return Err(err("the attribute name after `=` is empty"));
                    }
                    let expr = parse_source(src.trim()).map_err(|m| err(&m))?;
                    if directive.trim() == "key" {
                        if key.is_some() {
                            return Err(err(
                                "a mapping has exactly one `key:` line; this is the second",
                            ));
                        }
                        key = Some((expr, attr.to_string()));
                    } else {
                        if maps.iter().any(|(_, a): &(SourceExpr, String)| a == attr) {
                            return Err(err(&format!("attribute `{attr}` is mapped twice")));
                        }
                        maps.push((expr, attr.to_string()));
                    }
                }
                "config" => {
                    let Some((name, value)) = rest.split_once('=') else {
                        return Err(err("expected `config:name=value`"));
                    };
                    let name = name.trim();
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(err(
                            "the config name must be a word such as `api` or `filter`",
                        ));
                    }
                    config.insert(name.to_string(), value.trim().to_string());
                }
                "volatile" => {
                    let attr = rest.trim();
                    if attr.is_empty() {
                        return Err(err("expected `volatile:Attribute Name` (or `volatile:none`)"));
                    }
                    if attr == "none" {
                        no_default_volatile = true;
                    } else {
                        volatile.insert(attr.to_string());
                    }
                }
                other => {
                    return Err(err(&format!(
                        "unknown directive `{other}:`; expected `key:`, `map:`, `config:` or `volatile:`"
                    )))
                }
            }
        }
        let Some(key) = key else {
            return Err(MappingError {
                line: text.lines().count().max(1),
                text: String::new(),
                message: "the mapping has no `key:` line; one is required".into(),
            });
        };
        if maps.iter().any(|(_, a)| *a == key.1) {
            // The key attribute is written from the key line; a map line for it would disagree.
            let line = text
                .lines()
                .position(|l| {
                    l.trim_start().starts_with("map:") && l.contains(&format!("={}", key.1))
                })
                .map(|p| p + 1)
                .unwrap_or(1);
            return Err(MappingError {
                line,
                text: text
                    .lines()
                    .nth(line - 1)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                message: format!("attribute `{}` is already the key", key.1),
            });
        }
        if !no_default_volatile {
            volatile.extend(DEFAULT_VOLATILE.iter().map(|a| a.to_string()));
        }
        Ok(Mapping {
            key,
            maps,
            config,
            volatile,
        })
    }

    /// Whether an attribute is volatile (moves at every check-in).
    pub fn is_volatile(&self, attr: &str) -> bool {
        self.volatile.contains(attr)
    }

    /// The attribute the key is written to.
    pub fn key_attr(&self) -> &str {
        &self.key.1
    }

    /// Every attribute this mapping owns (the key attribute included).
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.key.1.as_str()).chain(self.maps.iter().map(|(_, a)| a.as_str()))
    }

    /// A `config:` value.
    pub fn config(&self, name: &str) -> Option<&str> {
        self.config.get(name).map(String::as_str)
    }

    /// Map one raw source record.
    pub fn apply(&self, raw: &Value, object_type: ObjectType) -> MappedRecord {
        let mut attrs = BTreeMap::new();
        let key = eval(&self.key.0, raw).and_then(|k| normalize::key(object_type, &k));
        if let Some(k) = &key {
            attrs.insert(self.key.1.clone(), k.clone());
        }
        for (expr, attr) in &self.maps {
            if let Some(v) = eval(expr, raw) {
                attrs.insert(attr.clone(), v);
            }
        }
        MappedRecord {
            key,
            attrs,
            ..Default::default()
        }
    }
}

fn strip_comment(line: &str) -> &str {
    // `#` starts a comment only after whitespace (or at the start), so `#` inside values survives.
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn parse_source(src: &str) -> Result<SourceExpr, String> {
    if src.is_empty() {
        return Err("the source path before `=` is empty".into());
    }
    let (alts, transform) = match src.rsplit_once('~') {
        Some((a, t)) => {
            let t = t.trim();
            let tr = Transform::parse(t)
                .ok_or_else(|| format!("unknown transform `~{t}`; known: {}", Transform::NAMES))?;
            (a, Some(tr))
        }
        None => (src, None),
    };
    let mut alternatives = Vec::new();
    for alt in alts.split('|') {
        let alt = alt.trim();
        if alt.is_empty() {
            return Err("an empty alternative between `|`".into());
        }
        if let Some(lit) = alt.strip_prefix('\'') {
            let lit = lit
                .strip_suffix('\'')
                .ok_or("a literal must end with `'`")?;
            alternatives.push(Source::Literal(lit.to_string()));
        } else {
            alternatives.push(Source::Path(parse_path(alt)?));
        }
    }
    Ok(SourceExpr {
        alternatives,
        transform,
    })
}

/// Parse `a.b[0].c` or `["a.b"].c`.
pub fn parse_path(p: &str) -> Result<Vec<Segment>, String> {
    let mut segs = Vec::new();
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    let mut cur = String::new();
    while i < chars.len() {
        match chars[i] {
            '.' => {
                if cur.is_empty()
                    && !matches!(
                        segs.last(),
                        Some(Segment::Index(_)) | Some(Segment::Field(_))
                    )
                {
                    return Err(format!("empty path segment in `{p}`"));
                }
                if !cur.is_empty() {
                    segs.push(Segment::Field(std::mem::take(&mut cur)));
                }
                i += 1;
            }
            '[' => {
                if !cur.is_empty() {
                    segs.push(Segment::Field(std::mem::take(&mut cur)));
                }
                let close = chars[i..]
                    .iter()
                    .position(|c| *c == ']')
                    .ok_or(format!("unclosed `[` in `{p}`"))?
                    + i;
                let inner: String = chars[i + 1..close].iter().collect();
                let inner = inner.trim();
                if let Some(q) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                    segs.push(Segment::Field(q.to_string()));
                } else {
                    let n: usize = inner
                        .parse()
                        .map_err(|_| format!("`[{inner}]` in `{p}` must be an array index such as [0] or a quoted key such as [\"a.b\"]"))?;
                    segs.push(Segment::Index(n));
                }
                i = close + 1;
            }
            c if c.is_whitespace() => return Err(format!("a source path has no spaces: `{p}`")),
            c => {
                cur.push(c);
                i += 1;
            }
        }
    }
    if !cur.is_empty() {
        segs.push(Segment::Field(cur));
    }
    if segs.is_empty() {
        return Err("the source path is empty".into());
    }
    Ok(segs)
}

/// Evaluate a source expression against a record: the first non-empty alternative, transformed.
pub fn eval(expr: &SourceExpr, raw: &Value) -> Option<String> {
    for alt in &expr.alternatives {
        let v = match alt {
            Source::Literal(l) => Some(l.clone()),
            Source::Path(p) => lookup(raw, p).and_then(scalar),
        };
        if let Some(v) = v {
            let v = match expr.transform {
                Some(t) => t.apply(v),
                None => Some(v),
            };
            if let Some(v) = v.filter(|s| !s.trim().is_empty()) {
                return Some(v.trim().to_string());
            }
        }
    }
    None
}

/// Walk a path; a whole dotted path that is itself a key (`managedcomputerextn.service_tag`) also matches.
pub fn lookup<'a>(raw: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    if let [Segment::Field(_), Segment::Field(_), ..] = path {
        let joined: Vec<&str> = path
            .iter()
            .map_while(|s| match s {
                Segment::Field(f) => Some(f.as_str()),
                Segment::Index(_) => None,
            })
            .collect();
        if joined.len() == path.len() {
            if let Some(v) = raw.get(joined.join(".")) {
                return Some(v);
            }
        }
    }
    let mut cur = raw;
    for seg in path {
        cur = match seg {
            Segment::Field(f) => cur.get(f.as_str())?,
            Segment::Index(n) => cur.get(*n)?,
        };
    }
    Some(cur)
}

/// A JSON value as a register string; `None` for null, empty and objects.
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()).filter(|s| !s.trim().is_empty()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar).collect();
            (!parts.is_empty()).then(|| parts.join(", "))
        }
        Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_applies_paths_alternatives_literals() {
        let m = Mapping::parse(
            "# comment\nkey:hardware.serialNumber=Serial Number\nmap:general.name=Name\nmap:hardware.macAddress|hardware.altMacAddress~mac=MAC Address\nmap:hardware.make|'Apple'=Manufacturer\nmap:tags[1]=Second Tag\nconfig:api=computers-inventory",
        )
        .unwrap();
        let raw = json!({"general": {"name": "MBP"}, "hardware": {"serialNumber": " c02abc ", "macAddress": "", "altMacAddress": "a4c3f0112233"}, "tags": ["a", "b"]});
        let r = m.apply(&raw, ObjectType::Hardware);
        assert_eq!(r.key.as_deref(), Some("C02ABC"));
        assert_eq!(r.attrs["Serial Number"], "C02ABC");
        assert_eq!(r.attrs["MAC Address"], "A4:C3:F0:11:22:33");
        assert_eq!(r.attrs["Manufacturer"], "Apple");
        assert_eq!(r.attrs["Second Tag"], "b");
        assert_eq!(m.config("api"), Some("computers-inventory"));
    }

    #[test]
    fn dotted_literal_key_and_quoted_segment() {
        let m = Mapping::parse("key:managedcomputerextn.service_tag=Serial\nmap:[\"managedcomputerextn.service_tag\"]~lower=Tag").unwrap();
        let raw = json!({"managedcomputerextn.service_tag": "5CG1234XYZ"});
        let r = m.apply(&raw, ObjectType::Hardware);
        assert_eq!(r.key.as_deref(), Some("5CG1234XYZ"));
        assert_eq!(r.attrs["Tag"], "5cg1234xyz");
    }

    #[test]
    fn missing_values_are_not_reported() {
        let m = Mapping::parse("key:id=ID\nmap:a.b=B\nmap:c=C").unwrap();
        let r = m.apply(
            &json!({"id": 7, "a": {"b": null}, "c": ""}),
            ObjectType::Person,
        );
        assert_eq!(r.key.as_deref(), Some("7"));
        assert!(!r.attrs.contains_key("B") && !r.attrs.contains_key("C"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = Mapping::parse("key:id=ID\nmap:general.name Name").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("mapping line 2"), "{e}");
        let e = Mapping::parse("key:id=ID\n\nmapp:x=Y").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unknown directive"));
        let e = Mapping::parse("map:x=Y").unwrap_err();
        assert!(e.message.contains("no `key:`"));
        let e = Mapping::parse("key:id=ID\nmap:x~nope=Y").unwrap_err();
        assert!(e.message.contains("unknown transform"));
        let e = Mapping::parse("key:id=ID\nmap:a[x]=Y").unwrap_err();
        assert!(e.message.contains("array index"));
    }

    #[test]
    fn placeholder_serial_is_no_key() {
        let m = Mapping::parse("key:s=Serial").unwrap();
        for p in [
            "To be filled by O.E.M.",
            "0",
            "Not Specified",
            "Default string",
            "System Serial Number",
            "  ",
        ] {
            assert_eq!(
                m.apply(&json!({"s": p}), ObjectType::Hardware).key,
                None,
                "{p}"
            );
        }
    }
}
