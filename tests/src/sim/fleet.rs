//! Seeded synthetic data shared by the simulators: serials, names (some unicode), people.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A deterministic random source for a fleet.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

const FIRST: &[&str] = &[
    "Alice", "Bob", "Chloé", "Dmitri", "Eve", "Fatima", "Günther", "Hana", "Ingrid", "José",
    "Kenji", "Léa", "Mårten", "Nora", "Oğuz", "Priya", "Quinn", "Renée", "Søren", "Tomás", "Uma",
    "Zoë", "李", "Анна",
];
const LAST: &[&str] = &[
    "Anderson",
    "Brown",
    "Castillo",
    "Dubois",
    "Eriksson",
    "Fischer",
    "García",
    "Hernández",
    "Ito",
    "Jensen",
    "Kim",
    "López",
    "Müller",
    "Nakamura",
    "O'Brien",
    "Patel",
    "Rossi",
    "Schröder",
    "Tanaka",
    "Weiß",
    "Ząbek",
    "王",
    "Иванова",
];

/// A synthetic person of the directory everyone's devices are assigned from.
#[derive(Debug, Clone)]
pub struct Person {
    pub index: usize,
    pub first: String,
    pub last: String,
    pub email: String,
    pub username: String,
}

/// The shared directory: person `i` is the same person in every simulator with the same seed,
/// so devices from one vendor match people from another by email.
pub fn person(i: usize) -> Person {
    let first = FIRST[i % FIRST.len()].to_string();
    let last = LAST[(i / FIRST.len()) % LAST.len()].to_string();
    let ascii = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_lowercase()
    };
    let f = if ascii(&first).is_empty() {
        format!("user{i}")
    } else {
        ascii(&first)
    };
    let l = if ascii(&last).is_empty() {
        "x".to_string()
    } else {
        ascii(&last)
    };
    let username = format!("{f}.{l}{i}");
    Person {
        index: i,
        email: format!("{username}@example.com"),
        first,
        last,
        username,
    }
}

/// A serial number of `len` upper-case letters and digits, unique per (prefix, i).
pub fn serial(prefix: &str, i: usize, len: usize) -> String {
    let mut s = format!(
        "{prefix}{i:0width$}",
        width = len.saturating_sub(prefix.len())
    );
    s.truncate(len.max(prefix.len() + 1));
    s
}

/// A hex id of `len` characters derived from `i` (JumpCloud `_id`, etc.).
pub fn hex_id(seed: u64, i: usize, len: usize) -> String {
    let mut r = rng(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..len)
        .map(|_| char::from_digit(r.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

/// A UUID derived from `i`.
pub fn uuid(seed: u64, i: usize) -> String {
    let h = hex_id(seed, i, 32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A MAC address derived from `i`.
pub fn mac(seed: u64, i: usize, colons: bool) -> String {
    let h = hex_id(seed.wrapping_add(7), i, 12).to_uppercase();
    if colons {
        (0..6)
            .map(|k| &h[k * 2..k * 2 + 2])
            .collect::<Vec<_>>()
            .join(":")
    } else {
        h.to_lowercase()
    }
}

/// A stable random choice from a list, per (seed, i, salt).
pub fn pick<T>(seed: u64, i: usize, salt: u64, items: &[T]) -> &T {
    let mut r = rng(seed ^ salt ^ ((i as u64) << 20));
    &items[r.random_range(0..items.len())]
}

/// A stable random number in `0..n`.
pub fn num(seed: u64, i: usize, salt: u64, n: u64) -> u64 {
    let mut r = rng(seed ^ salt.wrapping_mul(31) ^ ((i as u64) << 24));
    r.random_range(0..n.max(1))
}

/// Check-in times that move on every request, as real fleets' do (Kandji every ~15 minutes,
/// Jamf at each contact): each call of [`CheckinClock::tick`] is a later time, to the millisecond
/// format the vendors use.
#[derive(Debug, Default)]
pub struct CheckinClock(std::sync::atomic::AtomicU64);

impl CheckinClock {
    /// The next check-in time (a second after the previous one, from 2026-01-01).
    pub fn tick(&self) -> String {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .map(|d| d.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        (base + chrono::Duration::seconds(n as i64 + 1))
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    }
}
