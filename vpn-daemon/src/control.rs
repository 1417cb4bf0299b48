//! The control API (`docs/control-api.md`) in the daemon: the Unix socket it is served on,
//! which only root may open, and the daemon as a [`vpnd_api::Control`]. The routes, the
//! parsing of bodies and the mapping of errors to status codes are `vpnd-api`'s, shared
//! with every client; the work is the daemon's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use vpn_core::{NetworkId, PublicKey};
use vpnd_api::{
    Control, ControlError, DaemonStatus, MacEntry, NetworkSpec, NetworkStatus, PeerSpec, PeerStatus,
};

use crate::daemon::Daemon;

/// The control API over `daemon`.
pub fn router(daemon: Arc<Daemon>) -> axum::Router {
    vpnd_api::router(daemon)
}

// Each method calls the daemon's inherent method of the same name (inherent methods win
// over trait methods in `Daemon::name` paths), converting the typed network id.
impl Control for Daemon {
    async fn status(self: &Arc<Self>) -> DaemonStatus {
        Daemon::status(self).await
    }

    async fn network(self: &Arc<Self>, id: NetworkId) -> Result<NetworkStatus, ControlError> {
        Daemon::network(self, id.0).await
    }

    async fn add_network(
        self: &Arc<Self>,
        spec: NetworkSpec,
    ) -> Result<NetworkStatus, ControlError> {
        Daemon::add_network(self, spec).await
    }

    async fn remove_network(self: &Arc<Self>, id: NetworkId) -> Result<(), ControlError> {
        Daemon::remove_network(self, id.0).await
    }

    async fn start_network(self: &Arc<Self>, id: NetworkId) -> Result<NetworkStatus, ControlError> {
        Daemon::start_network(self, id.0).await
    }

    async fn stop_network(self: &Arc<Self>, id: NetworkId) -> Result<NetworkStatus, ControlError> {
        Daemon::stop_network(self, id.0).await
    }

    async fn add_peer(
        self: &Arc<Self>,
        id: NetworkId,
        peer: PeerSpec,
    ) -> Result<PeerStatus, ControlError> {
        Daemon::add_peer(self, id.0, peer).await
    }

    async fn remove_peer(
        self: &Arc<Self>,
        id: NetworkId,
        key: PublicKey,
    ) -> Result<(), ControlError> {
        Daemon::remove_peer(self, id.0, &key).await
    }

    async fn mac_table(self: &Arc<Self>, id: NetworkId) -> Result<Vec<MacEntry>, ControlError> {
        Daemon::mac_table(self, id.0).await
    }
}

/// Why the control socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("control socket {0} is in use: is another vpnd running?")]
    InUse(PathBuf),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the control socket: its directory is created if missing, a stale socket from a
/// dead daemon is replaced, a live one is an error, and the socket is made root-only.
pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BindError::Io { what, path, source }
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("making root-only", dir))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io("removing the stale", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io("binding control socket", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("making root-only", path))?;
    Ok(listener)
}
