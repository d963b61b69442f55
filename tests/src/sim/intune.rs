//! Intune simulator (placeholder).
