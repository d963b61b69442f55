//! Jamf Pro simulator (placeholder).
