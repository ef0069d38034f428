//! Runnable examples live beside this crate: `cargo run -p connector-examples --example embedded`.
