//! The dataset's Migrations as the agents see them: a switched Migration's source is
//! served from its target, and a Migration still to copy is handed over with its target
//! (and the target's credentials), so that its Job can ask any agent to run it. A
//! Migration's own problems (a missing Secret) leave it out here and are reported on it.

use kube::ResourceExt;
use strata_crds::{Dataset, Migration, WriteMode};
use strata_wire::config::MigrationConfig;

use crate::Result;
use crate::agent_config;
use crate::context::Context;
use crate::credentials;
use crate::migration_controller::{is_switched, wants_copy};

fn of_dataset(ds: &Dataset, ctx: &Context) -> Vec<std::sync::Arc<Migration>> {
    let namespace = ds.namespace();
    ctx.migrations
        .state()
        .into_iter()
        .filter(|m| m.namespace() == namespace && m.spec.dataset == ds.name_any())
        .collect()
}

/// The dataset as it is served: each source a Migration switched, replaced by its target.
pub(super) fn served(ds: &Dataset, ctx: &Context) -> Dataset {
    let mut served = ds.clone();
    for m in of_dataset(ds, ctx).iter().filter(|m| is_switched(m)) {
        if let Some(source) = served
            .spec
            .sources
            .iter_mut()
            .find(|s| s.name == m.spec.source)
        {
            *source = m.spec.target.in_place_of(source);
        }
    }
    served
}

/// The copies the agents may be asked to run, with their targets' credentials.
pub(super) async fn copies(ds: &Dataset, ctx: &Context) -> Result<Vec<MigrationConfig>> {
    let namespace = ds.namespace().unwrap_or_default();
    let mut copies = Vec::new();
    for m in of_dataset(ds, ctx).iter().filter(|m| wants_copy(m)) {
        let Some(source) =
            ds.spec.sources.iter().find(|s| {
                s.name == m.spec.source && s.effective_write_mode() == WriteMode::ReadOnly
            })
        else {
            continue;
        };
        let credentials = match (
            &m.spec.target.credentials_secret_ref,
            m.spec.target.parsed_uri(),
        ) {
            (Some(secret), Ok(uri)) => {
                let whose = format!("the target of Migration {}", m.name_any());
                match credentials::read_secret(
                    &ctx.client,
                    &namespace,
                    &secret.name,
                    uri.scheme,
                    &whose,
                )
                .await?
                {
                    Ok(c) => Some(c),
                    Err(_) => continue,
                }
            }
            _ => None,
        };
        let mut target =
            agent_config::source_config(&m.spec.target.in_place_of(source), credentials.as_ref());
        // Its own name in the agents' metrics and logs, apart from the source's.
        target.name = format!("migration-{}", m.name_any());
        copies.push(MigrationConfig {
            name: m.name_any(),
            source: m.spec.source.clone(),
            path: m.spec.path.clone(),
            concurrency: usize::try_from(m.spec.concurrency)
                .unwrap_or(1)
                .clamp(1, 64),
            target,
        });
    }
    copies.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(copies)
}
