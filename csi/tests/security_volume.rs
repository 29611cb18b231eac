//! Tenant isolation at the one place NodePublishVolume decides which dataset a pod gets
//! (`volume::resolve`, called first by the node service): whatever kubelet and a pod spec
//! put in the volume id and attributes, an inline volume only resolves to the pod's own
//! namespace, a PersistentVolume only to its handle and only when its attributes agree and
//! the pod runs in that namespace, and the subPath never leaves the dataset.

use std::collections::HashMap;

use proptest::prelude::*;
use strata_csi::volume::{
    CTX_DATASET, CTX_EPHEMERAL, CTX_NAMESPACE, CTX_POD_NAMESPACE, CTX_SUB_PATH, VolumeKind, resolve,
};
use tonic::Code;

fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn is_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

#[test]
fn persistent_volume_attributes_must_match_the_handle() {
    for (what, context) in [
        (
            "dataset attribute names another dataset",
            ctx(&[(CTX_DATASET, "ledger"), (CTX_NAMESPACE, "ml")]),
        ),
        (
            "namespace attribute names another namespace",
            ctx(&[(CTX_DATASET, "imagenet"), (CTX_NAMESPACE, "finance")]),
        ),
        (
            "dataset attribute qualified with another namespace",
            ctx(&[(CTX_DATASET, "finance/imagenet")]),
        ),
    ] {
        let err = resolve("ml/imagenet", &context).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err}");
        assert!(
            err.to_string().contains("does not match the volume handle"),
            "{what}: {err}"
        );
    }
    // A pod in another namespace than the PV's handle: refused even with matching attributes.
    let err = resolve(
        "finance/ledger",
        &ctx(&[
            (CTX_DATASET, "ledger"),
            (CTX_NAMESPACE, "finance"),
            (CTX_POD_NAMESPACE, "ml"),
        ]),
    )
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // Inline volumes that try another namespace by every attribute there is.
    for context in [
        ctx(&[
            (CTX_DATASET, "finance/ledger"),
            (CTX_POD_NAMESPACE, "ml"),
            (CTX_EPHEMERAL, "true"),
        ]),
        ctx(&[
            (CTX_DATASET, "ledger"),
            (CTX_NAMESPACE, "finance"),
            (CTX_POD_NAMESPACE, "ml"),
            (CTX_EPHEMERAL, "true"),
        ]),
    ] {
        let err = resolve("csi-0123", &context).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{context:?}: {err}");
    }
    // An ephemeral volume id shaped like a handle is still an inline volume of the pod.
    let spec = resolve(
        "finance/ledger",
        &ctx(&[
            (CTX_DATASET, "imagenet"),
            (CTX_POD_NAMESPACE, "ml"),
            (CTX_EPHEMERAL, "true"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (spec.namespace.as_str(), spec.dataset.as_str()),
        ("ml", "imagenet")
    );
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["ml", "finance", "imagenet", "ledger", "a.b", "x-1"])
            .prop_map(str::to_string),
        "[a-z0-9./\\\\%-]{0,12}",
        any::<String>(),
    ]
}

fn hostile_sub_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "..",
            ".",
            "",
            "%2e%2e",
            "%2f",
            "%5c",
            "\\",
            "\u{0}",
            "train",
            "..%2f",
            "\u{ff0e}\u{ff0e}",
        ]),
        0..6,
    )
    .prop_map(|parts| parts.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_volume_reaches_another_namespace(
        volume_id in prop_oneof![name(), (name(), name()).prop_map(|(a, b)| format!("{a}/{b}"))],
        pod_ns in prop::option::of(name()),
        dataset in prop::option::of(prop_oneof![name(), (name(), name()).prop_map(|(a, b)| format!("{a}/{b}"))]),
        ns_attr in prop::option::of(name()),
        ephemeral in any::<bool>(),
        sub_path in prop::option::of(prop_oneof![hostile_sub_path(), any::<String>()]),
    ) {
        let mut context = HashMap::new();
        if let Some(p) = &pod_ns { context.insert(CTX_POD_NAMESPACE.to_string(), p.clone()); }
        if let Some(d) = &dataset { context.insert(CTX_DATASET.to_string(), d.clone()); }
        if let Some(n) = &ns_attr { context.insert(CTX_NAMESPACE.to_string(), n.clone()); }
        if ephemeral { context.insert(CTX_EPHEMERAL.to_string(), "true".into()); }
        if let Some(s) = &sub_path { context.insert(CTX_SUB_PATH.to_string(), s.clone()); }
        let pod_ns = pod_ns.filter(|p| !p.is_empty());
        match resolve(&volume_id, &context) {
            Ok(spec) => {
                prop_assert!(is_k8s_name(&spec.namespace), "{spec:?}");
                prop_assert!(!spec.dataset.is_empty() && !spec.dataset.contains('/'), "{spec:?}");
                // The pod's namespace, whenever kubelet said it, is the dataset's namespace.
                if let Some(p) = &pod_ns {
                    prop_assert_eq!(&spec.namespace, p);
                }
                match spec.kind {
                    VolumeKind::Inline => {
                        prop_assert_eq!(Some(&spec.namespace), pod_ns.as_ref(), "inline without the pod namespace");
                    }
                    VolumeKind::Persistent => {
                        prop_assert!(!ephemeral);
                        prop_assert_eq!(format!("{}/{}", spec.namespace, spec.dataset), volume_id.clone());
                        if let Some(d) = dataset.as_ref().filter(|d| !d.is_empty()) {
                            prop_assert_eq!(d, &spec.dataset);
                        }
                        if let Some(n) = ns_attr.as_ref().filter(|n| !n.is_empty()) {
                            prop_assert_eq!(n, &spec.namespace);
                        }
                    }
                }
                let sub = spec.sub_path.as_str();
                prop_assert!(sub.starts_with('/'));
                prop_assert!(!sub.split('/').any(|c| c == ".." || c == "."), "{sub:?}");
                prop_assert!(!sub.contains('\\') && !sub.contains('\0'), "{sub:?}");
            }
            Err(err) => {
                // A request naming another namespace than the pod's, with otherwise valid
                // names, is refused as PERMISSION_DENIED (or NOT_FOUND), never mounted.
                let code = err.code();
                prop_assert!(
                    matches!(code, Code::PermissionDenied | Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition),
                    "{code:?}: {err}"
                );
                if let (Some(p), Some((ns, n))) = (&pod_ns, volume_id.split_once('/'))
                    && !ephemeral && is_k8s_name(p) && is_k8s_name(ns) && is_k8s_name(n)
                    && ns != p.as_str()
                    && dataset.as_ref().is_none_or(|d| d.is_empty() || d == n)
                    && ns_attr.as_ref().is_none_or(|a| a.is_empty() || a == ns)
                {
                    prop_assert!(matches!(code, Code::PermissionDenied | Code::NotFound), "{code:?}: {err}");
                }
            }
        }
    }
}
