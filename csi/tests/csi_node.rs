//! strata-csi against a real `strata-agent serve` (in-process, real FUSE mounts)
//! through a tonic client on the plugin's real unix socket. Needs root.

use strata_testkit::agent as support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_agent::api::client::AgentClient;
use strata_csi::proto::controller_client::ControllerClient;
use strata_csi::proto::identity_client::IdentityClient;
use strata_csi::proto::node_client::NodeClient;
use strata_csi::proto::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume, access_mode::Mode,
};
use strata_csi::proto::*;
use strata_csi::volume::{CTX_DATASET, CTX_EPHEMERAL, CTX_POD_NAMESPACE, CTX_SUB_PATH};
use support::{TestAgent, is_mounted, sha256_file};
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

struct Plugin {
    agent: TestAgent,
    node: NodeClient<Channel>,
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    pods: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn connect(socket: PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

impl Plugin {
    async fn start() -> Plugin {
        let agent = TestAgent::start().await;
        agent.add_dataset("ml", "imagenet").await;
        agent.add_dataset("finance", "ledger").await;
        let socket = agent.dir.path().join("csi/csi.sock");
        let listener = strata_csi::server::bind(&socket).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let client = AgentClient::unix(&agent.socket);
        let task = tokio::spawn(async move {
            strata_csi::server::serve(listener, "node-1".into(), client, async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
        let channel = connect(socket).await;
        let pods = agent.dir.path().join("kubelet/pods");
        std::fs::create_dir_all(&pods).unwrap();
        Plugin {
            node: NodeClient::new(channel.clone()),
            identity: IdentityClient::new(channel.clone()),
            controller: ControllerClient::new(channel),
            agent,
            pods,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// A kubelet-like target path: the parent exists, the target does not.
    fn target(&self, pod: &str) -> PathBuf {
        let parent = self.pods.join(pod).join("volumes/kubernetes.io~csi/data");
        std::fs::create_dir_all(&parent).unwrap();
        parent.join("mount")
    }

    async fn publish(&mut self, req: NodePublishVolumeRequest) -> Result<(), tonic::Status> {
        self.node.node_publish_volume(req).await.map(|_| ())
    }

    async fn unpublish(&mut self, volume_id: &str, target: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: volume_id.into(),
                target_path: target.to_string_lossy().into(),
            })
            .await
            .map(|_| ())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        self.agent.stop().await;
    }
}

fn mount_capability(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn inline(
    volume_id: &str,
    target: &Path,
    context: HashMap<String, String>,
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(mount_capability(Mode::SingleNodeWriter)),
        readonly: false,
        volume_context: context,
        ..Default::default()
    }
}

fn pod_ctx(dataset: &str) -> HashMap<String, String> {
    ctx(&[
        (CTX_DATASET, dataset),
        (CTX_POD_NAMESPACE, "ml"),
        (CTX_EPHEMERAL, "true"),
    ])
}

/// The mountinfo line for `path`: (root inside the file system, read-only).
fn mount_info(path: &Path) -> Option<(String, bool)> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        (Path::new(fields[4]) == path).then(|| {
            (
                fields[3].to_string(),
                fields[5].split(',').any(|o| o == "ro"),
            )
        })
    })
}

async fn checksums_under(dir: PathBuf, files: Vec<(String, String)>) {
    tokio::task::spawn_blocking(move || {
        for (rel, sum) in files {
            assert_eq!(sha256_file(&dir.join(&rel)), sum, "{rel}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identity_and_node_info() {
    let mut plugin = Plugin::start().await;
    let info = plugin
        .identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.strata.dev");
    assert!(!info.vendor_version.is_empty());
    let probe = plugin
        .identity
        .probe(ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));
    let node = plugin
        .node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.node_id, "node-1");
    assert_eq!(
        node.accessible_topology.unwrap().segments["topology.csi.strata.dev/node"],
        "node-1"
    );
    let caps = plugin
        .node
        .node_get_capabilities(NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(caps.capabilities.iter().any(|c| matches!(
        &c.r#type,
        Some(node_service_capability::Type::Rpc(r)) if r.r#type == node_service_capability::rpc::Type::GetVolumeStats as i32
    )));
    let controller = plugin
        .controller
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!controller.capabilities.is_empty());
    let valid = plugin
        .controller
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: "ml/imagenet".into(),
            volume_capabilities: vec![mount_capability(Mode::MultiNodeReaderOnly)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(valid.confirmed.is_some());
    let missing = plugin
        .controller
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: "ml/nope".into(),
            volume_capabilities: vec![mount_capability(Mode::MultiNodeReaderOnly)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // With the agent gone, Probe says so.
    let socket = plugin.agent.socket.clone();
    let agent_down = std::fs::rename(&socket, socket.with_extension("moved"));
    agent_down.unwrap();
    let err = plugin.identity.probe(ProbeRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("agent"), "{}", err.message());
    std::fs::rename(socket.with_extension("moved"), &socket).unwrap();
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_volume_publish_read_unpublish() {
    let mut plugin = Plugin::start().await;
    let target = plugin.target("pod-a");
    let request = inline("csi-0a1b2c", &target, pod_ctx("imagenet"));
    plugin.publish(request.clone()).await.unwrap();
    // The whole dataset, read-only even for a writer access mode: the dataset file
    // system is read-only, and the bind inherits that.
    let (root, read_only) = mount_info(&target).expect("target is not a mount point");
    assert_eq!((root.as_str(), read_only), ("/", true));

    // Every file reads through the pod's target path with the source's content.
    let files: Vec<_> = plugin.agent.files.clone().into_iter().collect();
    checksums_under(target.clone(), files).await;
    // The dataset file system itself refuses writes.
    let err = std::fs::write(target.join("new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{err}");

    // The same publish again is fine and mounts nothing more.
    plugin.publish(request).await.unwrap();
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(
        table
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap()))
            .count(),
        1
    );
    let dataset_mount = plugin.agent.mount_root.join("ml/imagenet");
    assert!(is_mounted(&dataset_mount));

    plugin.unpublish("csi-0a1b2c", &target).await.unwrap();
    assert!(!target.exists(), "target path left behind");
    assert!(!is_mounted(&target));
    // Last volume of the dataset: the agent released its FUSE mount too.
    assert!(!is_mounted(&dataset_mount));
    assert!(plugin.agent.local().volumes().await.unwrap().is_empty());
    // Unpublishing again is fine.
    plugin.unpublish("csi-0a1b2c", &target).await.unwrap();
    plugin.stop().await;
}

fn libc_erofs() -> i32 {
    nix::errno::Errno::EROFS as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_volume_read_only_sub_path_and_sharing() {
    let mut plugin = Plugin::start().await;
    let pv = |target: &Path, readonly: bool, sub_path: Option<&str>| NodePublishVolumeRequest {
        volume_id: "ml/imagenet".into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(mount_capability(Mode::MultiNodeReaderOnly)),
        readonly,
        volume_context: match sub_path {
            Some(p) => ctx(&[(CTX_POD_NAMESPACE, "ml"), (CTX_SUB_PATH, p)]),
            // As the operator writes them: the attributes repeat the handle.
            None => ctx(&[
                (CTX_POD_NAMESPACE, "ml"),
                (CTX_DATASET, "imagenet"),
                ("namespace", "ml"),
            ]),
        },
        ..Default::default()
    };

    // Read-only publish of /train.
    let a = plugin.target("pod-a");
    plugin.publish(pv(&a, true, Some("train/"))).await.unwrap();
    let (root, read_only) = mount_info(&a).unwrap();
    assert_eq!((root.as_str(), read_only), ("/train", true));
    let mut names: Vec<String> = std::fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.bin", "b.bin", "nested"]);
    let train: Vec<_> = plugin
        .agent
        .files
        .iter()
        .filter_map(|(rel, sum)| {
            rel.strip_prefix("train/")
                .map(|r| (r.to_string(), sum.clone()))
        })
        .collect();
    checksums_under(a.clone(), train).await;
    let err = std::fs::File::create(a.join("x")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc_erofs()));
    // Idempotent, and a different subPath or read-only flag on the same target conflicts.
    plugin.publish(pv(&a, true, Some("/train"))).await.unwrap();
    let err = plugin
        .publish(pv(&a, true, Some("/labels")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    // Asking for read-write gets the same read-only bind: compatible, not a conflict.
    plugin.publish(pv(&a, false, Some("/train"))).await.unwrap();
    // Another volume at an occupied target conflicts and leaves nothing recorded for it.
    let err = plugin
        .publish(inline("csi-other", &a, pod_ctx("imagenet")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(plugin.agent.local().volumes().await.unwrap().len(), 1);

    // A second pod uses the same PersistentVolume: one dataset mount, two volumes.
    let b = plugin.target("pod-b");
    plugin.publish(pv(&b, false, None)).await.unwrap();
    assert_eq!(plugin.agent.local().volumes().await.unwrap().len(), 2);
    let stats = plugin
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "ml/imagenet".into(),
            volume_path: b.to_string_lossy().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!stats.usage.is_empty());
    assert!(!stats.volume_condition.unwrap().abnormal);

    plugin.unpublish("ml/imagenet", &a).await.unwrap();
    // Pod b still reads.
    assert_eq!(
        sha256_file(&b.join("labels/labels.csv")),
        plugin.agent.files["labels/labels.csv"]
    );
    plugin.unpublish("ml/imagenet", &b).await.unwrap();
    assert!(!is_mounted(&plugin.agent.mount_root.join("ml/imagenet")));
    let err = plugin
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "ml/imagenet".into(),
            volume_path: b.to_string_lossy().into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_the_right_codes() {
    let mut plugin = Plugin::start().await;
    let target = plugin.target("pod-bad");
    let cases: Vec<(&str, NodePublishVolumeRequest, Code, &str)> = vec![
        (
            "missing dataset",
            inline("v1", &target, pod_ctx("nope")),
            Code::NotFound,
            "ml/nope",
        ),
        (
            "relative target",
            NodePublishVolumeRequest {
                target_path: "pods/x/mount".into(),
                ..inline("v1", &target, pod_ctx("imagenet"))
            },
            Code::InvalidArgument,
            "target_path",
        ),
        (
            "subPath with ..",
            inline(
                "v1",
                &target,
                ctx(&[
                    (CTX_DATASET, "imagenet"),
                    (CTX_POD_NAMESPACE, "ml"),
                    (CTX_SUB_PATH, "train/../../etc"),
                ]),
            ),
            Code::InvalidArgument,
            "volume_context.subPath",
        ),
        (
            "subPath that does not exist",
            inline(
                "v1",
                &target,
                ctx(&[
                    (CTX_DATASET, "imagenet"),
                    (CTX_POD_NAMESPACE, "ml"),
                    (CTX_SUB_PATH, "/nope"),
                ]),
            ),
            Code::NotFound,
            "/nope",
        ),
        (
            "inline volume naming another namespace",
            inline("v1", &target, pod_ctx("finance/ledger")),
            Code::PermissionDenied,
            "finance",
        ),
        (
            "persistent volume of another namespace",
            NodePublishVolumeRequest {
                volume_id: "finance/ledger".into(),
                volume_context: ctx(&[(CTX_POD_NAMESPACE, "ml")]),
                ..inline("v1", &target, HashMap::new())
            },
            Code::PermissionDenied,
            "finance",
        ),
        (
            "no pod info",
            inline("v1", &target, ctx(&[(CTX_DATASET, "imagenet")])),
            Code::FailedPrecondition,
            "podInfoOnMount",
        ),
        (
            "no volume id",
            NodePublishVolumeRequest {
                volume_id: String::new(),
                ..inline("v1", &target, pod_ctx("imagenet"))
            },
            Code::InvalidArgument,
            "volume_id",
        ),
        (
            "no capability",
            NodePublishVolumeRequest {
                volume_capability: None,
                ..inline("v1", &target, pod_ctx("imagenet"))
            },
            Code::InvalidArgument,
            "volume_capability",
        ),
        (
            "block access",
            NodePublishVolumeRequest {
                volume_capability: Some(VolumeCapability {
                    access_type: Some(AccessType::Block(BlockVolume {})),
                    access_mode: Some(AccessMode {
                        mode: Mode::SingleNodeWriter as i32,
                    }),
                }),
                ..inline("v1", &target, pod_ctx("imagenet"))
            },
            Code::InvalidArgument,
            "block",
        ),
    ];
    for (what, request, code, mentions) in cases {
        let err = plugin.publish(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {}", err.message());
        assert!(
            err.message().contains(mentions),
            "{what}: {}",
            err.message()
        );
        assert!(!is_mounted(&target), "{what} left a mount");
    }
    // Nothing failed half-way left a volume recorded or a dataset mounted.
    assert!(plugin.agent.local().volumes().await.unwrap().is_empty());
    assert!(!is_mounted(&plugin.agent.mount_root.join("ml/imagenet")));

    let err = plugin.unpublish("", &target).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = plugin.unpublish("v1", Path::new("")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = plugin
        .node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "v1".into(),
            volume_path: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    tokio::time::sleep(Duration::from_millis(10)).await;
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_writer_volume_has_one_target_per_node() {
    let mut plugin = Plugin::start().await;
    let request = |target: &Path| NodePublishVolumeRequest {
        volume_id: "ml/imagenet".into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(mount_capability(Mode::SingleNodeSingleWriter)),
        volume_context: ctx(&[(CTX_POD_NAMESPACE, "ml")]),
        ..Default::default()
    };
    let (a, b) = (plugin.target("pod-a"), plugin.target("pod-b"));
    plugin.publish(request(&a)).await.unwrap();
    plugin.publish(request(&a)).await.unwrap();
    let err = plugin.publish(request(&b)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(!is_mounted(&b));
    // Once the first pod is gone, the second may have it.
    plugin.unpublish("ml/imagenet", &a).await.unwrap();
    plugin.publish(request(&b)).await.unwrap();
    plugin.unpublish("ml/imagenet", &b).await.unwrap();
    plugin.stop().await;
}
