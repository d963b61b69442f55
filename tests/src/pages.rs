//! Hand-built page messages, for tests that feed the importer directly (no fetcher, no vendor).

use std::collections::BTreeMap;

use assetsync::event::{Mode, ObjectType, PageMessage, SourceKind};
use assetsync::mapping::MappedRecord;

/// A mapped record with these attributes.
pub fn mapped(key: &str, attrs: &[(&str, &str)]) -> MappedRecord {
    MappedRecord {
        key: Some(key.to_string()),
        attrs: attrs
            .iter()
            .map(|(a, v)| (a.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        source_id: Some(format!("id-{key}")),
        checked_in: None,
        parent: None,
    }
}

/// A device with a serial and a user email.
pub fn device(serial: &str, email: &str) -> MappedRecord {
    mapped(
        serial,
        &[
            ("Serial Number", serial),
            ("User Email", email),
            ("Model", "MacBook Pro"),
        ],
    )
}

/// An active person with an email.
pub fn person(key: &str, email: &str) -> MappedRecord {
    let name = format!("Person {key}");
    mapped(
        key,
        &[
            ("Email", email),
            ("Display Name", &name),
            ("Status", "active"),
        ],
    )
}

/// Page `n` of a connection, of a run that has no run item: imported the same way as any
/// page, counted nowhere.
pub fn page(
    connection: &str,
    source: SourceKind,
    ot: ObjectType,
    n: u32,
    records: Vec<MappedRecord>,
) -> PageMessage {
    PageMessage {
        run_id: format!("20260101T000000.000Z-{connection}-0001"),
        connection: connection.to_string(),
        source,
        object_type: ot,
        mode: Mode::CreateUpdate,
        page: n,
        chunk: 0,
        records,
        skipped: vec![],
    }
}
