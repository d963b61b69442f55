//! Kandji simulator (placeholder).
