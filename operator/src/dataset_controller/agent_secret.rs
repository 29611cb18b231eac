//! The dataset's key in the datasets Secret the agents read: written by merge
//! patch (field manager `strata-operator-datasets`), one key per dataset.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::agent_config::{self, DATASETS_SECRET};
use crate::context::Context;
use crate::volume;
use crate::{Error, Result};

/// Field manager of the per-key merge patches on the datasets Secret.
const SECRET_MANAGER: &str = "strata-operator-datasets";

/// Writes one dataset's key into the datasets Secret. A JSON merge patch
/// touches only that key, so concurrent reconciles of other datasets never
/// overwrite each other (no read-modify-write).
pub(super) async fn write_agent_config(
    ctx: &Context,
    namespace: &str,
    name: &str,
    yaml: &str,
) -> Result<()> {
    let key = agent_config::secret_key(namespace, name);
    let hash = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        yaml.hash(&mut h);
        h.finish()
    };
    if !ctx.needs_write(&key, hash) {
        return Ok(());
    }
    write_agent_config_now(ctx, &key, yaml).await?;
    ctx.wrote(&key, Some(hash));
    ctx.datasets_changed.notify_one();
    Ok(())
}

async fn write_agent_config_now(ctx: &Context, key: &str, yaml: &str) -> Result<()> {
    let key = key.to_string();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let patch = json!({ "stringData": { key.clone(): yaml } });
    let params = PatchParams {
        field_manager: Some(SECRET_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch(DATASETS_SECRET, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let secret =
                datasets_secret_skeleton(ctx, BTreeMap::from([(key.clone(), yaml.to_string())]));
            match api
                .create(
                    &PostParams {
                        field_manager: Some(SECRET_MANAGER.into()),
                        ..PostParams::default()
                    },
                    &secret,
                )
                .await
            {
                Ok(_) => Ok(()),
                // Another reconcile created it first: patch again.
                Err(kube::Error::Api(s)) if s.code == 409 => api
                    .patch(DATASETS_SECRET, &params, &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        Error::kube(
                            format!(
                                "writing {key} into Secret {}/{DATASETS_SECRET}",
                                ctx.config.namespace
                            ),
                            e,
                        )
                    }),
                Err(e) => Err(Error::kube(
                    format!("creating Secret {}/{DATASETS_SECRET}", ctx.config.namespace),
                    e,
                )),
            }
        }
        Err(e) => Err(Error::kube(
            format!(
                "writing {key} into Secret {}/{DATASETS_SECRET}",
                ctx.config.namespace
            ),
            e,
        )),
    }
}

/// The datasets Secret with the labels the operator puts on it.
pub fn datasets_secret_skeleton(ctx: &Context, string_data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(DATASETS_SECRET.into()),
            namespace: Some(ctx.config.namespace.clone()),
            labels: Some(BTreeMap::from([(
                volume::LABEL_MANAGED_BY.to_string(),
                volume::MANAGED_BY.to_string(),
            )])),
            ..Default::default()
        },
        string_data: Some(string_data),
        ..Secret::default()
    }
}

/// Removes one dataset's key from the datasets Secret (merge patch with null).
pub(super) async fn remove_agent_config(ctx: &Context, namespace: &str, name: &str) -> Result<()> {
    let key = agent_config::secret_key(namespace, name);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    ctx.wrote(&key, None);
    let patch = json!({ "data": { key.clone(): null } });
    let params = PatchParams {
        field_manager: Some(SECRET_MANAGER.into()),
        ..PatchParams::default()
    };
    match api
        .patch(DATASETS_SECRET, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            ctx.datasets_changed.notify_one();
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(
            format!(
                "removing {key} from Secret {}/{DATASETS_SECRET}",
                ctx.config.namespace
            ),
            e,
        )),
    }
}
