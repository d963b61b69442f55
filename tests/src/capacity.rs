//! DynamoDB's billing units, computed from item sizes as DynamoDB bills them.
//!
//! moto reports one capacity unit per request whatever the item size, so the units it returns
//! cannot price a sync. These functions follow "DynamoDB item sizes and formats" and the
//! on-demand pricing page: a write request unit writes up to 1 KB of one item, a read request unit
//! reads up to 4 KB strongly consistent (half a unit eventually consistent); a Query is billed on
//! the summed size of the items it reads, not per item.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

/// US East on-demand list price of a million write request units (since November 2024).
pub const USD_PER_MILLION_WRU: f64 = 0.625;
/// US East on-demand list price of a million read request units (since November 2024).
pub const USD_PER_MILLION_RRU: f64 = 0.125;

/// The size DynamoDB gives an item: attribute names plus values, with map and list overheads.
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

/// The size of one value (without its name).
pub fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        // 3 bytes per list or map, 1 per element.
        AttributeValue::L(l) => 3 + l.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, e)| 1 + k.len() + value_size(e))
                .sum::<usize>()
        }
        _ => 0,
    }
}

/// One byte per two significant digits, plus one.
fn number_size(n: &str) -> usize {
    let digits: String = n.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.div_ceil(2) + 1
}

/// Write request units to write (or delete) one item of `bytes`: 1 per KB, at least 1.
pub fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

/// Read request units to read `bytes` in one item or one Query page: 1 per 4 KB, at least 1,
/// half that for an eventually consistent read.
pub fn read_units(bytes: usize, consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

/// Dollars at the list prices above.
pub fn dollars(read_units: f64, write_units: f64) -> f64 {
    (read_units * USD_PER_MILLION_RRU + write_units * USD_PER_MILLION_WRU) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    #[test]
    fn sizes_follow_the_documented_rules() {
        // name + bytes for strings; name + 1 for booleans.
        let item = HashMap::from([
            ("pk".to_string(), s("R#x")),
            ("ok".into(), AttributeValue::Bool(true)),
        ]);
        assert_eq!(item_size(&item), 2 + 3 + 2 + 1);
        // A map: 3 bytes, plus per element 1 + name + value.
        let m = AttributeValue::M(HashMap::from([("a".to_string(), s("bc"))]));
        assert_eq!(value_size(&m), 3 + 1 + 1 + 2);
        let l = AttributeValue::L(vec![s("ab"), s("c")]);
        assert_eq!(value_size(&l), 3 + 3 + 2);
        // Numbers: leading and trailing zeros trimmed, 1 byte per 2 digits, plus 1.
        assert_eq!(number_size("12345"), 4);
        assert_eq!(number_size("1000"), 2);
        assert_eq!(number_size("-0.0125"), 2 + 1);
    }

    #[test]
    fn units_round_up_per_item() {
        assert_eq!(write_units(0), 1.0);
        assert_eq!(write_units(1024), 1.0);
        assert_eq!(write_units(1025), 2.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(10, false), 0.5);
        // 10,000 devices, one 1 KB write each, 720 times a month: $4.50.
        assert!((dollars(0.0, 10_000.0 * 720.0) - 4.5).abs() < 1e-9);
    }
}
