//! Data hygiene: keys, serials, MAC addresses, timestamps.

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use crate::event::ObjectType;

/// Placeholders vendors and OEMs emit instead of a serial (compared upper-cased).
const SERIAL_PLACEHOLDERS: &[&str] = &[
    "0",
    "NOT SPECIFIED",
    "TO BE FILLED BY O.E.M.",
    "DEFAULT STRING",
    "SYSTEM SERIAL NUMBER",
    "NONE",
    "N/A",
    "NULL",
    "UNKNOWN",
    "0123456789",
    "CHASSIS SERIAL NUMBER",
    "--",
];

/// Normalise a serial number; `None` for an empty value or a placeholder.
pub fn serial(raw: &str) -> Option<String> {
    let s = raw.trim().to_uppercase();
    if s.is_empty() || SERIAL_PLACEHOLDERS.contains(&s.as_str()) || s.chars().all(|c| c == '0') {
        return None;
    }
    Some(s)
}

/// Normalise a record key for its type: hardware keys are serials, email-like keys are lower-cased.
pub fn key(object_type: ObjectType, raw: &str) -> Option<String> {
    match object_type {
        ObjectType::Hardware => serial(raw),
        _ => {
            let s = raw.trim();
            if s.is_empty() {
                None
            } else if s.contains('@') {
                Some(s.to_lowercase())
            } else {
                Some(s.to_string())
            }
        }
    }
}

/// Normalise an email for matching.
pub fn email(raw: &str) -> Option<String> {
    let s = raw.trim().to_lowercase();
    (s.contains('@') && !s.starts_with('@') && !s.ends_with('@')).then_some(s)
}

/// The first MAC address of a value, as upper-case colon-separated hex.
pub fn mac(raw: &str) -> Option<String> {
    for part in raw.split([',', ';', ' ']) {
        let hex: String = part.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        if hex.len() == 12 && hex.chars().any(|c| c != '0') {
            let up = hex.to_uppercase();
            let pairs: Vec<&str> = (0..6).map(|i| &up[i * 2..i * 2 + 2]).collect();
            return Some(pairs.join(":"));
        }
    }
    None
}

/// Epoch milliseconds (as text) to RFC 3339; `None` for zero or garbage.
pub fn epoch_ms_to_rfc3339(raw: &str) -> Option<String> {
    let ms: i64 = raw.trim().parse().ok()?;
    if ms <= 0 {
        return None;
    }
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Parse any vendor timestamp: RFC 3339, `2024-01-26 16:15:36.087016+00:00`, epoch ms.
pub fn parse_time(raw: &str) -> Option<DateTime<Utc>> {
    let s = raw.trim();
    if s.is_empty() || s.starts_with("0001-01-01") {
        return None;
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
    ] {
        if let Ok(d) = DateTime::parse_from_str(s, fmt) {
            return Some(d.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(Utc.from_utc_datetime(&d));
        }
    }
    if s.len() >= 12 && s.chars().all(|c| c.is_ascii_digit()) {
        let ms: i64 = s.parse().ok()?;
        return Utc.timestamp_millis_opt(ms).single();
    }
    None
}

/// Any vendor timestamp to RFC 3339 UTC.
pub fn timestamp(raw: &str) -> Option<String> {
    parse_time(raw).map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials() {
        assert_eq!(serial(" c02xyz "), Some("C02XYZ".into()));
        assert_eq!(serial("To be filled by O.E.M."), None);
        assert_eq!(serial("000000"), None);
    }

    #[test]
    fn macs() {
        assert_eq!(mac("a4c3f0112233").as_deref(), Some("A4:C3:F0:11:22:33"));
        assert_eq!(
            mac("--,00:1a:2b:3c:4d:5e").as_deref(),
            Some("00:1A:2B:3C:4D:5E")
        );
        assert_eq!(mac("--"), None);
    }

    #[test]
    fn times() {
        assert_eq!(
            timestamp("2024-01-26 16:15:36.087016+00:00").as_deref(),
            Some("2024-01-26T16:15:36Z")
        );
        assert_eq!(
            timestamp("2024-07-23T14:11:37.150080Z").as_deref(),
            Some("2024-07-23T14:11:37Z")
        );
        assert_eq!(timestamp("0001-01-01T00:00:00Z"), None);
        assert_eq!(
            epoch_ms_to_rfc3339("1718873142000").as_deref(),
            Some("2024-06-20T08:45:42Z")
        );
    }
}
