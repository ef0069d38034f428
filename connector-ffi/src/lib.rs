//! C ABI for connector. Empty until the connector-ffi issue lands; nothing is exported yet.
