//! Whether the sources answer, as SourcesReachable, per-source status and the
//! dataset's size. Only with usable credentials: without them nothing can be listed.

use futures::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use strata_crds::{Dataset, DatasetStatus, SourceStatus, condition, format_bytes};

use super::source_access::SourceAccess;
use super::{Problem, set_condition};
use crate::conditions::reason;
use crate::context::Context;
use crate::node_reports::to_api;
use crate::source_check::SourceCheck;

/// Checks every source (cached checks, bounded by the operator's timeouts) and
/// writes what they answered; returns the first source that failed. With a
/// credentials problem the sources keep their last status and the condition
/// carries that problem instead.
pub(super) async fn check_sources(
    ds: &Dataset,
    ctx: &Context,
    access: &SourceAccess,
    old: &DatasetStatus,
    status: &mut DatasetStatus,
) -> Option<Problem> {
    if let Some(p) = &access.problem {
        p.set_on(status, condition::SOURCES_REACHABLE);
        status.sources = old.sources.clone();
        return None;
    }
    let mut source_problem: Option<Problem> = None;
    let limits = ctx.check_limits();
    let checks = join_all(ds.spec.sources.iter().map(|s| {
        let checker = ctx.sources.clone();
        let c = access.credentials.get(&s.name).cloned();
        async move { checker.check(s, c.as_ref(), limits).await }
    }))
    .await;
    let (mut total, mut files, mut sizes_known) = (0u64, 0u64, true);
    let mut node_local = false;
    for (source, (when, check)) in ds.spec.sources.iter().zip(checks) {
        let mut s = SourceStatus {
            name: source.name.clone(),
            reachable: true,
            last_list_time: Some(Time(when)),
            ..SourceStatus::default()
        };
        match check {
            SourceCheck::Reachable {
                total_bytes,
                files: f,
                note,
            } => {
                s.total_bytes = total_bytes.map(to_api);
                s.files = f.map(to_api);
                s.message = note;
                match (total_bytes, f) {
                    (Some(b), Some(n)) => {
                        total = total.saturating_add(b);
                        files = files.saturating_add(n);
                    }
                    _ => sizes_known = false,
                }
            }
            SourceCheck::NodeLocal => {
                node_local = true;
                sizes_known = false;
                s.message = Some("node-local source: checked by the agents".into());
            }
            SourceCheck::Failed { reason: r, message } => {
                s.reachable = false;
                sizes_known = false;
                if source_problem.is_none() {
                    source_problem = Some(Problem {
                        reason: r,
                        message: format!(
                            "{message}. Check the URI, endpoint and network path from the cluster."
                        ),
                    });
                }
                s.message = Some(message);
            }
        }
        status.sources.push(s);
    }
    if sizes_known {
        status.total_bytes = Some(to_api(total));
        status.files = Some(to_api(files));
        status.size = Some(format_bytes(total));
    }
    match &source_problem {
        Some(p) => p.set_on(status, condition::SOURCES_REACHABLE),
        None => set_condition(
            status,
            condition::SOURCES_REACHABLE,
            true,
            if node_local {
                reason::CHECKED_BY_AGENTS
            } else {
                reason::SOURCES_REACHABLE
            },
            if node_local {
                "Remote sources answered; node-local (file://) sources are checked by the agents."
            } else {
                "Every source answered."
            },
        ),
    }
    source_problem
}
