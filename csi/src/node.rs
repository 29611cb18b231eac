//! CSI Node: publish a dataset (or a directory of it) at a pod's target path.

use crate::error::{CsiError, Result};
use crate::proto::node_server::Node;
use crate::proto::node_service_capability::{Rpc, rpc};
use crate::proto::volume_capability::{AccessType, access_mode::Mode};
use crate::proto::{
    NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse, NodeGetInfoRequest,
    NodeGetInfoResponse, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse,
    NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability,
    NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, Topology, VolumeCapability,
    VolumeCondition, VolumeUsage, node_service_capability, volume_usage,
};
use crate::volume::{self, VolumeSpec};
use crate::{TOPOLOGY_NODE_KEY, bind, mount_table};
use nix::errno::Errno;
use std::path::{Component, Path, PathBuf};
use strata_wire::api::client::AgentClient;
use tonic::{Request, Response, Status};

pub struct NodeService {
    node_id: String,
    agent: AgentClient,
    /// Publish and unpublish read the mount table, then change it: one at a time.
    mount_lock: tokio::sync::Mutex<()>,
}

impl NodeService {
    pub fn new(node_id: impl Into<String>, agent: AgentClient) -> Self {
        NodeService {
            node_id: node_id.into(),
            agent,
            mount_lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn publish(&self, req: NodePublishVolumeRequest) -> Result<()> {
        let target = required_path("target_path", &req.volume_id, &req.target_path)?;
        let access = check_capability(req.volume_capability.as_ref())?;
        let read_only = req.readonly || access.read_only;
        let spec = volume::resolve(&req.volume_id, &req.volume_context)?;
        let key = volume::volume_key(&req.volume_id, &req.target_path);

        let _guard = self.mount_lock.lock().await;
        if access.single_target {
            self.check_single_target(&req.volume_id, &key).await?;
        }
        let mount = match self
            .agent
            .acquire_volume(&spec.namespace, &spec.dataset, &key, Some(&req.volume_id))
            .await
        {
            Ok(mount) => mount,
            Err(e) if e.status().is_some_and(|s| s.as_u16() == 404) => {
                return Err(CsiError::NotFound(format!(
                    "dataset {} is not known to the Strata agent on node {}: create the Dataset in namespace {:?} (or fix the name), then retry",
                    spec.qualified_name(),
                    self.node_id,
                    spec.namespace
                )));
            }
            Err(e) => {
                return Err(CsiError::agent(
                    format!(
                        "asking the node agent to mount dataset {}",
                        spec.qualified_name()
                    ),
                    e,
                ));
            }
        };

        let result = self.bind_volume(&spec, &mount.mount_path, &target, read_only);
        if result.is_err() && mount.new_volume {
            // Undo our claim on the dataset mount, so that a failed publish does
            // not keep the dataset mounted forever.
            if let Err(e) = self.agent.release_volume(&key).await {
                tracing::warn!(error = %e, volume_key = %key, "could not release the volume after a failed publish");
            }
        }
        result
    }

    /// Single-node single-target access modes: refuse a second target for the volume.
    async fn check_single_target(&self, volume_id: &str, key: &str) -> Result<()> {
        let volumes = self
            .agent
            .volumes()
            .await
            .map_err(|e| CsiError::agent("listing the node agent's volumes", e))?;
        if volumes
            .iter()
            .any(|v| v.owner.as_deref() == Some(volume_id) && v.volume_id != key)
        {
            return Err(CsiError::FailedPrecondition(format!(
                "volume {volume_id} is already published at another target path on this node, and its access mode allows only one"
            )));
        }
        Ok(())
    }

    fn bind_volume(
        &self,
        spec: &VolumeSpec,
        mount_path: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<()> {
        let source = mount_path.join(spec.sub_path.relative());
        let sub_path = spec.sub_path.as_str();
        match std::fs::metadata(&source) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(CsiError::invalid(
                    "volume_context.subPath",
                    format!(
                        "{sub_path} in dataset {} is a file; give a directory",
                        spec.qualified_name()
                    ),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CsiError::NotFound(format!(
                    "subPath {sub_path} does not exist in dataset {}",
                    spec.qualified_name()
                )));
            }
            Err(e) if e.raw_os_error() == Some(Errno::ENOTCONN as i32) => {
                return Err(CsiError::Unavailable(format!(
                    "the FUSE mount of dataset {} at {} is not connected (the agent restarted?); retry",
                    spec.qualified_name(),
                    mount_path.display()
                )));
            }
            Err(e) => return Err(CsiError::io(format!("checking {}", source.display()), e)),
        }

        let table = mount_table::read()?;
        let Some(dataset_mount) = mount_table::mount_at(&table, mount_path) else {
            return Err(CsiError::FailedPrecondition(format!(
                "the agent reported dataset {} mounted at {}, but this plugin does not see a mount there: mount that directory into the plugin's container (docs/csi.md, mount propagation)",
                spec.qualified_name(),
                mount_path.display()
            )));
        };

        // A bind inherits the read-only flag of the dataset mount, so what a pod gets is
        // read-only when either says so.
        let effective_read_only = read_only || dataset_mount.read_only;
        if let Some(existing) = mount_table::mount_at(&table, target) {
            if existing.device == dataset_mount.device
                && existing.root == Path::new(sub_path)
                && existing.read_only == effective_read_only
            {
                tracing::debug!(target = %target.display(), "already published");
                return Ok(());
            }
            return Err(CsiError::AlreadyExists(format!(
                "target_path {} already has a different volume published (mounted: device {} directory {} {}; requested: dataset {} directory {sub_path} {})",
                target.display(),
                existing.device,
                existing.root.display(),
                if existing.read_only {
                    "read-only"
                } else {
                    "read-write"
                },
                spec.qualified_name(),
                if effective_read_only {
                    "read-only"
                } else {
                    "read-write"
                },
            )));
        }

        let created = !target.exists();
        std::fs::create_dir_all(target)
            .map_err(|e| CsiError::io(format!("creating target_path {}", target.display()), e))?;
        if let Err(e) = bind::bind(&source, target, read_only) {
            if created {
                let _ = std::fs::remove_dir(target);
            }
            return Err(e);
        }
        tracing::info!(
            dataset = %spec.qualified_name(),
            sub_path,
            target = %target.display(),
            read_only,
            "published"
        );
        Ok(())
    }

    async fn unpublish(&self, req: NodeUnpublishVolumeRequest) -> Result<()> {
        let target = required_path("target_path", &req.volume_id, &req.target_path)?;
        let key = volume::volume_key(&req.volume_id, &req.target_path);
        let _guard = self.mount_lock.lock().await;

        // Binds may be stacked if something published twice behind our back: unmount them all.
        for _ in 0..8 {
            let table = mount_table::read()?;
            if mount_table::mount_at(&table, &target).is_none() {
                break;
            }
            bind::unmount(&target)?;
        }
        if mount_table::mount_at(&mount_table::read()?, &target).is_some() {
            return Err(CsiError::FailedPrecondition(format!(
                "target_path {} is still mounted after unmounting it 8 times",
                target.display()
            )));
        }
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(Errno::ENOTDIR as i32) => {
                std::fs::remove_file(&target).map_err(|e| {
                    CsiError::io(format!("removing target_path {}", target.display()), e)
                })?
            }
            Err(e) => {
                return Err(CsiError::io(
                    format!("removing target_path {}", target.display()),
                    e,
                ));
            }
        }

        match self.agent.release_volume(&key).await {
            Ok(release) => {
                tracing::info!(target = %target.display(), released = release.released, unmounted_dataset = release.unmounted, "unpublished");
                Ok(())
            }
            // An agent that is gone has lost its FUSE mounts and its volume records
            // with it: there is nothing left to release, and failing here would only
            // keep the pod from terminating.
            Err(e) if e.is_unreachable() => {
                tracing::warn!(error = %e, target = %target.display(), "unpublished, but the node agent is unreachable; nothing to release");
                Ok(())
            }
            Err(e) => Err(CsiError::agent(
                "telling the node agent the volume is gone",
                e,
            )),
        }
    }

    fn volume_stats(&self, req: &NodeGetVolumeStatsRequest) -> Result<NodeGetVolumeStatsResponse> {
        if req.volume_id.is_empty() {
            return Err(CsiError::invalid("volume_id", "is required"));
        }
        if req.volume_path.is_empty() {
            return Err(CsiError::invalid("volume_path", "is required"));
        }
        let path = Path::new(&req.volume_path);
        let table = mount_table::read()?;
        if !path.is_absolute() || mount_table::mount_at(&table, path).is_none() {
            return Err(CsiError::NotFound(format!(
                "volume {} is not published at volume_path {}",
                req.volume_id, req.volume_path
            )));
        }
        match nix::sys::statvfs::statvfs(path) {
            Ok(st) => {
                let frag = st.fragment_size() as i64;
                let total = st.blocks() as i64 * frag;
                let available = st.blocks_available() as i64 * frag;
                let used = total - st.blocks_free() as i64 * frag;
                let inodes = st.files() as i64;
                let inodes_free = st.files_available() as i64;
                Ok(NodeGetVolumeStatsResponse {
                    usage: vec![
                        VolumeUsage {
                            available,
                            total,
                            used: used.max(0),
                            unit: volume_usage::Unit::Bytes as i32,
                        },
                        VolumeUsage {
                            available: inodes_free,
                            total: inodes,
                            used: (inodes - st.files_free() as i64).max(0),
                            unit: volume_usage::Unit::Inodes as i32,
                        },
                    ],
                    volume_condition: Some(VolumeCondition {
                        abnormal: false,
                        message: "dataset mount is serving".to_string(),
                    }),
                })
            }
            Err(Errno::ENOTCONN) => Ok(NodeGetVolumeStatsResponse {
                usage: vec![],
                volume_condition: Some(VolumeCondition {
                    abnormal: true,
                    message: "the dataset's FUSE mount is not connected: the Strata agent on this node stopped; restart the pod once the agent is back".to_string(),
                }),
            }),
            Err(e) => Err(CsiError::mount(format!("statfs on {}", path.display()), e)),
        }
    }
}

/// Checks the fields every publish/unpublish needs, in the order the CSI spec lists them.
fn required_path(field: &'static str, volume_id: &str, path: &str) -> Result<PathBuf> {
    if volume_id.is_empty() {
        return Err(CsiError::invalid("volume_id", "is required"));
    }
    if path.is_empty() {
        return Err(CsiError::invalid(field, "is required"));
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(CsiError::invalid(
            field,
            format!("{} is not an absolute path", path.display()),
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(CsiError::invalid(
            field,
            format!("{} contains \"..\"", path.display()),
        ));
    }
    Ok(path)
}

/// What an access mode means for a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Access {
    read_only: bool,
    /// The volume may be published at one target path of the node only.
    single_target: bool,
}

/// Accepts mount volumes in any access mode. A reader mode gets a read-only bind; a
/// writer mode a read-write one, on which the agent refuses writes (EROFS) to the
/// paths of sources whose writeMode is ReadOnly.
fn check_capability(capability: Option<&VolumeCapability>) -> Result<Access> {
    let Some(capability) = capability else {
        return Err(CsiError::invalid("volume_capability", "is required"));
    };
    match &capability.access_type {
        Some(AccessType::Mount(_)) => {}
        Some(AccessType::Block(_)) => {
            return Err(CsiError::invalid(
                "volume_capability.block",
                "Strata volumes are file systems: use volumeMode Filesystem",
            ));
        }
        None => {
            return Err(CsiError::invalid(
                "volume_capability.access_type",
                "is required (mount)",
            ));
        }
    }
    let Some(access_mode) = &capability.access_mode else {
        return Err(CsiError::invalid(
            "volume_capability.access_mode",
            "is required",
        ));
    };
    let (read_only, single_target) = match Mode::try_from(access_mode.mode) {
        Ok(Mode::Unknown) | Err(_) => {
            return Err(CsiError::invalid(
                "volume_capability.access_mode",
                format!("mode {} is not a known access mode", access_mode.mode),
            ));
        }
        Ok(Mode::SingleNodeReaderOnly) => (true, true),
        Ok(Mode::MultiNodeReaderOnly) => (true, false),
        Ok(Mode::SingleNodeSingleWriter) => (false, true),
        Ok(_) => (false, false),
    };
    Ok(Access {
        read_only,
        single_target,
    })
}

fn capability(kind: rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(Rpc {
            r#type: kind as i32,
        })),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id, target = %request.get_ref().target_path))]
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        match self.publish(request.into_inner()).await {
            Ok(()) => Ok(Response::new(NodePublishVolumeResponse {})),
            Err(e) => {
                tracing::warn!(error = %e, "publish failed");
                Err(e.into())
            }
        }
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id, target = %request.get_ref().target_path))]
    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        match self.unpublish(request.into_inner()).await {
            Ok(()) => Ok(Response::new(NodeUnpublishVolumeResponse {})),
            Err(e) => {
                tracing::warn!(error = %e, "unpublish failed");
                Err(e.into())
            }
        }
    }

    #[tracing::instrument(skip_all, fields(volume_id = %request.get_ref().volume_id, path = %request.get_ref().volume_path))]
    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Ok(Response::new(self.volume_stats(request.get_ref())?))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                capability(rpc::Type::GetVolumeStats),
                capability(rpc::Type::VolumeCondition),
                capability(rpc::Type::SingleNodeMultiWriter),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(Topology {
                segments: [(TOPOLOGY_NODE_KEY.to_string(), self.node_id.clone())].into(),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::volume_capability::{AccessMode, BlockVolume, MountVolume};
    use tonic::Code;

    fn cap(mode: Mode, block: bool) -> VolumeCapability {
        VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume::default())
            }),
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    #[test]
    fn reader_modes_are_read_only() {
        let access = |mode| check_capability(Some(&cap(mode, false))).unwrap();
        assert_eq!(
            access(Mode::MultiNodeReaderOnly),
            Access {
                read_only: true,
                single_target: false
            }
        );
        assert_eq!(
            access(Mode::SingleNodeWriter),
            Access {
                read_only: false,
                single_target: false
            }
        );
        assert_eq!(
            access(Mode::SingleNodeSingleWriter),
            Access {
                read_only: false,
                single_target: true
            }
        );
        assert_eq!(
            check_capability(Some(&cap(Mode::SingleNodeWriter, true)))
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        assert_eq!(
            check_capability(None).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn target_paths_must_be_absolute_and_plain() {
        assert!(required_path("target_path", "v", "/var/lib/kubelet/x").is_ok());
        for bad in ["", "relative/x", "/a/../b"] {
            let err = required_path("target_path", "v", bad).unwrap_err();
            assert!(err.to_string().starts_with("target_path"), "{err}");
        }
        assert!(
            required_path("target_path", "", "/x")
                .unwrap_err()
                .to_string()
                .starts_with("volume_id")
        );
    }
}
