//! Python bindings for connector. Empty until the connector-py issue lands; nothing is exported yet.
