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

/// What the dataset's volumes can do, from any number of nodes: read and write
/// (`ReadWriteMany`) when a source takes writes (its `writeMode`, or the
/// deprecated `readOnly: false`), else read only (`ReadOnlyMany`). The agents
/// refuse writes to a read-only source's paths (EROFS) whatever the volume says.
pub fn access_modes(dataset: &Dataset) -> Vec<String> {
    let mode = if dataset.spec.is_writable() {
        "ReadWriteMany"
    } else {
        "ReadOnlyMany"
    };
    vec![mode.to_string()]
}

/// The PV's `csi.readOnly`: true for a dataset no source of which takes writes,
/// so kubelet asks the CSI plugin for a read-only mount.
pub fn csi_read_only(dataset: &Dataset) -> bool {
    !dataset.spec.is_writable()
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
            access_modes: Some(access_modes(dataset)),
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
                read_only: Some(csi_read_only(dataset)),
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
            access_modes: Some(access_modes(dataset)),
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
    use strata_crds::{DatasetSpec, Source, WriteMode};

    fn dataset(modes: &[(Option<WriteMode>, Option<bool>)]) -> Dataset {
        let mut ds = Dataset::new(
            "imagenet",
            DatasetSpec {
                sources: modes
                    .iter()
                    .enumerate()
                    .map(|(i, (write_mode, read_only))| Source {
                        name: format!("s{i}"),
                        uri: format!("s3://b/p{i}/"),
                        mount_path: format!("/s{i}"),
                        endpoint: None,
                        region: None,
                        credentials_secret_ref: None,
                        write_mode: *write_mode,
                        read_only: *read_only,
                        options: BTreeMap::new(),
                    })
                    .collect(),
                policy_ref: None,
            },
        );
        ds.metadata.namespace = Some("ml".into());
        ds.metadata.uid = Some("uid-1".into());
        ds
    }

    fn modes(ds: &Dataset) -> (Vec<String>, Vec<String>, Option<bool>) {
        let pv = persistent_volume(ds).spec.unwrap();
        let pvc = persistent_volume_claim(ds).spec.unwrap();
        (
            pv.access_modes.unwrap(),
            pvc.access_modes.unwrap(),
            pv.csi.unwrap().read_only,
        )
    }

    #[test]
    fn pv_and_pvc_point_at_each_other() {
        let ds = dataset(&[(None, None)]);
        let pv = persistent_volume(&ds);
        let pvc = persistent_volume_claim(&ds);
        assert_eq!(pv.metadata.name.as_deref(), Some("strata-ml-imagenet"));
        let spec = pv.spec.unwrap();
        assert_eq!(spec.csi.as_ref().unwrap().driver, CSI_DRIVER);
        assert_eq!(spec.csi.unwrap().volume_handle, "ml/imagenet");
        assert_eq!(spec.claim_ref.unwrap().name.as_deref(), Some("imagenet"));
        let claim = pvc.spec.unwrap();
        assert_eq!(claim.volume_name.as_deref(), Some("strata-ml-imagenet"));
        assert_eq!(pvc.metadata.owner_references.unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn read_only_datasets_get_read_only_volumes() {
        let rox = vec!["ReadOnlyMany".to_string()];
        for sources in [
            &[(None, None)][..],
            &[(Some(WriteMode::ReadOnly), None), (None, Some(true))][..],
        ] {
            assert_eq!(
                modes(&dataset(sources)),
                (rox.clone(), rox.clone(), Some(true))
            );
        }
    }

    /// One writable source makes the whole volume writable; the agents keep the
    /// read-only sources' paths read-only.
    #[test]
    fn a_writable_source_makes_the_volume_read_write_many() {
        let rwx = vec!["ReadWriteMany".to_string()];
        for sources in [
            &[(None, None), (Some(WriteMode::WriteBack), None)][..],
            &[(Some(WriteMode::WriteThrough), None)][..],
            // The deprecated alias: readOnly: false is WriteBack.
            &[(None, Some(false))][..],
        ] {
            assert_eq!(
                modes(&dataset(sources)),
                (rwx.clone(), rwx.clone(), Some(false))
            );
        }
    }
}
