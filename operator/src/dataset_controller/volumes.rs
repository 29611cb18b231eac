//! The dataset's PersistentVolume and claim: applied with server-side apply
//! (field manager `strata-operator`), deleted on cleanup only when they are ours.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use strata_crds::Dataset;

use super::Problem;
use crate::conditions::reason;
use crate::context::{Context, MANAGER};
use crate::volume::{self, LABEL_DATASET, LABEL_DATASET_NAMESPACE};
use crate::{Error, Result};

/// Applies the PV and the PVC of the dataset. Kubernetes keeps a PV's volume
/// source and a claim's access modes as they were created, so volumes made
/// before the dataset's write mode changed cannot follow it: an unbound PV of
/// ours is deleted (and made again at the next look), and a claim of ours is
/// left as it is and returned as the problem, for its user to re-create once
/// no pod uses it.
pub(super) async fn apply_volumes(ds: &Dataset, ctx: &Context) -> Result<Option<Problem>> {
    let namespace = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let pv = volume::persistent_volume(ds);
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let params = PatchParams::apply(MANAGER).force();
    let pvs = Api::<PersistentVolume>::all(ctx.client.clone());
    match pvs.patch(&pv_name, &params, &Patch::Apply(&pv)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 422 => {
            let existing = pvs
                .get_opt(&pv_name)
                .await
                .map_err(|e| Error::kube(format!("reading PV {pv_name}"), e))?;
            match existing {
                Some(old) if is_ours_pv(&old, &namespace, &name) && pv_outdated(&old, &pv) => {
                    if !is_bound(old.status.as_ref().and_then(|s| s.phase.as_deref())) {
                        ignore_not_found(pvs.delete(&pv_name, &DeleteParams::background()).await)
                            .map_err(|e| Error::kube(format!("deleting PV {pv_name}"), e))?;
                        return Ok(Some(pv_recreated(&pv_name, ds)));
                    }
                    // Bound: it goes with its claim (below).
                }
                _ => {
                    return Err(Error::kube(
                        format!("applying PersistentVolume {pv_name}"),
                        kube::Error::Api(s),
                    ));
                }
            }
        }
        Err(e) => {
            return Err(Error::kube(
                format!("applying PersistentVolume {pv_name}"),
                e,
            ));
        }
    }
    let pvc = volume::persistent_volume_claim(ds);
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &namespace);
    match pvcs.patch(&name, &params, &Patch::Apply(&pvc)).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 422 => {
            let existing = pvcs
                .get_opt(&name)
                .await
                .map_err(|e| Error::kube(format!("reading PVC {namespace}/{name}"), e))?;
            match existing {
                Some(old)
                    if old.labels().get(LABEL_DATASET) == Some(&name)
                        && old.spec.as_ref().and_then(|s| s.access_modes.as_ref())
                            != pvc.spec.as_ref().and_then(|s| s.access_modes.as_ref()) =>
                {
                    Ok(Some(claim_outdated(&old, ds)))
                }
                // A user's own claim of the same name is not ours to take over.
                _ => Err(Error::kube(
                    format!(
                        "applying PersistentVolumeClaim {namespace}/{name} (a claim of that name that Strata did not create? rename it or the dataset)"
                    ),
                    kube::Error::Api(s),
                )),
            }
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::kube(
            format!(
                "applying PersistentVolumeClaim {namespace}/{name} (a claim of that name that Strata did not create? rename it or the dataset)"
            ),
            kube::Error::Api(s),
        )),
        Err(e) => Err(Error::kube(
            format!("applying PersistentVolumeClaim {namespace}/{name}"),
            e,
        )),
    }
}

fn is_ours_pv(pv: &PersistentVolume, namespace: &str, name: &str) -> bool {
    pv.labels().get(LABEL_DATASET_NAMESPACE).map(String::as_str) == Some(namespace)
        && pv.labels().get(LABEL_DATASET).map(String::as_str) == Some(name)
}

/// Whether a PV of ours was made for another write mode than `want`'s.
fn pv_outdated(old: &PersistentVolume, want: &PersistentVolume) -> bool {
    let read_only = |pv: &PersistentVolume| {
        pv.spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .and_then(|c| c.read_only)
            .unwrap_or(false)
    };
    let modes = |pv: &PersistentVolume| pv.spec.as_ref().and_then(|s| s.access_modes.clone());
    read_only(old) != read_only(want) || modes(old) != modes(want)
}

fn is_bound(phase: Option<&str>) -> bool {
    phase == Some("Bound")
}

fn describe_modes(ds: &Dataset) -> (&'static str, &'static str) {
    if ds.spec.is_writable() {
        ("ReadWriteMany", "a source now takes writes")
    } else {
        ("ReadOnlyMany", "no source takes writes any more")
    }
}

/// The problem of a PV deleted to be made again for the new write mode.
fn pv_recreated(pv_name: &str, ds: &Dataset) -> Problem {
    let (mode, why) = describe_modes(ds);
    Problem {
        reason: reason::VOLUME_RECREATING,
        message: format!(
            "PersistentVolume {pv_name} was made for the earlier write mode and is bound to no claim; it was deleted and is made again as {mode} ({why})."
        ),
    }
}

/// The problem of a claim of ours whose access modes no longer match the spec.
fn claim_outdated(old: &PersistentVolumeClaim, ds: &Dataset) -> Problem {
    let (mode, why) = describe_modes(ds);
    let namespace = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let had = old
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .map(|m| m.join(", "))
        .unwrap_or_default();
    Problem {
        reason: reason::CLAIM_ACCESS_MODE_OUTDATED,
        message: format!(
            "The claim {namespace}/{name} is {had}, and the dataset's volume should now be {mode} ({why}); Kubernetes does not change a claim's access modes, so pods mounting the claim keep the old mode. Once no pod uses it, delete the claim (kubectl -n {namespace} delete pvc {name}): the operator makes it and its PersistentVolume again. Inline CSI volumes (csi.strata.dev in a pod spec) take the new mode when next mounted."
        ),
    }
}

/// Deletes the PVC and the PV of `namespace/name`, each only when its labels
/// say Strata made it for this dataset (a user's claim of that name stays).
pub(super) async fn delete_volumes(ctx: &Context, namespace: &str, name: &str) -> Result<()> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    if let Some(pvc) = pvcs
        .get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("reading PVC {namespace}/{name}"), e))?
        && pvc.labels().get(LABEL_DATASET).map(String::as_str) == Some(name)
    {
        ignore_not_found(pvcs.delete(name, &DeleteParams::background()).await)
            .map_err(|e| Error::kube(format!("deleting PVC {namespace}/{name}"), e))?;
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv_name = volume::pv_name(namespace, name);
    if let Some(pv) = pvs
        .get_opt(&pv_name)
        .await
        .map_err(|e| Error::kube(format!("reading PV {pv_name}"), e))?
        && pv.labels().get(LABEL_DATASET_NAMESPACE).map(String::as_str) == Some(namespace)
    {
        ignore_not_found(pvs.delete(&pv_name, &DeleteParams::background()).await)
            .map_err(|e| Error::kube(format!("deleting PV {pv_name}"), e))?;
    }
    Ok(())
}

fn ignore_not_found<T>(result: kube::Result<T>) -> kube::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
