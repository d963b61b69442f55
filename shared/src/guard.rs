//! The guards on "missing", without AWS: the grace period (a record is marked missing only after
//! N consecutive complete runs without it) and the circuit breaker (a complete run whose record
//! count falls too far against the connection's baseline marks nothing missing).
//!
//! Both read their settings from the mapping's `config:` lines:
//! `config:missing_after=N` (default 2) and `config:max_drop=P%` (default 20%, `off` disables).
//! The breaker is released once by the event's `allow_drop: true` (`assetsync sync --allow-drop`).

use serde::{Deserialize, Serialize};

use crate::error::SyncError;
use crate::mapping::Mapping;

/// Complete runs a record must be absent from before it is marked missing, by default.
pub const DEFAULT_MISSING_AFTER: u32 = 2;
/// Largest drop (percent of the baseline's record count) a complete run may show, by default.
pub const DEFAULT_MAX_DROP_PERCENT: f64 = 20.0;

/// A connection's guard settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardConfig {
    /// `config:missing_after`: consecutive complete runs without a record before it is marked.
    pub missing_after: u32,
    /// `config:max_drop`: the breaker's threshold in percent; `None` when switched off.
    pub max_drop_percent: Option<f64>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            missing_after: DEFAULT_MISSING_AFTER,
            max_drop_percent: Some(DEFAULT_MAX_DROP_PERCENT),
        }
    }
}

impl GuardConfig {
    /// Read the guard settings from a mapping's `config:` lines; a bad value is named.
    pub fn from_mapping(m: &Mapping) -> Result<Self, SyncError> {
        let mut g = GuardConfig::default();
        if let Some(v) = m.config("missing_after") {
            g.missing_after = v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    SyncError::Event(format!(
                        "config:missing_after={v} must be a whole number of runs, 1 or more"
                    ))
                })?;
        }
        if let Some(v) = m.config("max_drop") {
            let t = v.trim();
            g.max_drop_percent = if t.eq_ignore_ascii_case("off") {
                None
            } else {
                let p = t
                    .trim_end_matches('%')
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| {
                        SyncError::Event(format!(
                            "config:max_drop={v} must be a percentage from 0 to 100 (e.g. `20%`) or `off`"
                        ))
                    })?;
                Some(p)
            };
        }
        Ok(g)
    }
}

/// What the circuit breaker says about a complete run.
#[derive(Debug, Clone, PartialEq)]
pub enum Breaker {
    /// No baseline yet, no drop beyond the threshold, or the breaker is off.
    Pass,
    /// The count fell too far: nothing is marked missing.
    Tripped {
        before: u64,
        after: u64,
        percent: f64,
    },
    /// The count fell too far, and the event's one-off override let it through.
    Overridden {
        before: u64,
        after: u64,
        percent: f64,
    },
}

impl Breaker {
    /// Whether the run may mark records missing.
    pub fn may_mark(&self) -> bool {
        !matches!(self, Breaker::Tripped { .. })
    }

    /// Whether the run becomes the connection's new baseline.
    pub fn sets_baseline(&self) -> bool {
        self.may_mark()
    }

    /// The run's message, when the breaker had something to say.
    pub fn message(&self) -> Option<String> {
        match self {
            Breaker::Pass => None,
            Breaker::Tripped {
                before,
                after,
                percent,
            } => Some(format!(
                "circuit breaker: the record count fell from {before} to {after} ({percent:.1}% drop, more than the connection's threshold) against the last accepted complete run: no record was marked missing; if the drop is real, sync again with --allow-drop (event field `allow_drop: true`)"
            )),
            Breaker::Overridden {
                before,
                after,
                percent,
            } => Some(format!(
                "circuit breaker overridden (allow_drop): the record count fell from {before} to {after} ({percent:.1}% drop); missing records were marked"
            )),
        }
    }
}

/// The breaker's decision: `baseline` is the record count of the connection's last accepted
/// complete run (`None` before the first), `fetched` this run's.
pub fn breaker(
    cfg: &GuardConfig,
    baseline: Option<u64>,
    fetched: u64,
    allow_drop: bool,
) -> Breaker {
    let (Some(threshold), Some(before)) = (cfg.max_drop_percent, baseline) else {
        return Breaker::Pass;
    };
    if before == 0 || fetched >= before {
        return Breaker::Pass;
    }
    let percent = (before - fetched) as f64 * 100.0 / before as f64;
    if percent <= threshold {
        return Breaker::Pass;
    }
    if allow_drop {
        Breaker::Overridden {
            before,
            after: fetched,
            percent,
        }
    } else {
        Breaker::Tripped {
            before,
            after: fetched,
            percent,
        }
    }
}

/// How a connection's record stands against its runs: absent from `count` consecutive complete
/// runs, the last of which was `run`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Absence {
    pub count: u32,
    pub run: Option<String>,
}

/// The absence count after complete run `run`, which did not report the record; `previous` is the
/// connection's complete run before it. Consecutive only if the count was last raised by
/// `previous` (a run that reported the record in between reset it). A repeated sweep of the same
/// run counts nothing twice.
pub fn next_absence(a: &Absence, run: &str, previous: Option<&str>) -> u32 {
    match a.run.as_deref() {
        Some(r) if r == run => a.count.max(1),
        Some(r) if a.count > 0 && Some(r) == previous => a.count + 1,
        _ => 1,
    }
}

/// What the sweep does with one record this run did not report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still within its grace: only its absence count moves.
    Wait,
    /// Grace run out but the breaker holds: only its absence count moves.
    Held,
    /// Mark it missing from this connection.
    Mark,
}

/// The sweep's verdict for a record absent from `absent` consecutive complete runs.
pub fn verdict(cfg: &GuardConfig, absent: u32, breaker: &Breaker) -> Verdict {
    if absent < cfg.missing_after {
        Verdict::Wait
    } else if !breaker.may_mark() {
        Verdict::Held
    } else {
        Verdict::Mark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<GuardConfig, SyncError> {
        GuardConfig::from_mapping(&Mapping::parse(&format!("key:x=Serial Number\n{text}")).unwrap())
    }

    #[test]
    fn defaults_and_config_lines() {
        assert_eq!(cfg("").unwrap(), GuardConfig::default());
        assert_eq!(cfg("").unwrap().missing_after, 2);
        let c = cfg("config:missing_after=3\nconfig:max_drop=35%").unwrap();
        assert_eq!(c.missing_after, 3);
        assert_eq!(c.max_drop_percent, Some(35.0));
        assert_eq!(cfg("config:max_drop=off").unwrap().max_drop_percent, None);
        assert_eq!(
            cfg("config:max_drop=10").unwrap().max_drop_percent,
            Some(10.0)
        );
        let e = cfg("config:missing_after=0").unwrap_err().to_string();
        assert!(e.contains("missing_after=0"), "{e}");
        let e = cfg("config:max_drop=lots").unwrap_err().to_string();
        assert!(e.contains("max_drop=lots"), "{e}");
        assert!(cfg("config:max_drop=120%").is_err());
    }

    #[test]
    fn the_breaker_trips_on_a_drop_beyond_the_threshold() {
        let c = GuardConfig::default();
        assert_eq!(
            breaker(&c, None, 0, false),
            Breaker::Pass,
            "no baseline yet"
        );
        assert_eq!(
            breaker(&c, Some(100), 80, false),
            Breaker::Pass,
            "20% is allowed"
        );
        assert_eq!(breaker(&c, Some(100), 130, false), Breaker::Pass);
        let b = breaker(&c, Some(100), 70, false);
        assert!(
            matches!(
                b,
                Breaker::Tripped {
                    before: 100,
                    after: 70,
                    ..
                }
            ),
            "{b:?}"
        );
        assert!(!b.may_mark() && !b.sets_baseline());
        let msg = b.message().unwrap();
        assert!(
            msg.contains("100") && msg.contains("70") && msg.contains("30.0%"),
            "{msg}"
        );
        let o = breaker(&c, Some(100), 70, true);
        assert!(matches!(o, Breaker::Overridden { .. }) && o.may_mark() && o.sets_baseline());
        assert!(matches!(
            breaker(&c, Some(100), 0, false),
            Breaker::Tripped { .. }
        ));
        let off = GuardConfig {
            max_drop_percent: None,
            ..c
        };
        assert_eq!(breaker(&off, Some(100), 0, false), Breaker::Pass);
    }

    #[test]
    fn absence_counts_consecutive_complete_runs_once_each() {
        let fresh = Absence::default();
        assert_eq!(next_absence(&fresh, "r2", Some("r1")), 1);
        let once = Absence {
            count: 1,
            run: Some("r2".into()),
        };
        assert_eq!(next_absence(&once, "r3", Some("r2")), 2, "consecutive");
        assert_eq!(next_absence(&once, "r2", Some("r1")), 1, "a repeated sweep");
        assert_eq!(
            next_absence(&once, "r4", Some("r3")),
            1,
            "r3 reported it in between: counting starts again"
        );
        let c = GuardConfig::default();
        assert_eq!(verdict(&c, 1, &Breaker::Pass), Verdict::Wait);
        assert_eq!(verdict(&c, 2, &Breaker::Pass), Verdict::Mark);
        let tripped = breaker(&c, Some(10), 1, false);
        assert_eq!(verdict(&c, 2, &tripped), Verdict::Held);
        assert_eq!(verdict(&c, 1, &tripped), Verdict::Wait);
    }
}
