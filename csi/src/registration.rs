//! Kubelet plugin registration: the `Registration` service the kubelet's plugin watcher calls on
//! a socket it finds in `<kubelet dir>/plugins_registry/`. It tells the kubelet the driver's
//! name and where its CSI socket is; the kubelet then calls NodeGetInfo and lists the driver in
//! the node's CSINode. Other drivers ship the node-driver-registrar sidecar for this; serving
//! these two calls here is one container (and one image) fewer.

use crate::DRIVER_NAME;
use crate::pluginregistration::registration_server::Registration;
use crate::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use std::path::{Path, PathBuf};
use tonic::{Request, Response, Status};

/// The plugin type the kubelet routes to its CSI handler.
const PLUGIN_TYPE: &str = "CSIPlugin";
/// CSI spec versions the plugin speaks; the kubelet picks the highest it knows.
const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];

/// The registration socket in `dir`: `csi.strata.dev-reg@localhost.sock`.
///
/// The `@localhost` is needed. The kubelet dials this socket by its path without setting an
/// authority (unlike its CSI client, which sends `localhost`), so grpc-go sends the path,
/// percent-encoded, as `:authority`: `%2Fvar%2Flib%2Fkubelet%2F...`. The HTTP/2 server under
/// tonic (h2) resets every stream whose authority does not parse, and a `%` is only allowed in
/// the userinfo, before an `@`. grpc-go leaves `@` unescaped, so with it in the file name the
/// path becomes userinfo and `localhost.sock` the host. (Seen with kubelet 1.37.2: "stream
/// terminated by RST_STREAM with error code: PROTOCOL_ERROR" on GetInfo without it.)
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(format!("{DRIVER_NAME}-reg@localhost.sock"))
}

pub struct RegistrationService {
    /// The CSI socket as the kubelet (on the host) sees it, not as this container mounts it.
    kubelet_endpoint: String,
}

impl RegistrationService {
    pub fn new(kubelet_endpoint: impl Into<String>) -> Self {
        RegistrationService {
            kubelet_endpoint: kubelet_endpoint.into(),
        }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: PLUGIN_TYPE.to_string(),
            name: DRIVER_NAME.to_string(),
            endpoint: self.kubelet_endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!(endpoint = %self.kubelet_endpoint, "registered with the kubelet");
        } else {
            // The kubelet retries while the socket exists; the sidecar would exit here, but that
            // would take the CSI service down with it.
            tracing::error!(error = %status.error, endpoint = %self.kubelet_endpoint,
                "the kubelet refused the registration (it retries)");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
