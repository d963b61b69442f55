//! EndpointCentral simulator (placeholder).
