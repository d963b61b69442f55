//! Named crash points for crash-safety tests: an armed point makes the handler stop right there
//! with an error, as if the Lambda died, so nothing after it runs. Unarmed points cost one atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use crate::error::{AwsError, SyncError};

static ANY: AtomicBool = AtomicBool::new(false);
static ARMED: LazyLock<Mutex<HashMap<String, u32>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Make `name` fail its next `times` hits.
pub fn arm(name: &str, times: u32) {
    if let Ok(mut m) = ARMED.lock() {
        m.insert(name.to_string(), times);
        ANY.store(true, Ordering::SeqCst);
    }
}

/// Hits of `name` still armed.
pub fn remaining(name: &str) -> u32 {
    ARMED
        .lock()
        .ok()
        .and_then(|m| m.get(name).copied())
        .unwrap_or(0)
}

/// A crash point: `Err` when armed.
pub fn hit(name: &str) -> Result<(), SyncError> {
    if !ANY.load(Ordering::Relaxed) {
        return Ok(());
    }
    let Ok(mut m) = ARMED.lock() else {
        return Ok(());
    };
    match m.get_mut(name) {
        Some(n) if *n > 0 => {
            *n -= 1;
            tracing::warn!(failpoint = name, "simulated crash");
            Err(SyncError::Other(format!("simulated crash at {name}")))
        }
        _ => Ok(()),
    }
}

/// A crash point inside the AWS adapters: `Err` when armed.
pub fn hit_aws(name: &str) -> Result<(), AwsError> {
    hit(name).map_err(|e| AwsError::Item(e.to_string()))
}

/// An error point: `Err` when armed, like a failed AWS call (the handler notices and cleans up,
/// unlike a crash).
pub fn hit_error(name: &str) -> Result<(), SyncError> {
    hit(name).map_err(|_| SyncError::Other(format!("simulated error at {name}")))
}

/// Whether `e` is a simulated crash (the handler must not clean up after it: a dead Lambda can't).
pub fn is_crash(e: &SyncError) -> bool {
    ANY.load(Ordering::Relaxed) && e.to_string().contains("simulated crash at ")
}
