//! The dataset, volume and job routes of `strata-agent serve`, against a real
//! agent over a local-directory source.

use strata_testkit::agent as support;

use sha2::{Digest, Sha256};
use std::time::Duration;
use strata_agent::config::PinRule;
use strata_agent::job_commands::{JobArgs, PinJobArgs, PreloadJobArgs};
use support::{TOKEN, TestAgent, dataset_json, is_mounted, raw_http, sha256_file};

fn status(err: &strata_agent::http::client::ClientError) -> u16 {
    err.status().map(|s| s.as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn datasets_stat_list_read_and_errors() {
    let agent = TestAgent::start().await;
    let api = agent.local();

    // Unknown dataset: 404 naming it.
    let err = api.dataset("ml", "imagenet").await.unwrap_err();
    assert_eq!(status(&err), 404);
    assert!(err.to_string().contains("ml/imagenet"), "{err}");

    // PUT with credentials: the summary never shows them.
    let mut config = dataset_json(&agent.source);
    config["sources"][0]["credentials"] =
        serde_json::json!({"accessKeyId": "AKIDEXAMPLE", "secretAccessKey": "s3cr3t-v4lue"});
    let summary = api.put_dataset("ml", "imagenet", &config).await.unwrap();
    let text = summary.to_string();
    assert!(
        !text.contains("s3cr3t-v4lue") && !text.contains("AKIDEXAMPLE"),
        "{text}"
    );
    assert_eq!(summary["sources"][0]["mountPath"], "/");
    // Replacing is allowed; a body naming another dataset is not.
    api.put_dataset("ml", "imagenet", &dataset_json(&agent.source))
        .await
        .unwrap();
    let mut other = dataset_json(&agent.source);
    other["name"] = "other".into();
    let err = api.put_dataset("ml", "imagenet", &other).await.unwrap_err();
    assert_eq!(status(&err), 400);
    let err = api
        .put_dataset("ML", "x", &dataset_json(&agent.source))
        .await
        .unwrap_err();
    assert_eq!(
        (status(&err), err.to_string().contains("namespace")),
        (400, true),
        "{err}"
    );
    let err = api
        .put_dataset("ml", "broken", &serde_json::json!({"sources": []}))
        .await
        .unwrap_err();
    assert_eq!(status(&err), 400);
    assert!(
        matches!(&err, strata_agent::http::client::ClientError::Status { field: Some(f), .. } if f == "sources"),
        "{err:?}"
    );

    // stat and list.
    let stat = api.stat("ml", "imagenet", "/train/a.bin").await.unwrap();
    assert_eq!(stat["size"], 300 * 1024 + 17);
    assert_eq!(stat["kind"], "file");
    let listing = api.list("ml", "imagenet", "/train").await.unwrap();
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.bin", "b.bin", "nested"]);

    // Every file reads back byte for byte.
    for (rel, sum) in &agent.files {
        let bytes = api
            .read("ml", "imagenet", &format!("/{rel}"))
            .await
            .unwrap();
        assert_eq!(&hex::encode(Sha256::digest(&bytes)), sum, "{rel}");
    }

    // Paths that leave the dataset are refused with 400 and field "path".
    for bad in ["/../etc/passwd", "/train/%2e%2e/x", "a\\b"] {
        let err = api.read("ml", "imagenet", bad).await.unwrap_err();
        assert_eq!(status(&err), 400, "{bad}: {err}");
        assert!(
            matches!(&err, strata_agent::http::client::ClientError::Status { field: Some(f), .. } if f == "path"),
            "{err:?}"
        );
    }
    let err = api.stat("ml", "imagenet", "/nope").await.unwrap_err();
    assert_eq!(status(&err), 404);

    // HTTP ranges.
    let source = std::fs::read(agent.source.join("train/a.bin")).unwrap();
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let req = |range: &str| {
        format!(
            "GET /v1/datasets/ml/imagenet/read?path=/train/a.bin HTTP/1.1\r\nHost: x\r\n{auth}Range: {range}\r\nConnection: close\r\n\r\n"
        )
    };
    let (code, head, body) = raw_http(agent.listen, &req("bytes=65530-65545")).await;
    assert_eq!(code, 206);
    assert_eq!(body, &source[65530..65546]);
    assert!(
        head.to_lowercase().contains(&format!(
            "content-range: bytes 65530-65545/{}",
            source.len()
        )),
        "{head}"
    );
    let (code, _, body) = raw_http(agent.listen, &req("bytes=-100")).await;
    assert_eq!(
        (code, body.as_slice()),
        (206, &source[source.len() - 100..])
    );
    let (code, _, body) = raw_http(agent.listen, &req("bytes=307200-")).await;
    assert_eq!((code, body.as_slice()), (206, &source[307200..]));
    let (code, _, body) = raw_http(agent.listen, &req("bytes=999999-")).await;
    assert_eq!(code, 416, "{}", String::from_utf8_lossy(&body));

    // Deleting drops it.
    api.delete_dataset("ml", "imagenet").await.unwrap();
    assert_eq!(
        status(&api.dataset("ml", "imagenet").await.unwrap_err()),
        404
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preload_pin_and_usage() {
    let agent = TestAgent::start().await;
    agent.add_dataset("ml", "imagenet").await;
    let api = agent.local();

    let mut lines = Vec::new();
    let last = api
        .preload("ml", "imagenet", &["/train/**".to_string()], |p| {
            lines.push(p.clone())
        })
        .await
        .unwrap();
    let train_bytes = (300 * 1024 + 17) + 64 * 1024 + 1234;
    assert!(last.done && last.error.is_none(), "{last:?}");
    assert_eq!((last.files_done, last.files_total), (3, 3));
    assert_eq!(
        (last.bytes_done, last.bytes_total),
        (train_bytes, train_bytes)
    );
    assert_eq!(last.percent(), 100.0);
    let usage = api.usage("ml", "imagenet").await.unwrap();
    assert!(
        usage["cachedBytes"].as_u64().unwrap() >= train_bytes,
        "{usage}"
    );

    // Globs that escape are refused before anything starts.
    let err = api
        .preload("ml", "imagenet", &["/../**".to_string()], |_| {})
        .await
        .unwrap_err();
    assert_eq!(status(&err), 400);

    // The rule's concurrency is taken (1 fetch in flight still gets everything) and
    // checked: 65 is refused with the field named, before anything starts.
    let one_at_a_time = api.clone().with_concurrency(Some(1));
    let last = one_at_a_time
        .preload("ml", "imagenet", &["/train/**".to_string()], |_| {})
        .await
        .unwrap();
    assert_eq!((last.files_done, last.files_total), (3, 3), "{last:?}");
    let err = api
        .clone()
        .with_concurrency(Some(65))
        .preload("ml", "imagenet", &["/train/**".to_string()], |_| {})
        .await
        .unwrap_err();
    assert_eq!(status(&err), 400);
    assert!(err.to_string().contains("concurrency"), "{err}");

    // Pin by glob, then only recent files: a rule with a window, which a preload with the
    // same window fetches.
    let pinned = api
        .pin("ml", "imagenet", &["/labels/**".to_string()], None)
        .await
        .unwrap();
    assert_eq!(pinned.pins, [PinRule::paths(["/labels/**"])]);
    let old = std::time::SystemTime::now() - Duration::from_secs(30 * 86400);
    std::fs::File::options()
        .write(true)
        .open(agent.source.join("train/b.bin"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // metadata TTL is 1s in the test config
    let recent = api
        .pin("ml", "imagenet", &["/train/**".to_string()], Some("14d"))
        .await
        .unwrap();
    let fortnight = PinRule {
        paths: vec!["/train/**".to_string()],
        modified_within: Some(Duration::from_secs(14 * 86400)),
    };
    assert_eq!(recent.changed, std::slice::from_ref(&fortnight));
    let again = api
        .pin("ml", "imagenet", &["/train/**".to_string()], Some("2w"))
        .await
        .unwrap();
    assert!(
        again.changed.is_empty(),
        "the same rule added twice: {again:?}"
    );
    let fetched = api
        .preload_selected(
            "ml",
            "imagenet",
            &["/train/**".to_string()],
            Some("14d"),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        (fetched.files_total, fetched.files_done),
        (2, 2),
        "only a.bin and nested/c.txt are within the window: {fetched:?}"
    );
    let err = api
        .pin(
            "ml",
            "imagenet",
            &["/train/**".to_string()],
            Some("fortnight"),
        )
        .await
        .unwrap_err();
    assert_eq!(status(&err), 400);
    let left = api
        .unpin("ml", "imagenet", &["/labels/**".to_string()])
        .await
        .unwrap();
    assert_eq!(left.pins, [fortnight], "{left:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_commands_print_progress() {
    // Over the local socket: a job credential over TCP needs a TokenReview, which the
    // end-to-end test runs against the real API server (e2e/tests/end_to_end.rs).
    let agent = TestAgent::start().await;
    agent.add_dataset("ml", "imagenet").await;
    let job = JobArgs {
        agent: vec![format!("unix://{}", agent.socket.display())],
        token_file: None,
        dataset: "ml/imagenet".into(),
        paths: vec!["/labels/**".into()],
        job_name: None,
        dataset_wait: std::time::Duration::from_secs(60),
    };
    let mut out = Vec::new();
    let results = strata_agent::job_commands::preload(
        &PreloadJobArgs {
            job: job.clone(),
            concurrency: 4,
        },
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(results[0].files_done, 2);
    let text = String::from_utf8(out).unwrap();
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("preload ml/imagenet on unix://"), "{text}");
    assert!(
        last.ends_with("files 2/2, bytes 4099/4099, 100.0%, done"),
        "{text}"
    );

    let mut out = Vec::new();
    let pin = PinJobArgs {
        job: JobArgs {
            paths: vec!["/train/nested/**".into()],
            ..job.clone()
        },
        modified_within: None,
        no_preload: false,
    };
    strata_agent::job_commands::pin(&pin, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("pinned /train/nested/** in ml/imagenet on unix://")
            && text.contains(": rule added, 1 rule(s) in force"),
        "{text}"
    );
    assert!(
        text.contains("files 1/1, bytes 1234/1234, 100.0%, done"),
        "{text}"
    );

    // Over TCP without a credential the job fails, naming the flag.
    let no_token = JobArgs {
        agent: vec![format!("http://{}", agent.listen)],
        token_file: None,
        ..job.clone()
    };
    let err = strata_agent::job_commands::preload(
        &PreloadJobArgs {
            job: no_token,
            concurrency: 1,
        },
        &mut Vec::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("token"), "{err}");
    // A dataset the agent does not know: the job waits for it (the kubelet may not have
    // refreshed the agent's datasets yet), saying so, then fails naming it.
    let bad = JobArgs {
        dataset: "ml/missing".into(),
        dataset_wait: std::time::Duration::from_secs(3),
        ..job
    };
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let err = strata_agent::job_commands::preload(
        &PreloadJobArgs {
            job: bad,
            concurrency: 1,
        },
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("ml/missing"), "{err}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
    let said = String::from_utf8(out).unwrap();
    assert!(said.contains("waiting up to 3s"), "{said}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_share_one_fuse_mount_per_dataset() {
    let agent = TestAgent::start().await;
    agent.add_dataset("ml", "imagenet").await;
    let api = agent.local();

    let err = api
        .acquire_volume("ml", "missing", "vol-a", None)
        .await
        .unwrap_err();
    assert_eq!(status(&err), 404);
    assert!(err.to_string().contains("ml/missing"), "{err}");
    let err = api
        .acquire_volume("ml", "imagenet", "bad id!", None)
        .await
        .unwrap_err();
    assert_eq!(status(&err), 400);

    let a = api
        .acquire_volume("ml", "imagenet", "vol-a", None)
        .await
        .unwrap();
    assert_eq!(a.mount_path, agent.mount_root.join("ml/imagenet"));
    assert!(a.new_volume);
    assert!(is_mounted(&a.mount_path));
    let again = api
        .acquire_volume("ml", "imagenet", "vol-a", None)
        .await
        .unwrap();
    assert!(!again.new_volume);
    let b = api
        .acquire_volume("ml", "imagenet", "vol-b", Some("ml/imagenet"))
        .await
        .unwrap();
    assert_eq!((b.mount_path.clone(), b.volumes), (a.mount_path.clone(), 2));

    // The FUSE mount serves every file with the source's content.
    let mount = a.mount_path.clone();
    let files = agent.files.clone();
    tokio::task::spawn_blocking(move || {
        for (rel, sum) in &files {
            assert_eq!(&sha256_file(&mount.join(rel)), sum, "{rel}");
        }
    })
    .await
    .unwrap();

    // In use: the dataset cannot be deleted.
    let err = api.delete_dataset("ml", "imagenet").await.unwrap_err();
    assert_eq!(status(&err), 409);
    assert!(err.to_string().contains("vol-a"), "{err}");
    let listed = api.volumes().await.unwrap();
    assert_eq!(listed.len(), 2);
    let owners: Vec<Option<&str>> = listed.iter().map(|v| v.owner.as_deref()).collect();
    assert_eq!(owners, [None, Some("ml/imagenet")]);
    let (_, _, metrics) = raw_http(
        agent.metrics,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    assert!(metrics.contains("strata_published_volumes 2"), "{metrics}");
    assert!(metrics.contains("strata_mounted_datasets 1"), "{metrics}");

    let first = api.release_volume("vol-a").await.unwrap();
    assert!(first.released && !first.unmounted);
    assert!(is_mounted(&a.mount_path));
    let last = api.release_volume("vol-b").await.unwrap();
    assert!(last.released && last.unmounted);
    assert!(!is_mounted(&a.mount_path));
    // Idempotent.
    let again = api.release_volume("vol-b").await.unwrap();
    assert!(!again.released);

    api.delete_dataset("ml", "imagenet").await.unwrap();
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn datasets_dir_adds_changes_and_removes() {
    let agent = TestAgent::start_with(Duration::from_millis(200)).await;
    let api = agent.local();
    let yaml = format!(
        "namespace: ml\nname: from-file\nsources:\n  - name: local\n    uri: file://{}\n",
        agent.source.display()
    );
    std::fs::write(agent.datasets_dir.join("from-file.yaml"), &yaml).unwrap();
    std::fs::write(agent.datasets_dir.join("broken.yaml"), "name: [unclosed").unwrap();
    let mut found = None;
    for _ in 0..50 {
        if let Ok(summary) = api.dataset("ml", "from-file").await {
            found = Some(summary);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = found.expect("dataset from --datasets-dir did not appear");
    assert_eq!(summary["blockSize"], 4 << 20);
    assert!(
        api.stat("ml", "from-file", "/labels/labels.csv")
            .await
            .is_ok()
    );

    // A changed file is applied on the next scan.
    std::fs::write(
        agent.datasets_dir.join("from-file.yaml"),
        format!("{yaml}cache:\n  blockSize: 64Ki\n"),
    )
    .unwrap();
    let mut changed = false;
    for _ in 0..50 {
        if api.dataset("ml", "from-file").await.unwrap()["blockSize"] == 65536 {
            changed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(changed, "changed dataset file was not applied");

    std::fs::remove_file(agent.datasets_dir.join("from-file.yaml")).unwrap();
    let mut gone = false;
    for _ in 0..50 {
        if api.dataset("ml", "from-file").await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "dataset stayed after its file was removed");
    agent.stop().await;
}
