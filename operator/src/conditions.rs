//! Status conditions: set one, keeping `lastTransitionTime` unless the status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition reasons the operator writes (documented in docs/operator.md).
pub mod reason {
    /// Everything is in order.
    pub const READY: &str = "Ready";
    /// The spec passed validation.
    pub const VALID: &str = "Valid";
    /// The spec breaks a rule (stored before the rule existed, or written around the API server).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A source's credentialsSecretRef names a Secret that does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The credentials Secret lacks a key the source's scheme needs.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// A source could not be reached (connect or listing failed or timed out).
    pub const SOURCE_UNREACHABLE: &str = "SourceUnreachable";
    /// A `file://` source names a host path the cluster admin does not allow.
    pub const LOCAL_PATH_NOT_ALLOWED: &str = "LocalPathNotAllowed";
    /// The store refused the credentials.
    pub const ACCESS_DENIED: &str = "AccessDenied";
    /// Every source answered.
    pub const SOURCES_REACHABLE: &str = "SourcesReachable";
    /// Sources living on the nodes (file://) are checked by the agents, not the operator.
    pub const CHECKED_BY_AGENTS: &str = "CheckedByAgents";
    /// The policy named in policyRef does not exist.
    pub const POLICY_NOT_FOUND: &str = "PolicyNotFound";
    /// More than one CachePolicy's selector matches and no policyRef picks one.
    pub const AMBIGUOUS_POLICY: &str = "AmbiguousPolicy";
    /// The policy in effect has an invalid spec.
    pub const POLICY_INVALID: &str = "PolicyInvalid";
    /// Found by policyRef or selector.
    pub const POLICY_FOUND: &str = "PolicyFound";
    /// No policy applies; built-in defaults are used.
    pub const DEFAULT_POLICY: &str = "DefaultPolicy";
    /// The agents were given the dataset; none has reported it yet.
    pub const WAITING_FOR_NODES: &str = "WaitingForNodes";
    /// A preload or pin job is running.
    pub const JOB_RUNNING: &str = "JobRunning";
    /// No preload or pin job is running.
    pub const NO_JOB_RUNNING: &str = "NoJobRunning";
    /// Live nodes report errors reading or listing the dataset's sources.
    pub const NODE_REPORTS_ERRORS: &str = "NodeReportsErrors";
    /// No live node reports a source error.
    pub const NO_NODE_ERRORS: &str = "NoNodeErrors";
    /// Live nodes report failed uploads of the dataset's writes.
    pub const UPLOADS_FAILING: &str = "UploadsFailing";
    /// Event: an upload found its object changed at the source (both versions kept).
    pub const UPLOAD_CONFLICT: &str = "UploadConflict";
    /// No live node reports a failed upload.
    pub const NO_UPLOAD_ERRORS: &str = "NoUploadErrors";
    /// The PV and the claim have the access modes the write mode asks for.
    pub const VOLUME_UP_TO_DATE: &str = "VolumeUpToDate";
    /// The claim was made for an earlier write mode and Kubernetes does not change
    /// a claim's access modes: it must be deleted to be made again.
    pub const CLAIM_ACCESS_MODE_OUTDATED: &str = "ClaimAccessModeOutdated";
    /// An unbound PV made for an earlier write mode was deleted to be made again.
    pub const VOLUME_RECREATING: &str = "VolumeRecreating";
}

/// The `status` string of a condition.
pub fn status_str(ok: bool) -> &'static str {
    if ok { "True" } else { "False" }
}

/// Sets condition `type_` in `conditions`. `lastTransitionTime` is kept when
/// the status is unchanged, so it says when the state last flipped.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = status_str(ok);
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let condition = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether two condition lists say the same thing (ignoring timestamps).
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            find(b, &x.type_).is_some_and(|y| {
                x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
                    && x.observed_generation == y.observed_generation
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_unless_status_changes() {
        let mut conditions = Vec::new();
        set(&mut conditions, "Ready", false, "A", "first", Some(1));
        let old = Time(Timestamp::from_second(1_000).unwrap());
        conditions[0].last_transition_time = old.clone();

        set(
            &mut conditions,
            "Ready",
            false,
            "B",
            "same status, new reason",
            Some(2),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, old);
        assert_eq!(conditions[0].reason, "B");

        set(&mut conditions, "Ready", true, "Ready", "flipped", Some(2));
        assert_ne!(conditions[0].last_transition_time, old);
        assert_eq!(conditions[0].status, "True");
    }

    #[test]
    fn same_ignores_timestamps_only() {
        let mut a = Vec::new();
        set(&mut a, "Ready", true, "Ready", "ok", Some(1));
        let mut b = a.clone();
        b[0].last_transition_time = Time(Timestamp::from_second(5).unwrap());
        assert!(same(&a, &b));
        b[0].message = "different".into();
        assert!(!same(&a, &b));
    }
}
