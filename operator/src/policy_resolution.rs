//! Which CachePolicy governs a Dataset: its `policyRef`, else the one policy
//! whose selector matches its labels. Two matches is reported, never guessed.

use kube::ResourceExt;
use strata_crds::{CachePolicy, Dataset};

use crate::selector;

/// The outcome of resolving a dataset's policy.
#[derive(Clone, Debug)]
pub enum Resolution<'a> {
    /// Found (by reference when `by_ref`, else by selector) and valid.
    Found {
        policy: &'a CachePolicy,
        by_ref: bool,
    },
    /// No policyRef and no selector matches: built-in defaults.
    Default,
    /// policyRef names a policy that does not exist.
    NotFound { name: String },
    /// Several selectors match (names sorted).
    Ambiguous { names: Vec<String> },
    /// The chosen policy's spec is invalid.
    Invalid { name: String, message: String },
}

impl Resolution<'_> {
    /// The policy in effect, if any.
    pub fn policy(&self) -> Option<&CachePolicy> {
        match self {
            Resolution::Found { policy, .. } => Some(policy),
            _ => None,
        }
    }
}

/// Resolves the policy of `dataset` among `policies` (same namespace).
pub fn resolve<'a>(dataset: &Dataset, policies: &'a [CachePolicy]) -> Resolution<'a> {
    let check = |policy: &'a CachePolicy, by_ref: bool| match policy.validate() {
        Ok(()) => match ephemeral_write_back(dataset, policy) {
            Some(message) => Resolution::Invalid {
                name: policy.name_any(),
                message,
            },
            None => Resolution::Found { policy, by_ref },
        },
        Err(e) => Resolution::Invalid {
            name: policy.name_any(),
            message: e.to_string(),
        },
    };
    if let Some(reference) = &dataset.spec.policy_ref {
        return match policies.iter().find(|p| p.name_any() == reference.name) {
            Some(policy) => check(policy, true),
            None => Resolution::NotFound {
                name: reference.name.clone(),
            },
        };
    }
    let labels = dataset.labels();
    let matching: Vec<&CachePolicy> = policies
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.spec
                .dataset_selector
                .as_ref()
                .is_some_and(|s| selector::matches(s, labels))
        })
        .collect();
    match matching.as_slice() {
        [] => Resolution::Default,
        [one] => check(one, false),
        many => {
            let mut names: Vec<String> = many.iter().map(|p| p.name_any()).collect();
            names.sort();
            Resolution::Ambiguous { names }
        }
    }
}

/// An Ephemeral policy over a dataset with a WriteBack source: refused (a rule across two
/// objects, which CEL cannot see), since the unsent writes would go with the node.
fn ephemeral_write_back(dataset: &Dataset, policy: &CachePolicy) -> Option<String> {
    if policy.spec.persistence != strata_crds::Persistence::Ephemeral {
        return None;
    }
    let source = dataset
        .spec
        .sources
        .iter()
        .find(|s| s.effective_write_mode() == strata_crds::WriteMode::WriteBack)?;
    Some(format!(
        "its persistence is Ephemeral and source {} of this dataset is WriteBack, whose unsent writes would go with an ephemeral node; use writeMode WriteThrough for that source, or a Persistent policy",
        source.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn policy(name: &str, selector: Option<serde_json::Value>) -> CachePolicy {
        let mut spec = serde_json::json!({"quota": "1Gi"});
        if let Some(s) = selector {
            spec["datasetSelector"] = s;
        }
        CachePolicy::new(name, serde_json::from_value(spec).unwrap())
    }

    fn dataset(labels: &[(&str, &str)], policy_ref: Option<&str>) -> Dataset {
        let mut spec =
            serde_json::json!({"sources": [{"name": "a", "uri": "s3://b/p", "mountPath": "/"}]});
        if let Some(r) = policy_ref {
            spec["policyRef"] = serde_json::json!({"name": r});
        }
        let mut ds = Dataset::new("d", serde_json::from_value(spec).unwrap());
        ds.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        ds
    }

    #[test]
    fn reference_wins_then_selector_then_default() {
        let policies = vec![
            policy(
                "hot",
                Some(serde_json::json!({"matchLabels": {"team": "vision"}})),
            ),
            policy("named-only", None),
        ];
        let by_ref = resolve(
            &dataset(&[("team", "vision")], Some("named-only")),
            &policies,
        );
        assert!(matches!(by_ref, Resolution::Found { by_ref: true, .. }));
        assert_eq!(by_ref.policy().unwrap().name_any(), "named-only");
        let by_sel = resolve(&dataset(&[("team", "vision")], None), &policies);
        assert_eq!(by_sel.policy().unwrap().name_any(), "hot");
        assert!(matches!(
            resolve(&dataset(&[], None), &policies),
            Resolution::Default
        ));
        assert!(matches!(
            resolve(&dataset(&[], Some("missing")), &policies),
            Resolution::NotFound { .. }
        ));
    }

    #[test]
    fn two_matching_selectors_are_ambiguous() {
        let policies = vec![
            policy("b", Some(serde_json::json!({}))),
            policy(
                "a",
                Some(serde_json::json!({"matchLabels": {"team": "vision"}})),
            ),
        ];
        match resolve(&dataset(&[("team", "vision")], None), &policies) {
            Resolution::Ambiguous { names } => assert_eq!(names, vec!["a", "b"]),
            other => panic!("{other:?}"),
        }
    }

    /// An Ephemeral policy is refused for a dataset with a WriteBack source (defaults
    /// apply), taken for one with a WriteThrough source.
    #[test]
    fn an_ephemeral_policy_refuses_write_back() {
        let mut ephemeral = policy("burst", Some(serde_json::json!({})));
        ephemeral.spec.persistence = strata_crds::Persistence::Ephemeral;
        let policies = vec![ephemeral];
        let mut ds = dataset(&[], None);
        ds.spec.sources[0].write_mode = Some(strata_crds::WriteMode::WriteBack);
        match resolve(&ds, &policies) {
            Resolution::Invalid { name, message } => {
                assert_eq!(name, "burst");
                assert!(
                    message.contains("source a of this dataset is WriteBack")
                        && message.contains("WriteThrough"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        ds.spec.sources[0].write_mode = Some(strata_crds::WriteMode::WriteThrough);
        assert!(matches!(resolve(&ds, &policies), Resolution::Found { .. }));
    }
}
