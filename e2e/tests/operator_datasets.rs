//! The operator on a real kube-apiserver, with a real S3 server (moto) on
//! loopback: examples/s3.yaml becomes a PV and a bound PVC, an agent config in
//! the datasets Secret, a CronJob and per-node pin Jobs; fake node reports
//! (written as the agents write them) move the Dataset to Ready with the
//! summed cached bytes; `kubectl get datasets` shows the columns; deleting the
//! Dataset waits for the nodes, then removes everything and the finalizer.

mod operator_common;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use operator_common::*;
use strata_crds::{Dataset, DatasetPhase};
use strata_e2e::{Cluster, TestNamespace};

const WAIT: Duration = Duration::from_secs(60);

fn condition<'a>(
    ds: &'a Dataset,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    ds.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_example_end_to_end() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-datasets").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();

    // The data: 3 objects, 4096 bytes, under the example's two prefixes.
    let s3 = S3Server::start()?;
    s3.create_bucket("datasets")?;
    s3.put_object("datasets", "imagenet/train/a.bin", 1000)?;
    s3.put_object("datasets", "imagenet/train/b.bin", 3000)?;
    s3.put_object("datasets", "imagenet/labels/l.txt", 96)?;
    // Unrelated data next to the prefixes must not be counted.
    s3.put_object("datasets", "other/z.bin", 5000)?;

    let operator = RunningOperator::start(cluster, &namespace, "op-datasets", &[]).await?;
    cluster
        .apply(&example("s3.yaml", &namespace, Some(&s3.endpoint()))?)
        .await?;

    // Listed by the operator, handed to the agents; no node has reported yet.
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);
    let ds = eventually("imagenet listed and Pending", WAIT, || async {
        let ds = datasets.get("imagenet").await?;
        let st = ds.status.clone().unwrap_or_default();
        Ok((st.phase == Some(DatasetPhase::Pending) && st.total_bytes == Some(4096)).then_some(ds))
    })
    .await?;
    let status = ds.status.clone().unwrap_or_default();
    assert_eq!(status.files, Some(3));
    assert_eq!(status.policy.as_deref(), Some("hot-training"));
    assert_eq!(status.observed_generation, ds.metadata.generation);
    assert!(status.last_sync_time.is_some());
    assert_eq!(condition(&ds, "SourcesReachable").unwrap().status, "True");
    assert_eq!(
        condition(&ds, "PolicyResolved").unwrap().reason,
        "PolicyFound"
    );
    let ready = condition(&ds, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "WaitingForNodes")
    );
    assert!(
        ds.finalizers()
            .iter()
            .any(|f| f == "strata.dev/dataset-cleanup")
    );

    // The agent config: one key, credentials resolved, the policy's settings.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let key = format!("{namespace}.imagenet.yaml");
    let config = eventually("datasets Secret key", WAIT, || async {
        let secret = secrets.get_opt("strata-datasets").await?;
        Ok(secret.and_then(|s| s.data).and_then(|d| {
            d.get(&key)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        }))
    })
    .await?;
    for needle in [
        "name: imagenet",
        "accessKeyId: minioadmin",
        "secretAccessKey: minioadmin",
        "mountPath: /train",
        "blockSize: 8388608",
        "eviction: S3FIFO",
        "/train/2026-11-*/**",
    ] {
        ensure!(
            config.contains(needle),
            "agent config lacks {needle:?}:\n{config}"
        );
    }

    // PV and PVC, bound to each other by the PV controller.
    let pv_name = format!("strata-{namespace}-imagenet");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let pvc = eventually("PVC imagenet Bound", WAIT, || async {
        let pvc = pvcs.get_opt("imagenet").await?;
        Ok(pvc.filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")))
    })
    .await?;
    let owner = &pvc.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Dataset", ds.uid().unwrap().as_str())
    );
    assert_eq!(
        pvc.spec.as_ref().unwrap().volume_name.as_deref(),
        Some(pv_name.as_str())
    );
    let pv = pvs.get(&pv_name).await?;
    let spec = pv.spec.clone().unwrap();
    let csi = spec.csi.unwrap();
    assert_eq!(csi.driver, "csi.strata.dev");
    assert_eq!(csi.volume_handle, format!("{namespace}/imagenet"));
    assert_eq!(spec.access_modes.unwrap(), vec!["ReadOnlyMany"]);
    assert_eq!(spec.claim_ref.unwrap().name.as_deref(), Some("imagenet"));

    // The scheduled preload is a CronJob owned by the policy.
    let crons: Api<CronJob> = Api::namespaced(client.clone(), &namespace);
    let by_policy = ListParams::default().labels("strata.dev/policy=hot-training");
    let cron = eventually("preload CronJob", WAIT, || async {
        Ok(crons.list(&by_policy).await?.items.into_iter().next())
    })
    .await?;
    assert_eq!(cron.spec.schedule, "0 2 * * *");
    assert_eq!(cron.owner_references()[0].kind, "CachePolicy");
    assert_eq!(cron.owner_references()[0].name, "hot-training");

    // Two agents report what they hold; the operator sums them.
    let node_a = format!("{namespace}-node-a");
    let node_b = format!("{namespace}-node-b");
    let uid = ds.uid();
    for (node, bytes) in [(&node_a, 1024), (&node_b, 1024)] {
        let report = Report {
            namespace: &namespace,
            name: "imagenet",
            uid: uid.clone(),
            cached_bytes: bytes,
            hits: 10,
            misses: 2,
        };
        report_node(&client, node, &[report]).await?;
    }
    let ready = eventually("imagenet Ready with summed bytes", WAIT, || async {
        let ds = datasets.get("imagenet").await?;
        let st = ds.status.clone().unwrap_or_default();
        Ok((st.phase == Some(DatasetPhase::Ready) && st.cached_bytes == Some(2048)).then_some(ds))
    })
    .await?;
    let st = ready.status.clone().unwrap();
    assert_eq!(st.cached_percent, Some(50));
    assert_eq!((st.hits, st.misses, st.nodes), (Some(20), Some(4), Some(2)));
    assert_eq!(condition(&ready, "Ready").unwrap().status, "True");

    // Pin rule with replicas All: exactly one Job per reporting node, owned by the policy.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let pins =
        ListParams::default().labels("strata.dev/policy=hot-training,strata.dev/job-kind=pin");
    eventually("one pin Job on each node", WAIT, || async {
        let items = jobs.list(&pins).await?.items;
        let on = |node: &str| {
            items
                .iter()
                .filter(|j| {
                    j.annotations().get("strata.dev/node").map(String::as_str) == Some(node)
                })
                .count()
        };
        Ok((on(&node_a) == 1 && on(&node_b) == 1).then_some(()))
    })
    .await?;
    let job = jobs.list(&pins).await?.items.into_iter().next().unwrap();
    assert_eq!(job.owner_references()[0].kind, "CachePolicy");
    let args = job.spec.unwrap().template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(&args[..1], ["pin"]);
    assert!(
        args.iter().any(|a| a == &format!("{namespace}/imagenet")),
        "{args:?}"
    );

    // kubectl shows the printer columns filled in.
    let table = cluster
        .kubectl(&["-n", &namespace, "get", "datasets"])
        .await?;
    let header = table.lines().next().unwrap_or("");
    for column in ["PHASE", "CACHED %", "SIZE", "FILES", "AGE"] {
        ensure!(header.contains(column), "no {column} column:\n{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("imagenet"))
        .unwrap_or("");
    let size = st.size.clone().unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    ensure!(
        cells[1..5] == ["Ready", "50", size.as_str(), "3"],
        "row: {row}"
    );

    let events = events_for(&client, &namespace, "imagenet").await?;
    ensure!(
        events.iter().any(|(t, r, _)| t == "Normal" && r == "Ready"),
        "no Ready event: {events:?}"
    );

    // Deletion: the key goes at once, the finalizer waits while nodes still report it.
    cluster
        .kubectl(&[
            "-n",
            &namespace,
            "delete",
            "dataset",
            "imagenet",
            "--wait=false",
        ])
        .await?;
    eventually("agent config removed", WAIT, || async {
        let secret = secrets.get("strata-datasets").await?;
        Ok((!secret.data.unwrap_or_default().contains_key(&key)).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(
        datasets.get_opt("imagenet").await?.is_some(),
        "finalizer did not wait for the nodes"
    );
    ensure!(
        pvs.get_opt(&pv_name).await?.is_some(),
        "PV removed before the nodes dropped the dataset"
    );

    // The agents drop it: everything goes, the finalizer is released.
    let released = Instant::now();
    report_node(&client, &node_a, &[]).await?;
    report_node(&client, &node_b, &[]).await?;
    eventually("Dataset gone", WAIT, || async {
        Ok(datasets.get_opt("imagenet").await?.is_none().then_some(()))
    })
    .await?;
    eventually("PVC gone", WAIT, || async {
        Ok(pvcs.get_opt("imagenet").await?.is_none().then_some(()))
    })
    .await?;
    eventually("PV gone", WAIT, || async {
        Ok(pvs.get_opt(&pv_name).await?.is_none().then_some(()))
    })
    .await?;
    eventually("pin Jobs gone", WAIT, || async {
        Ok(jobs.list(&pins).await?.items.is_empty().then_some(()))
    })
    .await?;
    eventually("CronJob gone", WAIT, || async {
        Ok(crons.list(&by_policy).await?.items.is_empty().then_some(()))
    })
    .await?;
    eprintln!(
        "deletion finished {:?} after the nodes released the dataset",
        released.elapsed()
    );

    let text = operator.http_get("/metrics")?;
    ensure!(
        text.contains("strata_operator_reconciles_total{controller=\"dataset\"}"),
        "{text}"
    );

    delete_nodes(&client, &[&node_a, &node_b]).await;
    // The operator must outlive the namespace: it releases the Datasets' finalizers.
    ns.cleanup().await?;
    operator.stop().await?;
    Ok(())
}

/// examples/dataset-writable.yaml: the write modes reach the agents, the volumes are
/// ReadWriteMany, the nodes' pending writes and upload errors reach the status and
/// conditions, and making every source read-only again leaves the bound claim
/// reported until it is deleted, after which the operator makes it ReadOnlyMany.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_example_volumes_and_unsent_writes() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "op-writable").await?;
    let client = ns.client().clone();
    let namespace = ns.name().to_string();

    let s3 = S3Server::start()?;
    s3.create_bucket("datasets")?;
    s3.create_bucket("results")?;
    s3.put_object("datasets", "imagenet/train/a.bin", 1000)?;
    s3.put_object("results", "checkpoints/step-1.ckpt", 24)?;

    let operator = RunningOperator::start(cluster, &namespace, "op-writable", &[]).await?;
    cluster
        .apply(&example(
            "dataset-writable.yaml",
            &namespace,
            Some(&s3.endpoint()),
        )?)
        .await?;
    let name = "training-run";
    let datasets: Api<Dataset> = Api::namespaced(client.clone(), &namespace);
    let ds = eventually("training-run listed", WAIT, || async {
        let ds = datasets.get(name).await?;
        let st = ds.status.clone().unwrap_or_default();
        Ok((st.total_bytes == Some(1024)).then_some(ds))
    })
    .await?;
    let st = ds.status.clone().unwrap();
    assert_eq!(st.unsent.as_deref(), Some("0"), "{st:?}");
    assert_eq!(condition(&ds, "UploadsHealthy").unwrap().status, "True");

    // The agents are told each source's mode; ReadOnly is the default and omitted.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let key = format!("{namespace}.{name}.yaml");
    let config = eventually("datasets Secret key", WAIT, || async {
        let secret = secrets.get_opt("strata-datasets").await?;
        Ok(secret.and_then(|s| s.data).and_then(|d| {
            d.get(&key)
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        }))
    })
    .await?;
    let agent: strata_wire::config::DatasetConfig = serde_yaml::from_str(&config)?;
    let modes: Vec<_> = agent.sources.iter().map(|s| s.write_mode).collect();
    use strata_wire::config::WriteMode as Wire;
    assert_eq!(
        modes,
        [Wire::ReadOnly, Wire::WriteBack, Wire::WriteThrough],
        "{config}"
    );

    // ReadWriteMany volumes, bound, and a read-write CSI source.
    let pv_name = format!("strata-{namespace}-{name}");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let bound = |want: &'static str| {
        let pvcs = pvcs.clone();
        async move {
            eventually(
                &format!("PVC {want} and Bound"),
                Duration::from_secs(120),
                || async {
                    let pvc = pvcs.get_opt(name).await?;
                    Ok(pvc.filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                            && p.spec.as_ref().and_then(|s| s.access_modes.clone())
                                == Some(vec![want.to_string()])
                    }))
                },
            )
            .await
        }
    };
    bound("ReadWriteMany").await?;
    let spec = pvs.get(&pv_name).await?.spec.unwrap();
    assert_eq!(spec.access_modes.unwrap(), vec!["ReadWriteMany"]);
    // The API server leaves out a false readOnly.
    assert!(!spec.csi.unwrap().read_only.unwrap_or(false));

    // A node with unsent writes and a failing upload: Degraded, and the condition says why.
    let node_a = format!("{namespace}-node-a");
    let node_b = format!("{namespace}-node-b");
    let usage = |writes: Option<strata_crds::NodeWriteUsage>| strata_crds::NodeDatasetUsage {
        namespace: namespace.clone(),
        name: name.to_string(),
        uid: ds.uid(),
        cached_bytes: 0,
        pinned_bytes: None,
        files: 0,
        hits: 0,
        misses: 0,
        last_update: None,
        last_error: None,
        jobs: vec![],
        pins: vec![],
        writes,
    };
    let oldest = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000)?;
    let writes = |files: i64, bytes: i64, error: Option<&str>| strata_crds::NodeWriteUsage {
        pending_files: files,
        pending_bytes: bytes,
        oldest_pending: (files > 0).then_some(Time(oldest)),
        uploaded_files: 1,
        uploaded_bytes: 10,
        failures: i64::from(error.is_some()),
        conflicts: 0,
        last_error: error.map(|m| strata_crds::NodeError {
            message: m.to_string(),
            time: Time(k8s_openapi::jiff::Timestamp::now()),
        }),
        last_conflict: None,
    };
    let failing = "upload of /checkpoints/step-2.ckpt to source checkpoints: connection refused";
    report_node_usage(
        &client,
        &node_a,
        vec![usage(Some(writes(2, 3 << 20, None)))],
    )
    .await?;
    report_node_usage(
        &client,
        &node_b,
        vec![usage(Some(writes(1, 1 << 20, Some(failing))))],
    )
    .await?;
    let degraded = eventually("Degraded by a failing upload", WAIT, || async {
        let ds = datasets.get(name).await?;
        let st = ds.status.clone().unwrap_or_default();
        Ok(
            (st.phase == Some(DatasetPhase::Degraded) && st.pending_write_bytes == Some(4 << 20))
                .then_some(ds),
        )
    })
    .await?;
    let st = degraded.status.clone().unwrap();
    assert_eq!(
        (
            st.unsent.as_deref(),
            st.pending_write_files,
            st.oldest_pending_write.map(|t| t.0)
        ),
        (Some("4Mi"), Some(3), Some(oldest))
    );
    let uploads = condition(&degraded, "UploadsHealthy").unwrap();
    assert_eq!(
        (uploads.status.as_str(), uploads.reason.as_str()),
        ("False", "UploadsFailing")
    );
    ensure!(
        uploads.message.contains(&node_b) && uploads.message.contains(failing),
        "{}",
        uploads.message
    );
    ensure!(
        uploads
            .message
            .contains("4Mi in 3 file(s) not yet uploaded"),
        "{}",
        uploads.message
    );
    let table = cluster
        .kubectl(&["-n", &namespace, "get", "datasets"])
        .await?;
    ensure!(
        table.lines().next().unwrap_or("").contains("UNSENT"),
        "{table}"
    );
    ensure!(
        table
            .lines()
            .any(|l| l.starts_with(name) && l.contains("4Mi")),
        "{table}"
    );

    // The upload succeeds and the writes drain: Ready again. Node A's last upload met a
    // change made upstream: one UploadConflict event says where both versions are.
    report_node_usage(&client, &node_b, vec![usage(Some(writes(0, 0, None)))]).await?;
    let conflicted = strata_crds::NodeWriteUsage {
        conflicts: 1,
        last_conflict: Some(strata_crds::NodeWriteConflict {
            path: "/checkpoints/step-1.ckpt".into(),
            kept_as: "/checkpoints/step-1.ckpt.conflict-20261207T040000Z".into(),
            time: Time(k8s_openapi::jiff::Timestamp::now()),
        }),
        ..writes(0, 0, None)
    };
    report_node_usage(&client, &node_a, vec![usage(Some(conflicted))]).await?;
    let conflict_events = eventually("an UploadConflict event", WAIT, || async {
        let events = events_for(&client, &namespace, name).await?;
        let found: Vec<_> = events
            .into_iter()
            .filter(|(_, reason, _)| reason == "UploadConflict")
            .collect();
        Ok((!found.is_empty()).then_some(found))
    })
    .await?;
    let (kind, _, note) = &conflict_events[0];
    ensure!(kind == "Warning", "{conflict_events:?}");
    ensure!(
        note.contains("/checkpoints/step-1.ckpt changed at the source")
            && note.contains(&node_a)
            && note.contains("step-1.ckpt.conflict-20261207T040000Z"),
        "{note}"
    );
    eventually("Ready once uploads succeed", WAIT, || async {
        let ds = datasets.get(name).await?;
        let st = ds.status.clone().unwrap_or_default();
        Ok((st.phase == Some(DatasetPhase::Ready)
            && st.pending_write_bytes == Some(0)
            && condition(&ds, "UploadsHealthy").is_some_and(|c| c.status == "True"))
        .then_some(()))
    })
    .await?;

    // Every source read-only again: the bound claim keeps ReadWriteMany and is reported.
    // (A merge patch replaces the whole list, so the spec is written whole.)
    let mut spec = datasets.get(name).await?.spec;
    for source in &mut spec.sources {
        source.write_mode = None;
    }
    datasets
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&serde_json::json!({ "spec": spec })),
        )
        .await?;
    let outdated = eventually("VolumeUpToDate False", WAIT, || async {
        let ds = datasets.get(name).await?;
        Ok(condition(&ds, "VolumeUpToDate")
            .filter(|c| c.status == "False")
            .cloned())
    })
    .await?;
    assert_eq!(outdated.reason, "ClaimAccessModeOutdated");
    ensure!(
        outdated
            .message
            .contains(&format!("kubectl -n {namespace} delete pvc {name}")),
        "{}",
        outdated.message
    );
    // The agents report no writes any more: UploadsHealthy goes.
    report_node_usage(&client, &node_a, vec![usage(None)]).await?;
    report_node_usage(&client, &node_b, vec![usage(None)]).await?;

    // Deleting the claim (no pod uses it) makes the operator build both again, ReadOnlyMany.
    pvcs.delete(name, &kube::api::DeleteParams::default())
        .await?;
    bound("ReadOnlyMany").await?;
    let spec = pvs.get(&pv_name).await?.spec.unwrap();
    assert_eq!(spec.access_modes.unwrap(), vec!["ReadOnlyMany"]);
    assert_eq!(spec.csi.unwrap().read_only, Some(true));
    eventually("VolumeUpToDate True, no UploadsHealthy", WAIT, || async {
        let ds = datasets.get(name).await?;
        Ok(
            (condition(&ds, "VolumeUpToDate").is_some_and(|c| c.status == "True")
                && condition(&ds, "UploadsHealthy").is_none())
            .then_some(()),
        )
    })
    .await?;

    report_node(&client, &node_a, &[]).await?;
    report_node(&client, &node_b, &[]).await?;
    delete_nodes(&client, &[&node_a, &node_b]).await;
    ns.cleanup().await?;
    operator.stop().await?;
    Ok(())
}
