//! `--admin ADDR`: the admin endpoints of `connector server` and `connector agent`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use connector_core::admin::{self, AdminTarget};

/// Binds `addr` and serves /metrics, /healthz and /readyz for `target` in the background.
pub async fn start(addr: SocketAddr, target: Arc<dyn AdminTarget>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --admin {addr}"))?;
    tokio::spawn(admin::serve(listener, target));
    Ok(())
}
