//! JumpCloud simulator (placeholder).
