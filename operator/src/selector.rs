//! Label selector matching (the `datasetSelector` of a CachePolicy).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` match `selector` with the Kubernetes semantics: every
/// matchLabels pair and every matchExpressions requirement must hold; an empty
/// selector matches everything. An unknown operator matches nothing.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|req| {
        let value = labels.get(&req.key);
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions() {
        let empty = LabelSelector::default();
        assert!(matches(&empty, &labels(&[])));

        let team = LabelSelector {
            match_labels: Some(labels(&[("team", "vision")])),
            ..Default::default()
        };
        assert!(matches(&team, &labels(&[("team", "vision"), ("x", "y")])));
        assert!(!matches(&team, &labels(&[("team", "nlp")])));

        let req = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: op.into(),
                values: Some(values.iter().map(|s| s.to_string()).collect()),
            }]),
            ..Default::default()
        };
        assert!(matches(
            &req("In", &["hot", "warm"]),
            &labels(&[("tier", "hot")])
        ));
        assert!(!matches(&req("In", &["hot"]), &labels(&[])));
        assert!(matches(&req("NotIn", &["hot"]), &labels(&[])));
        assert!(!matches(
            &req("NotIn", &["hot"]),
            &labels(&[("tier", "hot")])
        ));
        assert!(matches(&req("Exists", &[]), &labels(&[("tier", "x")])));
        assert!(matches(&req("DoesNotExist", &[]), &labels(&[])));
        assert!(!matches(&req("Bogus", &[]), &labels(&[("tier", "x")])));
    }
}
