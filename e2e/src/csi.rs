//! Talking to a `strata-csi` plugin on its unix socket the way kubelet does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::CSIPersistentVolumeSource;
use strata_csi::proto::node_client::NodeClient;
use strata_csi::proto::volume_capability::{AccessMode, AccessType, MountVolume, access_mode};
use strata_csi::proto::{NodePublishVolumeRequest, VolumeCapability};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Error, Result};

/// A CSI Node client over the plugin's unix socket (the URL is a placeholder tonic needs; every
/// connection goes to `socket`).
pub async fn csi_connect(socket: PathBuf) -> Result<NodeClient<Channel>> {
    let path = socket.clone();
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .map_err(|source| Error::CsiConnect {
            socket: path,
            source,
        })?;
    Ok(NodeClient::new(channel))
}

/// A read-only, multi-node-reader mount of `volume_id` at `target`, as kubelet asks for a pod's
/// volume; `context` is the PV's volume attributes plus kubelet's `csi.storage.k8s.io/*` keys.
pub fn publish_request(
    volume_id: &str,
    target: &Path,
    context: HashMap<String, String>,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: access_mode::Mode::MultiNodeReaderOnly as i32,
            }),
        }),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
}

/// The volume context kubelet sends for a pod using a PersistentVolume: the PV's attributes plus
/// the pod's namespace and name (`podInfoOnMount`).
pub fn pod_volume_context(
    csi_source: &CSIPersistentVolumeSource,
    pod_namespace: &str,
    pod_name: &str,
) -> HashMap<String, String> {
    let mut context: HashMap<String, String> = csi_source
        .volume_attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    context.insert(
        "csi.storage.k8s.io/pod.namespace".into(),
        pod_namespace.into(),
    );
    context.insert("csi.storage.k8s.io/pod.name".into(), pod_name.into());
    context
}
