//! The committed CRD YAML (crds/generated/ and the Helm chart's crds/) must be
//! exactly what `crdgen` prints from the Rust types, and the CRDs must carry the
//! names, columns and documentation users rely on.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use strata_crds::{crd_file_name, crd_yaml, crds};

const REGENERATE: &str = "cargo run -p strata-crds --bin crdgen -- --out-dir crds/generated --out-dir charts/strata/crds";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn committed_crds_match_generated() {
    for dir in ["crds/generated", "charts/strata/crds"] {
        let dir_path = repo_root().join(dir);
        let mut expected_files = BTreeSet::new();
        for crd in crds() {
            let name = crd_file_name(&crd);
            let path = dir_path.join(&name);
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{dir}/{name} is missing ({e}); regenerate with `{REGENERATE}`")
            });
            assert!(
                committed == crd_yaml(&crd).unwrap(),
                "{dir}/{name} differs from what the Rust types generate; regenerate with `{REGENERATE}` and commit the result"
            );
            expected_files.insert(name);
        }
        let present: BTreeSet<String> = std::fs::read_dir(&dir_path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        assert_eq!(
            present, expected_files,
            "{dir} holds CRD files crdgen does not produce; delete them or regenerate with `{REGENERATE}`"
        );
    }
}

#[test]
fn crdgen_binary_prints_every_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .output()
        .expect("run crdgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            v["metadata"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "datasets.strata.dev",
            "cachepolicies.strata.dev",
            "stratanodes.strata.dev",
            "migrations.strata.dev"
        ]
    );
}

#[test]
fn names_columns_and_subresources() {
    let builtin_short_names = [
        "cm", "cs", "csr", "ds", "deploy", "ep", "ev", "hpa", "ing", "limits", "netpol", "no",
        "ns", "pdb", "po", "psp", "pv", "pvc", "quota", "rc", "rs", "sa", "sc", "sts", "svc",
        "crd", "crds", "pc", "ingclass", "vac",
    ];
    for crd in crds() {
        let crd = serde_json::to_value(&crd).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        assert_eq!(
            crd["spec"]["names"]["categories"],
            serde_json::json!(["strata"]),
            "{kind}"
        );
        for short in crd["spec"]["names"]["shortNames"].as_array().unwrap() {
            assert!(
                !builtin_short_names.contains(&short.as_str().unwrap()),
                "{kind}: short name {short} clashes with a built-in resource"
            );
        }
        let version = &crd["spec"]["versions"][0];
        assert_eq!(
            version["subresources"]["status"],
            serde_json::json!({}),
            "{kind}"
        );
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c.get("priority").is_none())
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        match kind.as_str() {
            "Dataset" => assert_eq!(
                columns,
                ["Phase", "Cached %", "Size", "Files", "Unsent", "Age"]
            ),
            "CachePolicy" => assert_eq!(columns, ["Datasets", "Quota", "Age"]),
            "StrataNode" => {
                assert_eq!(crd["spec"]["scope"], "Cluster");
                assert_eq!(columns, ["Node", "Datasets", "Cached", "Heartbeat", "Age"]);
            }
            "Migration" => assert_eq!(
                columns,
                [
                    "Dataset", "Source", "Target", "Phase", "Percent", "Rate", "ETA", "Age"
                ]
            ),
            other => panic!("unexpected kind {other}"),
        }
    }
}

/// `kubectl explain` shows each field's description: every property under spec
/// and status must have one.
#[test]
fn every_field_is_documented() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let at = format!("{path}.{name}");
                let documented = prop
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.trim().is_empty());
                if !documented {
                    missing.push(at.clone());
                }
                walk(&at, prop, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in crds() {
        let crd = serde_json::to_value(&crd).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_string();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        for part in ["spec", "status"] {
            walk(
                &format!("{kind}.{part}"),
                &root["properties"][part],
                &mut missing,
            );
        }
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

/// docs/api.md is the API reference: every spec and status field must appear
/// in it (as `name` in backticks), so a new field cannot go undocumented.
#[test]
fn api_reference_mentions_every_field() {
    fn names(schema: &Value, out: &mut BTreeSet<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                out.insert(name.clone());
                names(prop, out);
            }
        }
        if let Some(items) = schema.get("items") {
            names(items, out);
        }
    }
    let docs = std::fs::read_to_string(repo_root().join("docs/api.md")).expect("docs/api.md");
    let mut missing = Vec::new();
    for crd in crds() {
        let crd = serde_json::to_value(&crd).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let mut fields = BTreeSet::new();
        names(&root["spec"], &mut fields);
        names(&root["status"], &mut fields);
        // Fields of the embedded metav1 types (Condition, LabelSelector) are documented upstream.
        for upstream in [
            "lastTransitionTime",
            "message",
            "observedGeneration",
            "reason",
            "status",
            "type",
            "matchExpressions",
            "matchLabels",
            "key",
            "operator",
            "values",
        ] {
            fields.remove(upstream);
        }
        for field in fields {
            if !docs.contains(&format!("`{field}`")) && !docs.contains(&format!(".{field}`")) {
                missing.push(field);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/api.md does not mention: {missing:?}"
    );
}
