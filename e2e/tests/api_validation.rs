//! The Strata API on a real kube-apiserver: the generated CRDs install (their
//! CEL rules compile and stay within the cost budget), every manifest in
//! `examples/` passes `kubectl apply --dry-run=server`, every spec in
//! `examples/invalid/` is refused with an error naming its field, defaults are
//! filled in by the server, and short names, the `strata` category and
//! `kubectl explain` work.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use strata_e2e::{Cluster, Error as E2eError, TestNamespace, wait_until};

const CRDS: [&str; 4] = [
    "datasets.strata.dev",
    "cachepolicies.strata.dev",
    "stratanodes.strata.dev",
    "migrations.strata.dev",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Installs the committed CRDs (crds/generated, kept equal to the Rust types by
/// strata-crds' drift test) and waits until the API server serves them.
async fn install_crds(cluster: &Cluster) -> Result<()> {
    let dir = repo_root().join("crds/generated");
    for file in yaml_files(&dir)? {
        let file = file.to_string_lossy().into_owned();
        // --force-conflicts: other suites may have installed the same CRDs with another manager.
        cluster
            .kubectl(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=strata-e2e-api",
                "-f",
                &file,
            ])
            .await
            .with_context(|| format!("installing {file}"))?;
    }
    for crd in CRDS {
        cluster
            .kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{crd}"),
            ])
            .await?;
    }
    // Discovery lags a moment behind Established; wait until kubectl resolves the kinds.
    wait_until(
        "the Strata kinds in discovery",
        Duration::from_secs(30),
        || async {
            cluster
                .kubectl(&["get", "datasets,cachepolicies,stratanodes,migrations", "-A"])
                .await
                .map(Some)
        },
    )
    .await?;
    Ok(())
}

/// Points every object in a manifest at the test namespace.
fn into_namespace(manifest: &str, namespace: &str) -> String {
    manifest
        .lines()
        .map(|line| match line.trim_start().strip_prefix("namespace:") {
            Some(_) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                format!("{indent}namespace: {namespace}")
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `kubectl apply --dry-run=server -f -`: Ok(stdout) or Err(stderr).
async fn dry_run(cluster: &Cluster, manifest: &str) -> Result<std::result::Result<String, String>> {
    let args = ["apply", "--dry-run=server", "-f", "-"];
    match cluster
        .run("kubectl", &args, Some(manifest.as_bytes()))
        .await
    {
        Ok(out) => Ok(Ok(out.stdout)),
        Err(E2eError::CommandFailed { stderr, .. }) => Ok(Err(stderr)),
        Err(other) => Err(other.into()),
    }
}

fn header(text: &str, key: &str) -> Option<String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(&format!("# {key}:"))
                .map(|v| v.trim().to_string())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_are_accepted_and_invalid_specs_refused_by_the_apiserver() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "api").await?;

    let mut failures = Vec::new();
    let valid = yaml_files(&repo_root().join("examples"))?;
    ensure!(valid.len() >= 3, "expected at least 3 valid examples");
    for file in &valid {
        let manifest = into_namespace(&std::fs::read_to_string(file)?, ns.name());
        if let Err(stderr) = dry_run(cluster, &manifest).await? {
            failures.push(format!("{} was refused:\n{stderr}", file.display()));
        }
    }

    let invalid = yaml_files(&repo_root().join("examples/invalid"))?;
    ensure!(invalid.len() >= 15, "expected at least 15 invalid examples");
    for file in &invalid {
        let text = std::fs::read_to_string(file)?;
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let field = header(&text, "apiserver-field")
            .or_else(|| header(&text, "field"))
            .with_context(|| format!("{name}: no '# field:' header"))?;
        match dry_run(cluster, &into_namespace(&text, ns.name())).await? {
            Ok(stdout) => failures.push(format!("{name} was accepted: {stdout}")),
            // The API server prefixes each cause with the field path: "spec.blockSize: Invalid value: ...".
            Err(stderr) if header(&text, "must-not-echo").is_some_and(|s| stderr.contains(&s)) => {
                failures.push(format!("{name}: the error repeats a credential:\n{stderr}"));
            }
            Err(stderr) if stderr.contains(&format!("{field}: ")) => {
                eprintln!("{name}: refused as expected: {}", stderr.trim());
            }
            Err(stderr) => failures.push(format!(
                "{name} was refused, but the error does not name {field}:\n{stderr}"
            )),
        }
    }
    ns.cleanup().await?;
    if !failures.is_empty() {
        bail!("\n{}", failures.join("\n\n"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fills_defaults_and_kubectl_knows_the_kinds() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "api-defaults").await?;
    let manifest = format!(
        r#"apiVersion: strata.dev/v1alpha1
kind: CachePolicy
metadata: {{name: minimal, namespace: {ns}}}
spec:
  quota: 1073741824
  preload:
    - paths: ["/**"]
---
apiVersion: strata.dev/v1alpha1
kind: Dataset
metadata: {{name: local, namespace: {ns}}}
spec:
  sources:
    - name: data
      uri: file:///srv/data
      mountPath: /
"#,
        ns = ns.name()
    );
    cluster.apply(&manifest).await?;

    let policy: Value = serde_json::from_str(
        &cluster
            .kubectl(&[
                "-n",
                ns.name(),
                "get",
                "cachepolicy",
                "minimal",
                "-o",
                "json",
            ])
            .await?,
    )?;
    let spec = &policy["spec"];
    assert_eq!(spec["blockSize"], "4Mi", "{spec}");
    assert_eq!(spec["replicas"], 1, "{spec}");
    assert_eq!(spec["eviction"], "S3FIFO", "{spec}");
    assert_eq!(
        spec["tiers"],
        serde_json::json!(["Memory", "SSD"]),
        "{spec}"
    );
    assert_eq!(spec["metadata"]["ttl"], "1m", "{spec}");
    assert_eq!(spec["preload"][0]["concurrency"], 64, "{spec}");
    // An integer quota is accepted and kept as an integer (strata-crds reads both forms).
    assert_eq!(spec["quota"], 1073741824u64, "{spec}");

    let dataset: Value = serde_json::from_str(
        &cluster
            .kubectl(&["-n", ns.name(), "get", "dataset", "local", "-o", "json"])
            .await?,
    )?;
    // No server defaults for writeMode or its deprecated alias readOnly: either may stand
    // alone (readOnly: false means WriteBack), and unset means ReadOnly.
    let source = &dataset["spec"]["sources"][0];
    assert!(
        source.get("readOnly").is_none() && source.get("writeMode").is_none(),
        "{source}"
    );

    // Short names and the category resolve; the printer columns are the documented ones.
    let sds = cluster.kubectl(&["-n", ns.name(), "get", "sds"]).await?;
    let header_line = sds.lines().next().unwrap_or_default().to_string();
    for column in [
        "NAME", "PHASE", "CACHED %", "SIZE", "FILES", "UNSENT", "AGE",
    ] {
        assert!(
            header_line.contains(column),
            "`kubectl get sds` header: {header_line}"
        );
    }
    assert!(sds.contains("local"), "{sds}");
    let scpol = cluster.kubectl(&["-n", ns.name(), "get", "scpol"]).await?;
    for column in ["DATASETS", "QUOTA", "AGE"] {
        assert!(scpol.contains(column), "`kubectl get scpol`: {scpol}");
    }
    assert!(scpol.contains("1073741824"), "{scpol}");
    let all = cluster
        .kubectl(&["-n", ns.name(), "get", "strata", "-o", "name"])
        .await?;
    assert!(
        all.contains("dataset.strata.dev/local") && all.contains("cachepolicy.strata.dev/minimal"),
        "`kubectl get strata`: {all}"
    );
    cluster.kubectl(&["get", "snode"]).await?;

    // `kubectl explain` shows the doc comments.
    let explain = cluster
        .kubectl(&["explain", "dataset.spec.sources.mountPath"])
        .await?;
    assert!(
        explain.contains("Where the source appears inside the dataset"),
        "{explain}"
    );
    let explain = cluster
        .kubectl(&["explain", "cachepolicy.spec.blockSize"])
        .await?;
    assert!(explain.contains("power of two"), "{explain}");

    // The status subresource: a status write through /status sticks, a spec change there does not.
    cluster
        .kubectl(&[
            "-n",
            ns.name(),
            "patch",
            "dataset",
            "local",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Ready","cachedPercent":42,"size":"1.5Gi","files":7,"pendingWriteBytes":3670016,"unsent":"3.5Mi"}}"#,
        ])
        .await?;
    let row = cluster
        .kubectl(&["-n", ns.name(), "get", "sds", "local", "--no-headers"])
        .await?;
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..6],
        ["local", "Ready", "42", "1.5Gi", "7", "3.5Mi"],
        "{row}"
    );

    ns.cleanup().await?;
    Ok(())
}

/// A Migration on a real API server: the server fills `path`, `concurrency` and
/// `switchSource`; the transition rules refuse a change of `dataset`, `source`,
/// `path` or `target` and let `concurrency` and `switchSource` change; `mig` and the
/// printer columns work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_defaults_and_immutable_fields() -> Result<()> {
    let cluster = Cluster::shared().await?;
    install_crds(cluster).await?;
    let ns = TestNamespace::create(cluster, "api-migration").await?;
    let manifest = format!(
        r#"apiVersion: strata.dev/v1alpha1
kind: Migration
metadata: {{name: copy, namespace: {ns}}}
spec:
  dataset: lake
  source: events
  target:
    uri: s3://bucket/events/
    region: eu-west-1
"#,
        ns = ns.name()
    );
    cluster.apply(&manifest).await?;
    let get = || async {
        let json = cluster
            .kubectl(&["-n", ns.name(), "get", "migration", "copy", "-o", "json"])
            .await?;
        anyhow::Ok(serde_json::from_str::<Value>(&json)?)
    };
    let spec = get().await?["spec"].clone();
    assert_eq!(spec["path"], "/", "{spec}");
    assert_eq!(spec["concurrency"], 16, "{spec}");
    assert_eq!(spec["switchSource"], false, "{spec}");

    let patch = |body: &'static str| {
        let ns = ns.name().to_string();
        async move {
            let args = [
                "-n",
                &ns,
                "patch",
                "migration",
                "copy",
                "--type=merge",
                "-p",
                body,
            ];
            match cluster.run("kubectl", &args, None).await {
                Ok(_) => Ok(Ok(())),
                Err(E2eError::CommandFailed { stderr, .. }) => Ok(Err(stderr)),
                Err(other) => Err(anyhow::Error::from(other)),
            }
        }
    };
    let mut failures = Vec::new();
    for (body, field) in [
        (r#"{"spec":{"dataset":"other"}}"#, "spec.dataset"),
        (r#"{"spec":{"source":"other"}}"#, "spec.source"),
        (r#"{"spec":{"path":"/2026"}}"#, "spec.path"),
        (
            r#"{"spec":{"target":{"uri":"s3://other/events/"}}}"#,
            "spec.target",
        ),
    ] {
        match patch(body).await? {
            Ok(()) => failures.push(format!("{body} was accepted")),
            Err(stderr)
                if stderr.contains(&format!("{field}: ")) && stderr.contains("is immutable") => {}
            Err(stderr) => {
                failures.push(format!("{body}: refused without naming {field}: {stderr}"))
            }
        }
    }
    for body in [
        r#"{"spec":{"concurrency":4}}"#,
        r#"{"spec":{"switchSource":true}}"#,
    ] {
        if let Err(stderr) = patch(body).await? {
            failures.push(format!("{body} was refused: {stderr}"));
        }
    }
    let spec = get().await?["spec"].clone();
    if spec["concurrency"] != 4 || spec["switchSource"] != true {
        failures.push(format!("the allowed changes did not stick: {spec}"));
    }

    cluster
        .kubectl(&[
            "-n",
            ns.name(),
            "patch",
            "migration",
            "copy",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Copying","percent":37,"rate":"12.3MiB/s","eta":"4m10s"}}"#,
        ])
        .await?;
    let table = cluster.kubectl(&["-n", ns.name(), "get", "mig"]).await?;
    let header_line = table.lines().next().unwrap_or_default();
    for column in [
        "NAME", "DATASET", "SOURCE", "TARGET", "PHASE", "PERCENT", "RATE", "ETA", "AGE",
    ] {
        if !header_line.contains(column) {
            failures.push(format!("`kubectl get mig` has no {column} column: {table}"));
        }
    }
    let row = cluster
        .kubectl(&["-n", ns.name(), "get", "mig", "copy", "--no-headers"])
        .await?;
    let cells: Vec<&str> = row.split_whitespace().collect();
    if cells.get(..8)
        != Some(
            &[
                "copy",
                "lake",
                "events",
                "s3://bucket/events/",
                "Copying",
                "37",
                "12.3MiB/s",
                "4m10s",
            ][..],
        )
    {
        failures.push(format!("`kubectl get mig copy`: {row}"));
    }
    ns.cleanup().await?;
    if !failures.is_empty() {
        bail!("\n{}", failures.join("\n"));
    }
    Ok(())
}
