//! Whether the dataset's sources may be read: the credentials Secrets they
//! name, and for `file://` sources the host paths the cluster admin allows.
//! A problem here keeps the dataset off the agents.

use std::collections::BTreeMap;

use kube::ResourceExt;
use strata_crds::Dataset;

use super::Problem;
use crate::Result;
use crate::conditions::reason;
use crate::context::Context;
use crate::credentials::{self, AgentCredentials};

/// The sources' credentials, by source name, and the first problem found.
pub(super) struct SourceAccess {
    /// Credentials of the sources that name a usable Secret.
    pub credentials: BTreeMap<String, AgentCredentials>,
    /// A missing Secret or key, or a host path not allowed.
    pub problem: Option<Problem>,
}

/// Reads every source's credentials Secret, then checks local host paths.
pub(super) async fn read_source_access(ds: &Dataset, ctx: &Context) -> Result<SourceAccess> {
    let namespace = ds.namespace().unwrap_or_default();
    let mut creds: BTreeMap<String, AgentCredentials> = BTreeMap::new();
    let mut credential_problem: Option<Problem> = None;
    for source in &ds.spec.sources {
        let Some(reference) = &source.credentials_secret_ref else {
            continue;
        };
        let Ok(uri) = source.parsed_uri() else {
            continue;
        };
        let whose = format!("source {}", source.name);
        match credentials::read_secret(&ctx.client, &namespace, &reference.name, uri.scheme, &whose)
            .await?
        {
            Ok(c) => {
                creds.insert(source.name.clone(), c);
            }
            Err((reason, message)) => {
                if credential_problem.is_none() {
                    credential_problem = Some(Problem { reason, message });
                }
            }
        }
    }

    // A file:// source only under the host paths the admin allows (the agents refuse
    // any other too); like missing credentials, this keeps the dataset off the agents.
    if credential_problem.is_none() {
        credential_problem = local_path_problem(ds, &ctx.config.allowed_local_path_list()?);
    }
    Ok(SourceAccess {
        credentials: creds,
        problem: credential_problem,
    })
}

/// The first `file://` source outside the allowed host paths, as a problem that names the
/// chart value to change.
fn local_path_problem(ds: &Dataset, allowed: &[String]) -> Option<Problem> {
    let under = |path: &str, root: &str| {
        let path = path.trim_end_matches('/');
        root == "/" || path == root || path.starts_with(&format!("{root}/"))
    };
    ds.spec.sources.iter().find_map(|source| {
        let uri = source.parsed_uri().ok()?;
        if uri.scheme != strata_crds::Scheme::File || allowed.iter().any(|r| under(&uri.path, r)) {
            return None;
        }
        let now = if allowed.is_empty() {
            "none are allowed now".to_string()
        } else {
            format!("allowed now: {}", allowed.join(", "))
        };
        Some(Problem {
            reason: reason::LOCAL_PATH_NOT_ALLOWED,
            message: format!(
                "source {} reads the host path {}, which is not under a host path the cluster admin allows ({now}); the admin adds it to the chart value node.localSources.allowedHostPaths (operator flag --allowed-local-paths), or use a remote source.",
                source.name, uri.path
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_sources_must_be_under_an_allowed_host_path() {
        let ds = |uri: &str| {
            Dataset::new(
                "d",
                serde_json::from_value(serde_json::json!({"sources": [
                    {"name": "s3", "uri": "s3://b/p", "mountPath": "/remote"},
                    {"name": "lake", "uri": uri, "mountPath": "/lake"}
                ]}))
                .unwrap(),
            )
        };
        let allowed = vec!["/mnt/data".to_string()];
        assert!(local_path_problem(&ds("file:///mnt/data/x/"), &allowed).is_none());
        assert!(local_path_problem(&ds("file:///mnt/data"), &allowed).is_none());
        for outside in ["file:///mnt/database/", "file:///etc/", "file:///"] {
            let problem = local_path_problem(&ds(outside), &allowed).unwrap();
            assert_eq!(problem.reason, reason::LOCAL_PATH_NOT_ALLOWED);
            assert!(
                problem
                    .message
                    .contains("node.localSources.allowedHostPaths")
                    && problem.message.contains("source lake"),
                "{}",
                problem.message
            );
        }
        assert!(local_path_problem(&ds("file:///mnt/data/"), &[]).is_some());
        assert!(local_path_problem(&ds("file:///anything/"), &["/".into()]).is_none());
    }
}
