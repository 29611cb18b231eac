//! Which CachePolicy applies to the dataset, as PolicyResolved and `status.policy`.
//! A policy that cannot be used leaves the built-in defaults in effect.

use kube::ResourceExt;
use strata_crds::{CachePolicy, Dataset, DatasetStatus, condition};

use super::{Problem, set_condition};
use crate::conditions::reason;
use crate::context::Context;
use crate::policy_resolution::Resolution;

/// The CachePolicies of the dataset's namespace, from the reflector (no API call).
pub(super) fn policies_in_namespace(ds: &Dataset, ctx: &Context) -> Vec<CachePolicy> {
    let namespace = ds.namespace().unwrap_or_default();
    ctx.policies
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .map(|p| p.as_ref().clone())
        .collect()
}

/// Writes the resolution into the status; returns the problem when no usable
/// policy was found where one was asked for.
pub(super) fn record_policy(
    status: &mut DatasetStatus,
    ds: &Dataset,
    resolution: &Resolution<'_>,
) -> Option<Problem> {
    let namespace = ds.namespace().unwrap_or_default();
    let problem = match resolution {
        Resolution::Found { policy, by_ref } => {
            let how = if *by_ref {
                "policyRef"
            } else {
                "its datasetSelector"
            };
            status.policy = Some(policy.name_any());
            set_condition(
                status,
                condition::POLICY_RESOLVED,
                true,
                reason::POLICY_FOUND,
                format!("CachePolicy {} applies (by {how}).", policy.name_any()),
            );
            None
        }
        Resolution::Default => {
            set_condition(
                status,
                condition::POLICY_RESOLVED,
                true,
                reason::DEFAULT_POLICY,
                "No CachePolicy names or selects this dataset; built-in defaults apply (no quota, no pins, no preloads).",
            );
            None
        }
        Resolution::NotFound { name: policy } => Some(Problem {
            reason: reason::POLICY_NOT_FOUND,
            message: format!(
                "policyRef names CachePolicy {namespace}/{policy}, which does not exist; create it or fix policyRef. Built-in defaults apply meanwhile."
            ),
        }),
        Resolution::Ambiguous { names } => Some(Problem {
            reason: reason::AMBIGUOUS_POLICY,
            message: format!(
                "CachePolicies {} all select this dataset; set spec.policyRef to pick one, or narrow their datasetSelectors. Built-in defaults apply meanwhile.",
                names.join(", ")
            ),
        }),
        Resolution::Invalid {
            name: policy,
            message,
        } => Some(Problem {
            reason: reason::POLICY_INVALID,
            message: format!(
                "CachePolicy {policy} is invalid: {message}. Built-in defaults apply meanwhile."
            ),
        }),
    };
    if let Some(p) = &problem {
        p.set_on(status, condition::POLICY_RESOLVED);
    }
    problem
}
