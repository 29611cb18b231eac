//! Serves the CSI services on a unix socket, and the kubelet's plugin registration on another.

use crate::controller::ControllerService;
use crate::error::{CsiError, Result};
use crate::identity::IdentityService;
use crate::node::NodeService;
use crate::pluginregistration::registration_server::RegistrationServer;
use crate::proto::controller_server::ControllerServer;
use crate::proto::identity_server::IdentityServer;
use crate::proto::node_server::NodeServer;
use crate::registration::RegistrationService;
use std::future::Future;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use strata_wire::api::client::AgentClient;
use tokio::net::UnixListener;

/// Turns `unix:///csi/csi.sock` (or a bare absolute path) into the socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(CsiError::invalid(
            "endpoint",
            format!(
                "{endpoint:?} is not unix:///absolute/path.sock; the CSI plugin listens only on a local socket"
            ),
        ));
    }
    Ok(PathBuf::from(path))
}

/// Binds the socket, replacing a stale one left by a previous run.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CsiError::io(format!("creating {}", parent.display()), e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| {
                CsiError::io(format!("removing stale socket {}", path.display()), e)
            })?;
        }
        Ok(_) => {
            return Err(CsiError::FailedPrecondition(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        Err(_) => {}
    }
    UnixListener::bind(path)
        .map_err(|e| CsiError::io(format!("listening on {}", path.display()), e))
}

fn incoming(
    listener: UnixListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| stream);
        Some((next, listener))
    })
}

/// Runs Identity, Node and Controller on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    node_id: String,
    agent: AgentClient,
    shutdown: impl Future<Output = ()> + Send,
) -> std::result::Result<(), tonic::transport::Error> {
    let incoming = incoming(listener);
    tonic::transport::Server::builder()
        .trace_fn(|request| tracing::info_span!("csi", method = %request.uri().path()))
        .add_service(IdentityServer::new(IdentityService::new(agent.clone())))
        .add_service(NodeServer::new(NodeService::new(node_id, agent.clone())))
        .add_service(ControllerServer::new(ControllerService::new(agent)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Runs the kubelet's `Registration` service on `listener` (a socket in the kubelet's
/// plugins_registry directory) until `shutdown` resolves, telling the kubelet that the CSI
/// socket is at `kubelet_endpoint` (its path on the host).
pub async fn serve_registration(
    listener: UnixListener,
    kubelet_endpoint: String,
    shutdown: impl Future<Output = ()> + Send,
) -> std::result::Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .trace_fn(|request| tracing::info_span!("registration", method = %request.uri().path()))
        .add_service(RegistrationServer::new(RegistrationService::new(
            kubelet_endpoint,
        )))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_must_be_a_unix_socket() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("/csi/csi.sock").unwrap(),
            Path::new("/csi/csi.sock")
        );
        assert!(socket_path("tcp://0.0.0.0:1").is_err());
        assert!(socket_path("unix://csi.sock").is_err());
    }
}
