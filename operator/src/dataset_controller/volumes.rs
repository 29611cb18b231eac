//! The dataset's PersistentVolume and claim: applied with server-side apply
//! (field manager `strata-operator`), deleted on cleanup only when they are ours.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use strata_crds::Dataset;

use crate::context::{Context, MANAGER};
use crate::volume::{self, LABEL_DATASET, LABEL_DATASET_NAMESPACE};
use crate::{Error, Result};

/// Applies the PV and the PVC of the dataset.
pub(super) async fn apply_volumes(ds: &Dataset, ctx: &Context) -> Result<()> {
    let namespace = ds.namespace().unwrap_or_default();
    let pv = volume::persistent_volume(ds);
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    let params = PatchParams::apply(MANAGER).force();
    Api::<PersistentVolume>::all(ctx.client.clone())
        .patch(&pv_name, &params, &Patch::Apply(&pv))
        .await
        .map_err(|e| Error::kube(format!("applying PersistentVolume {pv_name}"), e))?;
    let pvc = volume::persistent_volume_claim(ds);
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &namespace)
        .patch(&ds.name_any(), &params, &Patch::Apply(&pvc))
        .await
        .map_err(|e| match e {
            // A user's own claim of the same name is not ours to take over.
            kube::Error::Api(s) if s.code == 409 || s.code == 422 => Error::kube(
                format!("applying PersistentVolumeClaim {namespace}/{} (a claim of that name that Strata did not create? rename it or the dataset)", ds.name_any()),
                kube::Error::Api(s),
            ),
            e => Error::kube(format!("applying PersistentVolumeClaim {namespace}/{}", ds.name_any()), e),
        })?;
    Ok(())
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
