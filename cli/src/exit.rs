//! Exit codes carried through `anyhow` to `main`.

use std::fmt;

/// The run failed.
pub const RUN_FAILED: i32 = 2;
/// The connection already has a run in progress; nothing was started.
pub const ALREADY_RUNNING: i32 = 3;

/// Leave with `code`, printing `message` (if any) to stderr.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: Option<String>,
}

impl Exit {
    pub fn with_message(code: i32, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Exit {
            code,
            message: Some(message.into()),
        })
    }

    /// Leave with `code`, everything already printed.
    pub fn silent(code: i32) -> anyhow::Error {
        anyhow::Error::new(Exit {
            code,
            message: None,
        })
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{m} (exit {})", self.code),
            None => write!(f, "exit {}", self.code),
        }
    }
}

impl std::error::Error for Exit {}

/// An error and its causes on one line, each cause once.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn causes_are_joined_once() {
        let e = Err::<(), _>(std::io::Error::other("disk full"))
            .context("writing x")
            .unwrap_err();
        assert_eq!(one_line(&e), "writing x: disk full");
    }
}
