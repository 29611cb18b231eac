//! What a publish request asks for: which dataset (namespace + name), which
//! directory of it, and the key under which the agent records the volume.

use crate::error::{CsiError, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use strata_wire::path::DatasetPath;

/// volumeAttributes key naming the dataset of an inline volume.
pub const CTX_DATASET: &str = "dataset";
/// volumeAttributes key of the optional directory inside the dataset.
pub const CTX_SUB_PATH: &str = "subPath";
/// volumeAttributes key the operator's PersistentVolumes carry beside `dataset`.
pub const CTX_NAMESPACE: &str = "namespace";
/// Set by kubelet when the CSIDriver has `podInfoOnMount: true`.
pub const CTX_POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
/// Set by kubelet to "true" for inline (ephemeral) volumes.
pub const CTX_EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeKind {
    /// A `csi:` volume in the pod spec; the dataset is in the pod's namespace.
    Inline,
    /// A PersistentVolume whose volume handle is `NAMESPACE/DATASET`.
    Persistent,
}

/// A validated reference to a dataset directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub kind: VolumeKind,
    pub namespace: String,
    pub dataset: String,
    /// "/" when the whole dataset is published.
    pub sub_path: DatasetPath,
}

impl VolumeSpec {
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.dataset)
    }
}

/// Works out the dataset from the volume id and context of a NodePublishVolume request.
pub fn resolve(volume_id: &str, context: &HashMap<String, String>) -> Result<VolumeSpec> {
    let pod_namespace = context.get(CTX_POD_NAMESPACE).filter(|ns| !ns.is_empty());
    let ephemeral = context.get(CTX_EPHEMERAL).is_some_and(|v| v == "true");
    let dataset_attr = context.get(CTX_DATASET).filter(|d| !d.is_empty());

    let handle = volume_id.split_once('/').filter(|_| !ephemeral);
    let (kind, namespace, dataset) = if let Some((namespace, name)) = handle {
        // The PersistentVolume the operator made: its attributes repeat the handle.
        for (key, expected) in [(CTX_DATASET, name), (CTX_NAMESPACE, namespace)] {
            if let Some(given) = context.get(key).filter(|v| !v.is_empty())
                && given != expected
            {
                return Err(CsiError::invalid(
                    if key == CTX_DATASET {
                        "volume_context.dataset"
                    } else {
                        "volume_context.namespace"
                    },
                    format!("{given:?} does not match the volume handle {volume_id:?}"),
                ));
            }
        }
        if let Some(pod_namespace) = pod_namespace
            && pod_namespace != namespace
        {
            return Err(CsiError::PermissionDenied(format!(
                "volume {volume_id:?} belongs to namespace {namespace:?}, but the pod runs in {pod_namespace:?}"
            )));
        }
        (
            VolumeKind::Persistent,
            namespace.to_string(),
            name.to_string(),
        )
    } else if ephemeral || dataset_attr.is_some() {
        let Some(dataset) = dataset_attr else {
            return Err(CsiError::invalid(
                "volume_context.dataset",
                "an inline volume needs volumeAttributes.dataset naming a Dataset in the pod's namespace",
            ));
        };
        let Some(pod_namespace) = pod_namespace else {
            return Err(CsiError::FailedPrecondition(format!(
                "volume_context has no {CTX_POD_NAMESPACE}: the CSIDriver csi.strata.dev must set podInfoOnMount: true so inline volumes resolve datasets in the pod's namespace"
            )));
        };
        let name = match dataset.split_once('/') {
            None => dataset.clone(),
            Some((ns, name)) if ns == pod_namespace => name.to_string(),
            Some((ns, _)) => {
                return Err(CsiError::PermissionDenied(format!(
                    "volume_context.dataset {dataset:?} names a dataset in namespace {ns:?}, but the pod runs in {pod_namespace:?}: inline volumes may only use datasets of their own namespace"
                )));
            }
        };
        if let Some(given) = context.get(CTX_NAMESPACE).filter(|v| !v.is_empty())
            && given != pod_namespace
        {
            return Err(CsiError::PermissionDenied(format!(
                "volume_context.namespace {given:?} is not the pod's namespace {pod_namespace:?}: inline volumes may only use datasets of their own namespace"
            )));
        }
        (VolumeKind::Inline, pod_namespace.clone(), name)
    } else {
        return Err(CsiError::NotFound(format!(
            "volume_id {volume_id:?} is not a Strata volume handle (NAMESPACE/DATASET), and volume_context names no dataset"
        )));
    };

    check_name("namespace", &namespace, 63)?;
    check_name("volume_context.dataset", &dataset, 253)?;

    let sub_path = match context.get(CTX_SUB_PATH).filter(|p| !p.is_empty()) {
        None => DatasetPath::root(),
        Some(raw) => DatasetPath::parse(raw).map_err(|e| {
            CsiError::invalid(
                "volume_context.subPath",
                format!("{e}; give a directory inside the dataset such as /train"),
            )
        })?,
    };

    Ok(VolumeSpec {
        kind,
        namespace,
        dataset,
        sub_path,
    })
}

/// Kubernetes object names: lower-case alphanumerics, '-' and '.', starting and ending alphanumeric.
fn check_name(field: &'static str, value: &str, max: usize) -> Result<()> {
    let ok = strata_wire::names::is_kubernetes_name(value, max);
    if ok {
        Ok(())
    } else {
        Err(CsiError::invalid(
            field,
            format!(
                "{value:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.', at most {max} characters)"
            ),
        ))
    }
}

/// The key under which the agent records one publish. Kubelet publishes one
/// PersistentVolume at several target paths (one per pod), so the key covers
/// both, and it is derived, not stored: unpublish recomputes it from the same two fields.
pub fn volume_key(volume_id: &str, target_path: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(volume_id.as_bytes());
    hasher.update([0]);
    hasher.update(target_path.as_bytes());
    let digest = hex::encode(hasher.finalize());
    format!("csi-{}", &digest[..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn inline_volume_uses_the_pod_namespace() {
        let spec = resolve(
            "csi-abc",
            &ctx(&[
                (CTX_DATASET, "imagenet"),
                (CTX_POD_NAMESPACE, "ml"),
                (CTX_EPHEMERAL, "true"),
                (CTX_SUB_PATH, "train/"),
            ]),
        )
        .unwrap();
        assert_eq!(spec.kind, VolumeKind::Inline);
        assert_eq!(spec.qualified_name(), "ml/imagenet");
        assert_eq!(spec.sub_path.as_str(), "/train");
    }

    #[test]
    fn inline_volume_cannot_reach_another_namespace() {
        let err = resolve(
            "csi-abc",
            &ctx(&[(CTX_DATASET, "finance/ledger"), (CTX_POD_NAMESPACE, "ml")]),
        )
        .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.to_string().contains("finance"), "{err}");
        let same = resolve(
            "csi-abc",
            &ctx(&[(CTX_DATASET, "ml/ledger"), (CTX_POD_NAMESPACE, "ml")]),
        )
        .unwrap();
        assert_eq!(same.qualified_name(), "ml/ledger");
    }

    #[test]
    fn inline_volume_needs_pod_info() {
        let err = resolve("csi-abc", &ctx(&[(CTX_DATASET, "imagenet")])).unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.to_string().contains("podInfoOnMount"));
        let err = resolve(
            "csi-abc",
            &ctx(&[(CTX_EPHEMERAL, "true"), (CTX_POD_NAMESPACE, "ml")]),
        )
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.to_string().starts_with("volume_context.dataset"));
    }

    #[test]
    fn persistent_volume_handle_names_namespace_and_dataset() {
        let spec = resolve("ml/imagenet", &ctx(&[(CTX_POD_NAMESPACE, "ml")])).unwrap();
        assert_eq!(spec.kind, VolumeKind::Persistent);
        assert_eq!(spec.qualified_name(), "ml/imagenet");
        assert!(spec.sub_path.is_root());
        let err = resolve("ml/imagenet", &ctx(&[(CTX_POD_NAMESPACE, "other")])).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(
            resolve("no-slash", &ctx(&[])).unwrap_err().code(),
            Code::NotFound
        );
        assert_eq!(
            resolve("ML/x", &ctx(&[])).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn sub_path_may_not_escape() {
        // Control characters too (NUL, newline, escape, DEL): refused, naming the attribute.
        for bad in [
            "../other",
            "/train/../../x",
            "a/%2e%2e/b",
            "a\\b",
            "/train\0",
            "/a\nb",
            "/a\u{1b}[31m",
            "/a\u{7f}",
        ] {
            let err = resolve("ml/imagenet", &ctx(&[(CTX_SUB_PATH, bad)])).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
            assert!(
                err.to_string().starts_with("volume_context.subPath"),
                "{err}"
            );
        }
    }

    #[test]
    fn volume_key_is_stable_and_distinguishes_targets() {
        let a = volume_key("ml/imagenet", "/var/lib/kubelet/pods/1/mount");
        assert_eq!(
            a,
            volume_key("ml/imagenet", "/var/lib/kubelet/pods/1/mount")
        );
        assert_ne!(
            a,
            volume_key("ml/imagenet", "/var/lib/kubelet/pods/2/mount")
        );
        assert!(a.starts_with("csi-") && a.len() == 36);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
