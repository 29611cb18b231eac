//! A pod volume over a dataset that joins a real S3 server (moto on loopback,
//! `pip install 'moto[server]'`) and a local directory, through the real agent
//! and plugin. Needs root.

use strata_testkit::agent as support;
use strata_testkit::{data::content, fuse::require_fuse, s3::S3Server};

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use strata_agent::api::client::AgentClient;
use strata_csi::proto::node_client::NodeClient;
use strata_csi::proto::volume_capability::{
    AccessMode, AccessType, MountVolume, access_mode::Mode,
};
use strata_csi::proto::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};
use strata_csi::volume::{CTX_DATASET, CTX_EPHEMERAL, CTX_POD_NAMESPACE};
use support::{TestAgent, is_mounted, sha256_file};
use tonic::transport::{Endpoint, Uri};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_and_local_sources_in_one_pod_volume() {
    require_fuse();
    let s3 = S3Server::start();
    s3.create_bucket("datasets");
    let objects: Vec<(String, Vec<u8>)> = vec![
        ("imagenet/train/0001.jpg".into(), content(1, 200 * 1024 + 5)),
        ("imagenet/train/0002.jpg".into(), content(2, 64 * 1024)),
        ("imagenet/val/0003.jpg".into(), content(3, 999)),
    ];
    s3.upload("datasets", &objects).await;

    let agent = TestAgent::start().await;
    let source = s3.source("train", "s3://datasets/imagenet/", "/s3");
    let config = serde_json::json!({
        "sources": [
            serde_json::to_value(&source).unwrap(),
            {"name": "local", "uri": format!("file://{}", agent.source.display()), "mountPath": "/local"},
        ],
        "cache": {"blockSize": 65536},
    });
    let summary = agent
        .local()
        .put_dataset("ml", "mixed", &config)
        .await
        .unwrap();
    assert!(!summary.to_string().contains("testing-secret"), "{summary}");

    let socket = agent.dir.path().join("csi.sock");
    let listener = strata_csi::server::bind(&socket).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(strata_csi::server::serve(
        listener,
        "node-1".into(),
        AgentClient::unix(&agent.socket),
        async {
            let _ = stop_rx.await;
        },
    ));
    let channel = Endpoint::try_from("http://[::]:50051")
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
        .unwrap();
    let mut node = NodeClient::new(channel);

    let target = agent
        .dir
        .path()
        .join("pods/p1/volumes/kubernetes.io~csi/data/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let context: HashMap<String, String> = [
        (CTX_DATASET, "mixed"),
        (CTX_POD_NAMESPACE, "ml"),
        (CTX_EPHEMERAL, "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: "csi-s3-volume".into(),
        target_path: target.to_string_lossy().into(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
        }),
        readonly: true,
        volume_context: context,
        ..Default::default()
    })
    .await
    .unwrap();

    // Objects from S3 under /s3, files from the directory under /local, byte for byte.
    let mut expected: Vec<(String, String)> = objects
        .iter()
        .map(|(key, data)| {
            (
                format!("s3/{}", key.trim_start_matches("imagenet/")),
                hex::encode(Sha256::digest(data)),
            )
        })
        .collect();
    expected.extend(
        agent
            .files
            .iter()
            .map(|(rel, sum)| (format!("local/{rel}"), sum.clone())),
    );
    let root = target.clone();
    tokio::task::spawn_blocking(move || {
        for (rel, sum) in expected {
            assert_eq!(sha256_file(&root.join(&rel)), sum, "{rel}");
        }
    })
    .await
    .unwrap();

    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "csi-s3-volume".into(),
        target_path: target.to_string_lossy().into(),
    })
    .await
    .unwrap();
    assert!(!is_mounted(&target) && !target.exists());
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    agent.stop().await;
}
