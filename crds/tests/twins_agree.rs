//! The Rust rules and the CRD's CEL rules must agree value by value. Each case
//! sets one field of an otherwise valid object and says whether it is accepted;
//! both twins must give that answer. A few checks are deliberately stricter in
//! Rust (cron field ranges, glob syntax): those cases are marked `RUST_ONLY`
//! and the CEL rule must accept them (it checks the shape only).

use kube::CustomResourceExt;
use kube_cel::Validator;
use serde_json::{Value, json};
use strata_crds::{CachePolicy, Dataset, Error, Migration};

const OK: Outcome = Outcome::Accept;
const NO: Outcome = Outcome::Reject;
const RUST_ONLY: Outcome = Outcome::RejectInRustOnly;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Accept,
    Reject,
    RejectInRustOnly,
}

fn schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

fn set(doc: &mut Value, pointer: &str, value: Value) {
    *doc.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in base object")) = value;
}

/// Field paths each twin refuses; with `old`, as an update from it (transition rules).
fn refused_update(doc: &Value, old: Option<&Value>) -> (Vec<String>, Vec<String>) {
    let rust = match doc["kind"].as_str().unwrap() {
        "Dataset" => serde_json::from_value::<Dataset>(doc.clone())
            .unwrap()
            .validate(),
        "Migration" => {
            let new = serde_json::from_value::<Migration>(doc.clone()).unwrap();
            match old {
                Some(old) => new.validate_update(&serde_json::from_value(old.clone()).unwrap()),
                None => new.validate(),
            }
        }
        _ => serde_json::from_value::<CachePolicy>(doc.clone())
            .unwrap()
            .validate(),
    };
    let rust = match rust {
        Ok(()) => vec![],
        Err(Error::Invalid { errors, .. }) => errors.into_iter().map(|e| e.field).collect(),
        Err(e) => panic!("{e}"),
    };
    let schema = match doc["kind"].as_str().unwrap() {
        "Dataset" => schema::<Dataset>(),
        "Migration" => schema::<Migration>(),
        _ => schema::<CachePolicy>(),
    };
    let cel = match Validator::new().validate(&schema, doc, old) {
        Ok(()) => vec![],
        Err(errors) => errors.into_iter().map(|e| e.field_path).collect(),
    };
    (rust, cel)
}

/// Field paths each twin refuses.
fn refused(doc: &Value) -> (Vec<String>, Vec<String>) {
    refused_update(doc, None)
}

fn check(base: &Value, pointer: &str, field: &str, cases: &[(Value, Outcome)]) {
    let mut wrong = Vec::new();
    for (value, want) in cases {
        let mut doc = base.clone();
        set(&mut doc, pointer, value.clone());
        let (rust, cel) = refused(&doc);
        let rust_refuses = rust.iter().any(|f| f == field);
        let cel_refuses = cel.iter().any(|f| f == field);
        let (want_rust, want_cel) = match want {
            Outcome::Accept => (false, false),
            Outcome::Reject => (true, true),
            Outcome::RejectInRustOnly => (true, false),
        };
        if rust_refuses != want_rust || cel_refuses != want_cel {
            wrong.push(format!(
                "{field} = {value}: want {want:?}, Rust refused: {rust_refuses} ({rust:?}), CEL refused: {cel_refuses} ({cel:?})"
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

fn dataset() -> Value {
    json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "Dataset",
        "metadata": {"name": "d", "namespace": "ns"},
        "spec": {"sources": [
            {"name": "train", "uri": "s3://bucket/train/", "mountPath": "/train",
             "endpoint": "http://minio:9000", "region": "us-east-1",
             "options": {"allow_http": "true"}},
        ]},
    })
}

fn policy() -> Value {
    json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "CachePolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"quota": "1Gi", "blockSize": "4Mi", "ttl": "30d", "metadata": {"ttl": "1m"},
                 "tiers": ["Memory", "SSD"],
                 "pin": [{"paths": ["/a/**"], "modifiedWithin": "14d"}],
                 "preload": [{"paths": ["/b/**"], "schedule": "0 2 * * *"}]},
    })
}

#[test]
fn source_names() {
    check(
        &dataset(),
        "/spec/sources/0/name",
        "spec.sources[0].name",
        &[
            (json!("train"), OK),
            (json!("a"), OK),
            (json!("s3-data-2"), OK),
            (json!("0"), OK),
            (json!("a".repeat(63)), OK),
            (json!(""), NO),
            (json!("-a"), NO),
            (json!("a-"), NO),
            (json!("Train"), NO),
            (json!("a_b"), NO),
            (json!("a.b"), NO),
            (json!("a b"), NO),
            (json!("ä"), NO),
        ],
    );
}

#[test]
fn mount_paths() {
    check(
        &dataset(),
        "/spec/sources/0/mountPath",
        "spec.sources[0].mountPath",
        &[
            (json!("/"), OK),
            (json!("/a"), OK),
            (json!("/a/b/c"), OK),
            (json!("/.hidden"), OK),
            (json!("/a..b"), OK),
            (json!("/..."), OK),
            (json!("/a b"), OK),
            (json!(""), NO),
            (json!("a"), NO),
            (json!("a/b"), NO),
            (json!("/a/"), NO),
            (json!("//"), NO),
            (json!("/a//b"), NO),
            (json!("/."), NO),
            (json!("/.."), NO),
            (json!("/a/./b"), NO),
            (json!("/a/../b"), NO),
            (json!("/a/.."), NO),
            // Control characters: the API server itself refuses them (NUL, tab, newline, DEL).
            (json!("/a\u{0}b"), NO),
            (json!("/train\u{0}"), NO),
            (json!("/a\tb"), NO),
            (json!("/a\nb"), NO),
            (json!("/a\u{7f}"), NO),
            (json!("/é"), OK),
        ],
    );
}

#[test]
fn source_uris() {
    check(
        &dataset(),
        "/spec/sources/0/uri",
        "spec.sources[0].uri",
        &[
            (json!("s3://bucket"), OK),
            (json!("s3://bucket/a/b/"), OK),
            (json!("s3://b/x..y"), OK),
            (json!("s3://b/a%20b"), OK),
            (json!("ftp://host/x"), NO),
            (json!("S3://bucket"), NO),
            (json!("bucket/x"), NO),
            (json!("s3://"), NO),
            (json!("s3:///x"), NO),
            (json!("s3://?x"), NO),
            (json!("s3://b/a b"), NO),
            (json!("s3://b/a\tb"), NO),
            (json!("s3://key:secret@bucket/x"), NO),
            (json!("s3://b/../x"), NO),
            (json!("s3://b/x/.."), NO),
            (json!("s3://../x"), NO),
        ],
    );
    // The scheme-dependent rules use the uri too: keep them out of this table.
    let mut file = dataset();
    let source = &mut file["spec"]["sources"][0];
    for key in ["endpoint", "region"] {
        source.as_object_mut().unwrap().remove(key);
    }
    check(
        &file,
        "/spec/sources/0/uri",
        "spec.sources[0].uri",
        &[
            (json!("file:///"), OK),
            (json!("file:///srv/data"), OK),
            (json!("https://h"), OK),
            (json!("http://127.0.0.1:8080/files/"), OK),
            (json!("gs://b/p/"), OK),
            (json!("az://c"), OK),
            (json!("file://"), NO),
            (json!("file://data"), NO),
            (json!("file://host/data"), NO),
            (json!("file:///srv/../etc"), NO),
            (json!("https://u:p@h/x"), NO),
            (json!("https://"), NO),
        ],
    );
}

#[test]
fn endpoints_and_regions() {
    check(
        &dataset(),
        "/spec/sources/0/endpoint",
        "spec.sources[0].endpoint",
        &[
            (json!("http://minio:9000"), OK),
            (json!("https://s3.example.com/"), OK),
            (json!("http://127.0.0.1:9000/base/path"), OK),
            (json!("minio:9000"), NO),
            (json!("ftp://minio"), NO),
            (json!("http://"), NO),
            (json!("https:///x"), NO),
            (json!("http://u:p@minio"), NO),
            (json!("http://minio/a b"), NO),
            (json!("http://mi nio"), NO),
            (json!("HTTP://minio"), NO),
            (json!("http://minio?x=1"), NO),
        ],
    );
    check(
        &dataset(),
        "/spec/sources/0/region",
        "spec.sources[0].region",
        &[
            (json!("us-east-1"), OK),
            (json!("eu"), OK),
            (json!(""), NO),
            (json!("US-EAST-1"), NO),
            (json!("-a"), NO),
            (json!("a_b"), NO),
        ],
    );
}

#[test]
fn option_keys() {
    let cases: Vec<(Value, Outcome)> = [
        ("allow_http", OK),
        ("virtual_hosted_style_request", OK),
        ("aws.region", OK),
        ("timeout", OK),
        ("aws_secret_access_key", NO),
        ("AWS_SESSION_TOKEN", NO),
        ("access_key_id", NO),
        ("Password", NO),
        ("azure_storage_sas_key", NO),
        ("credentials", NO),
        ("a b", NO),
        ("", NO),
        ("ä", NO),
    ]
    .into_iter()
    .map(|(key, want)| (json!({ key: "v" }), want))
    .collect();
    check(
        &dataset(),
        "/spec/sources/0/options",
        "spec.sources[0].options",
        &cases,
    );
}

#[test]
fn quotas() {
    check(
        &policy(),
        "/spec/quota",
        "spec.quota",
        &[
            (json!("1"), OK),
            (json!("1Gi"), OK),
            (json!("1.5Gi"), OK),
            (json!("500G"), OK),
            (json!("1e3"), OK),
            (json!("1000m"), OK),
            (json!(1073741824), OK),
            (json!("+7"), OK),
            (json!("0"), NO),
            (json!(0), NO),
            (json!("-1Gi"), NO),
            (json!(-5), NO),
            (json!("0.5"), NO),
            (json!("1m"), NO),
            (json!("lots"), NO),
            (json!("1GB"), NO),
            (json!("1 Gi"), NO),
        ],
    );
}

#[test]
fn block_sizes() {
    check(
        &policy(),
        "/spec/blockSize",
        "spec.blockSize",
        &[
            (json!("1Mi"), OK),
            (json!("2Mi"), OK),
            (json!("4Mi"), OK),
            (json!("8Mi"), OK),
            (json!("16Mi"), OK),
            (json!("32Mi"), OK),
            (json!("64Mi"), OK),
            (json!("1048576"), OK),
            (json!(4194304), OK),
            (json!("4096Ki"), OK),
            (json!("0.0625Gi"), OK),
            (json!("3Mi"), NO),
            (json!("512Ki"), NO),
            (json!("128Mi"), NO),
            (json!("1M"), NO),
            (json!("0"), NO),
            (json!("4MB"), NO),
            (json!(3145728), NO),
            (json!("0.5Gi"), NO),
        ],
    );
}

#[test]
fn durations() {
    check(
        &policy(),
        "/spec/ttl",
        "spec.ttl",
        &[
            (json!("1s"), OK),
            (json!("5m"), OK),
            (json!("12h"), OK),
            (json!("30d"), OK),
            (json!("999999999d"), OK),
            (json!("010m"), OK),
            (json!("0s"), NO),
            (json!("00d"), NO),
            (json!("1h30m"), NO),
            (json!("5M"), NO),
            (json!("5"), NO),
            (json!("m"), NO),
            (json!("-5m"), NO),
            (json!("1.5h"), NO),
            (json!("1000000000s"), NO),
            (json!(" 5m"), NO),
            (json!("5 m"), NO),
        ],
    );
    check(
        &policy(),
        "/spec/metadata/ttl",
        "spec.metadata.ttl",
        &[
            (json!("0s"), OK),
            (json!("30s"), OK),
            (json!("5 minutes"), NO),
            (json!(""), NO),
        ],
    );
    check(
        &policy(),
        "/spec/pin/0/modifiedWithin",
        "spec.pin[0].modifiedWithin",
        &[(json!("14d"), OK), (json!("0d"), NO), (json!("2w"), NO)],
    );
}

#[test]
fn globs() {
    check(
        &policy(),
        "/spec/pin/0/paths/0",
        "spec.pin[0].paths[0]",
        &[
            (json!("/**"), OK),
            (json!("/train/2026-11-*/**"), OK),
            (json!("/a/{b,c}/[0-9]*"), OK),
            (json!("/x..y/z"), OK),
            (json!("/a/.../b"), OK),
            (json!("train/**"), NO),
            (json!(""), NO),
            (json!("/.."), NO),
            (json!("/a/../../b"), NO),
            (json!("/a/.."), NO),
            (json!("/a\u{0}/**"), NO),
            (json!("/a\n/**"), NO),
            (json!("/a/\u{1b}[31m"), NO),
            // Malformed globs: the API server checks only where a glob may point.
            (json!("/a/[b"), RUST_ONLY),
            (json!("/a/{b"), RUST_ONLY),
        ],
    );
}

#[test]
fn schedules() {
    check(
        &policy(),
        "/spec/preload/0/schedule",
        "spec.preload[0].schedule",
        &[
            (json!("0 2 * * *"), OK),
            (json!("*/15 * * * *"), OK),
            (json!("0 0 1,15 * *"), OK),
            (json!("30 3 * JAN-MAR MON-FRI"), OK),
            (json!("0 12 ? * sun"), OK),
            (json!("@daily"), OK),
            (json!("@midnight"), OK),
            (json!("@hourly"), OK),
            (json!("@annually"), OK),
            (json!(""), NO),
            (json!("0 2 * *"), NO),
            (json!("0 0 2 * * *"), NO),
            (json!("0  2 * * *"), NO),
            (json!(" 0 2 * * *"), NO),
            (json!("@every 5m"), NO),
            (json!("@reboot"), NO),
            (json!("0 0 * * 5#3"), NO),
            // Well-shaped but out of range or Quartz-only: refused by the full parser in Rust.
            (json!("61 * * * *"), RUST_ONLY),
            (json!("0 25 * * *"), RUST_ONLY),
            (json!("0 0 L * *"), RUST_ONLY),
            (json!("0 0 15W * *"), RUST_ONLY),
            (json!("0 2 * FOO *"), RUST_ONLY),
        ],
    );
}

#[test]
fn pins_need_the_ssd_tier() {
    check(
        &policy(),
        "/spec/tiers",
        "spec.pin",
        &[
            (json!(["Memory", "SSD"]), OK),
            (json!(["SSD"]), OK),
            (json!(["Memory"]), NO),
        ],
    );
}

/// (uri, writeMode, readOnly, the fields both twins must refuse).
type WriteModeCase = (
    &'static str,
    Option<&'static str>,
    Option<bool>,
    &'static [&'static str],
);

/// writeMode and its deprecated alias readOnly depend on each other and on the
/// uri, so each case is a whole source.
#[test]
fn write_modes() {
    let cases: &[WriteModeCase] = &[
        ("s3://b/out/", None, None, &[]),
        ("s3://b/out/", Some("ReadOnly"), None, &[]),
        ("s3://b/out/", Some("WriteBack"), None, &[]),
        ("s3://b/out/", Some("WriteThrough"), None, &[]),
        ("gs://b/out/", None, Some(false), &[]),
        ("az://c/out/", None, Some(true), &[]),
        ("file:///srv/out", Some("WriteBack"), Some(false), &[]),
        ("s3://b/out/", Some("ReadOnly"), Some(true), &[]),
        ("s3://b/out/", Some("WriteThrough"), Some(false), &[]),
        // The alias contradicting writeMode, both ways.
        ("s3://b/out/", Some("WriteBack"), Some(true), &["readOnly"]),
        (
            "s3://b/out/",
            Some("WriteThrough"),
            Some(true),
            &["readOnly"],
        ),
        ("s3://b/out/", Some("ReadOnly"), Some(false), &["readOnly"]),
        // http(s) sources take no writes, however asked for.
        ("https://h/x/", Some("ReadOnly"), None, &[]),
        ("http://h/x/", None, Some(true), &[]),
        ("https://h/x/", Some("WriteBack"), None, &["writeMode"]),
        ("http://h/x/", Some("WriteThrough"), None, &["writeMode"]),
        ("http://h/x/", None, Some(false), &["readOnly"]),
        (
            "https://h/x/",
            Some("WriteBack"),
            Some(true),
            &["writeMode", "readOnly"],
        ),
        ("https://h/x/", Some("ReadOnly"), Some(false), &["readOnly"]),
    ];
    let mut wrong = Vec::new();
    for (uri, mode, read_only, fields) in cases {
        let mut source = json!({"name": "out", "uri": uri, "mountPath": "/out"});
        if let Some(mode) = mode {
            source["writeMode"] = json!(mode);
        }
        if let Some(read_only) = read_only {
            source["readOnly"] = json!(read_only);
        }
        let mut doc = dataset();
        set(&mut doc, "/spec/sources/0", source.clone());
        let mut want: Vec<String> = fields
            .iter()
            .map(|f| format!("spec.sources[0].{f}"))
            .collect();
        let (mut rust, mut cel) = refused(&doc);
        want.sort();
        rust.sort();
        cel.sort();
        if rust != want || cel != want {
            wrong.push(format!(
                "{source}: want {want:?}, Rust refused {rust:?}, CEL refused {cel:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn write_mode_is_an_enum() {
    let mut doc = dataset();
    set(&mut doc, "/spec/sources/0/uri", json!("s3://b/out/"));
    doc["spec"]["sources"][0]["writeMode"] = json!("writeback");
    assert!(serde_json::from_value::<Dataset>(doc).is_err());
    // kube-cel checks CEL only; the API server checks the schema's enum.
    let schema = schema::<Dataset>();
    let field =
        &schema["properties"]["spec"]["properties"]["sources"]["items"]["properties"]["writeMode"];
    assert_eq!(
        field["enum"],
        json!(["ReadOnly", "WriteBack", "WriteThrough"]),
        "{field}"
    );
    assert!(
        field.get("default").is_none(),
        "no server default: readOnly may stand alone"
    );
}

fn migration() -> Value {
    json!({
        "apiVersion": "strata.dev/v1alpha1", "kind": "Migration",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"dataset": "lake", "source": "events", "path": "/2026",
                 "target": {"uri": "s3://bucket/events/", "endpoint": "http://minio:9000",
                            "region": "eu-west-1", "credentialsSecretRef": {"name": "s3-creds"},
                            "options": {"allow_http": "true"}},
                 "concurrency": 16},
    })
}

#[test]
fn migration_names() {
    check(
        &migration(),
        "/spec/dataset",
        "spec.dataset",
        &[
            (json!("lake"), OK),
            (json!("lake.v2"), OK),
            (json!("a".repeat(63)), OK),
            (json!(""), NO),
            (json!("Lake"), NO),
            (json!("lake_1"), NO),
            (json!("lake..v2"), NO),
            (json!("-lake"), NO),
        ],
    );
    check(
        &migration(),
        "/spec/source",
        "spec.source",
        &[
            (json!("events"), OK),
            (json!("s3-data-2"), OK),
            (json!(""), NO),
            (json!("a.b"), NO),
            (json!("Events"), NO),
            (json!("a-"), NO),
        ],
    );
}

#[test]
fn migration_paths() {
    check(
        &migration(),
        "/spec/path",
        "spec.path",
        &[
            (json!("/"), OK),
            (json!("/2026"), OK),
            (json!("/a/b"), OK),
            (json!("/a..b"), OK),
            (json!(""), NO),
            (json!("2026"), NO),
            (json!("/2026/"), NO),
            (json!("//"), NO),
            (json!("/a//b"), NO),
            (json!("/a/../b"), NO),
            (json!("/.."), NO),
            (json!("/a\tb"), NO),
        ],
    );
}

#[test]
fn migration_target_uris() {
    let mut base = migration();
    // Only the uri: the scheme-dependent fields are checked below.
    base["spec"]["target"] = json!({"uri": "s3://bucket/events/"});
    check(
        &base,
        "/spec/target/uri",
        "spec.target.uri",
        &[
            (json!("s3://bucket"), OK),
            (json!("gs://b/x/"), OK),
            (json!("az://c/x/"), OK),
            (json!("hdfs://namenode:8020/x/"), OK),
            (json!("file:///srv/out"), OK),
            // Read-only stores: a Migration writes to its target.
            (json!("https://example.com/x/"), NO),
            (json!("http://10.0.0.1:8080/x/"), NO),
            (json!("ftp://host/x"), NO),
            (json!("file://relative"), NO),
            (json!("hdfs:///x"), NO),
            (json!("s3://b/../x"), NO),
            (json!("s3://key:secret@bucket/x"), NO),
            (json!("s3://b/a b"), NO),
        ],
    );
}

#[test]
fn migration_target_store_fields() {
    // The same scheme-dependent rules as a Dataset source.
    for (target, fields) in [
        (
            json!({"uri": "hdfs://nn:8020/x/", "credentialsSecretRef": {"name": "k"}}),
            vec!["credentialsSecretRef"],
        ),
        (
            json!({"uri": "file:///srv/x", "endpoint": "http://x:1"}),
            vec!["endpoint"],
        ),
        (json!({"uri": "gs://b/x/", "region": "eu"}), vec!["region"]),
        (
            json!({"uri": "az://c/x/", "credentialsSecretRef": {"name": "az-creds"}}),
            vec![],
        ),
        (
            json!({"uri": "s3://b/x/", "options": {"aws_secret_access_key": "x"}}),
            vec!["options"],
        ),
        (
            json!({"uri": "s3://b/x/", "endpoint": "minio:9000"}),
            vec!["endpoint"],
        ),
    ] {
        let mut doc = migration();
        doc["spec"]["target"] = target.clone();
        let want: Vec<String> = fields.iter().map(|f| format!("spec.target.{f}")).collect();
        let (rust, cel) = refused(&doc);
        assert!(
            rust == want && cel == want,
            "{target}: want {want:?}, Rust refused {rust:?}, CEL refused {cel:?}"
        );
    }
}

#[test]
fn migration_switch_needs_the_whole_source() {
    for (path, switch, refuses) in [
        (json!("/2026"), json!(true), true),
        (json!("/"), json!(true), false),
        (json!("/2026"), json!(false), false),
    ] {
        let mut doc = migration();
        doc["spec"]["path"] = path.clone();
        doc["spec"]["switchSource"] = switch.clone();
        let (rust, cel) = refused(&doc);
        let want: Vec<&str> = if refuses {
            vec!["spec.switchSource"]
        } else {
            vec![]
        };
        assert!(
            rust == want && cel == want,
            "path {path}, switchSource {switch}: Rust refused {rust:?}, CEL refused {cel:?}"
        );
    }
    // An unset path is the whole source (the default).
    let mut doc = migration();
    doc["spec"].as_object_mut().unwrap().remove("path");
    doc["spec"]["switchSource"] = json!(true);
    assert_eq!(refused(&doc), (vec![], vec![]));
}

#[test]
fn migration_updates_keep_what_is_copied_where() {
    let old = migration();
    for (pointer, value, field) in [
        ("/spec/dataset", json!("other"), Some("spec.dataset")),
        ("/spec/source", json!("other"), Some("spec.source")),
        ("/spec/path", json!("/2025"), Some("spec.path")),
        (
            "/spec/target/uri",
            json!("s3://other/x/"),
            Some("spec.target"),
        ),
        (
            "/spec/target/region",
            json!("us-east-1"),
            Some("spec.target"),
        ),
        ("/spec/concurrency", json!(64), None),
    ] {
        let mut new = old.clone();
        set(&mut new, pointer, value.clone());
        let (rust, cel) = refused_update(&new, Some(&old));
        let want: Vec<String> = field.into_iter().map(String::from).collect();
        assert!(
            rust == want && cel == want,
            "{pointer} = {value}: want {want:?}, Rust refused {rust:?}, CEL refused {cel:?}"
        );
    }
    // switchSource may be flipped once the copy is checked (with path /).
    let mut old = migration();
    set(&mut old, "/spec/path", json!("/"));
    let mut new = old.clone();
    new["spec"]["switchSource"] = json!(true);
    assert_eq!(refused_update(&new, Some(&old)), (vec![], vec![]));
}
