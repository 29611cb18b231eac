//! The PersistentVolume and PersistentVolumeClaim of a Dataset, for pods that
//! prefer a claim to an inline CSI volume.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use strata_crds::Dataset;

/// The CSI driver name.
pub const CSI_DRIVER: &str = "csi.strata.dev";
/// Label naming the dataset a cluster-scoped child belongs to.
pub const LABEL_DATASET: &str = "strata.dev/dataset";
/// Label naming the namespace of that dataset.
pub const LABEL_DATASET_NAMESPACE: &str = "strata.dev/dataset-namespace";
/// Standard label marking what the operator made.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "strata-operator";
/// The volumes' nominal size: a dataset has no fixed capacity, and binding
/// only needs the claim's request to fit (Fluid does the same).
pub const NOMINAL_CAPACITY: &str = "100Pi";

/// `strata-<namespace>-<name>`: PVs are cluster-scoped, so the namespace is in the name.
pub fn pv_name(namespace: &str, name: &str) -> String {
    format!("strata-{namespace}-{name}")
}

/// The CSI volume handle: `<namespace>/<name>`.
pub fn volume_handle(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn labels(namespace: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_DATASET.to_string(), name.to_string()),
        (LABEL_DATASET_NAMESPACE.to_string(), namespace.to_string()),
    ])
}

/// What the dataset's volumes can do: read, from any number of nodes. The agent serves every
/// source read-only until write-back lands (the CRD refuses `readOnly: false`).
fn access_modes() -> Vec<String> {
    vec!["ReadOnlyMany".to_string()]
}

/// The PV, pre-bound to the claim (claimRef) so no other claim can take it.
pub fn persistent_volume(dataset: &Dataset) -> PersistentVolume {
    let namespace = dataset.namespace().unwrap_or_default();
    let name = dataset.name_any();
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name(&namespace, &name)),
            labels: Some(labels(&namespace, &name)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(access_modes()),
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(NOMINAL_CAPACITY.into()),
            )])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(namespace.clone()),
                name: Some(name.clone()),
                ..ObjectReference::default()
            }),
            csi: Some(CSIPersistentVolumeSource {
                driver: CSI_DRIVER.into(),
                volume_handle: volume_handle(&namespace, &name),
                read_only: Some(dataset.spec.sources.iter().all(|s| s.read_only)),
                volume_attributes: Some(BTreeMap::from([
                    ("dataset".to_string(), name.clone()),
                    ("namespace".to_string(), namespace.clone()),
                ])),
                ..CSIPersistentVolumeSource::default()
            }),
            // Retain: deleting the PV must never ask a CSI controller to delete data.
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some(String::new()),
            volume_mode: Some("Filesystem".into()),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// The PVC named after the dataset, owned by it, bound to its PV.
pub fn persistent_volume_claim(dataset: &Dataset) -> PersistentVolumeClaim {
    let namespace = dataset.namespace().unwrap_or_default();
    let name = dataset.name_any();
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(labels(&namespace, &name)),
            owner_references: dataset.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(access_modes()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(NOMINAL_CAPACITY.into()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            // Empty class: bind to our PV, never to a dynamically provisioned one.
            storage_class_name: Some(String::new()),
            volume_name: Some(pv_name(&namespace, &name)),
            volume_mode: Some("Filesystem".into()),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_crds::{DatasetSpec, Source};

    fn dataset(read_only: bool) -> Dataset {
        let mut ds = Dataset::new(
            "imagenet",
            DatasetSpec {
                sources: vec![Source {
                    name: "train".into(),
                    uri: "s3://b/p".into(),
                    mount_path: "/".into(),
                    endpoint: None,
                    region: None,
                    credentials_secret_ref: None,
                    read_only,
                    options: BTreeMap::new(),
                }],
                policy_ref: None,
            },
        );
        ds.metadata.namespace = Some("ml".into());
        ds.metadata.uid = Some("uid-1".into());
        ds
    }

    #[test]
    fn pv_and_pvc_point_at_each_other() {
        let ds = dataset(true);
        let pv = persistent_volume(&ds);
        let pvc = persistent_volume_claim(&ds);
        assert_eq!(pv.metadata.name.as_deref(), Some("strata-ml-imagenet"));
        let spec = pv.spec.unwrap();
        assert_eq!(spec.csi.as_ref().unwrap().driver, CSI_DRIVER);
        assert_eq!(spec.csi.unwrap().volume_handle, "ml/imagenet");
        assert_eq!(spec.claim_ref.unwrap().name.as_deref(), Some("imagenet"));
        assert_eq!(spec.access_modes.unwrap(), vec!["ReadOnlyMany"]);
        let claim = pvc.spec.unwrap();
        assert_eq!(claim.volume_name.as_deref(), Some("strata-ml-imagenet"));
        assert_eq!(pvc.metadata.owner_references.unwrap()[0].uid, "uid-1");
    }

    /// A spec stored before the CRD refused `readOnly: false` still gets a read-only volume:
    /// the PV says what the agents do.
    #[test]
    fn volumes_are_read_only_whatever_a_source_says() {
        let pv = persistent_volume(&dataset(false));
        assert_eq!(pv.spec.unwrap().access_modes.unwrap(), vec!["ReadOnlyMany"]);
        let pvc = persistent_volume_claim(&dataset(false));
        assert_eq!(
            pvc.spec.unwrap().access_modes.unwrap(),
            vec!["ReadOnlyMany"]
        );
    }
}
