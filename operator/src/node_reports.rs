//! Summing the agents' `StrataNode` reports into one Dataset's numbers.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use strata_crds::StrataNode;

/// What the live nodes report about one dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetUsage {
    /// Bytes cached, summed over nodes.
    pub cached_bytes: u64,
    /// Hits summed over nodes.
    pub hits: u64,
    /// Misses summed over nodes.
    pub misses: u64,
    /// Names of the nodes reporting the dataset.
    pub nodes: Vec<String>,
}

/// Whether a node's last heartbeat is recent enough to count. A report with
/// no heartbeat counts (the agent has not finished its first report yet).
pub fn is_live(node: &StrataNode, stale_after: Duration, now: Timestamp) -> bool {
    let Some(beat) = node.status.as_ref().and_then(|s| s.last_heartbeat.as_ref()) else {
        return true;
    };
    let age = now.as_second().saturating_sub(beat.0.as_second());
    age <= i64::try_from(stale_after.as_secs()).unwrap_or(i64::MAX)
}

/// Sums what live nodes report for `namespace/name`. A report carrying a
/// different uid is about an earlier dataset of the same name and is skipped.
pub fn usage_of<'a>(
    nodes: impl IntoIterator<Item = &'a StrataNode>,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    stale_after: Duration,
    now: Timestamp,
) -> DatasetUsage {
    let mut usage = DatasetUsage::default();
    for node in nodes {
        if !is_live(node, stale_after, now) {
            continue;
        }
        let Some(status) = &node.status else { continue };
        for report in &status.datasets {
            let same_uid = match (uid, report.uid.as_deref()) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if report.namespace == namespace && report.name == name && same_uid {
                usage.cached_bytes = usage
                    .cached_bytes
                    .saturating_add(non_negative(report.cached_bytes));
                usage.hits = usage.hits.saturating_add(non_negative(report.hits));
                usage.misses = usage.misses.saturating_add(non_negative(report.misses));
                usage.nodes.push(node.name_any());
            }
        }
    }
    usage.nodes.sort();
    usage
}

/// An API counter (int64) as u64; a negative report counts as zero.
pub fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A u64 for an int64 API field, saturating.
pub fn to_api(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// cachedBytes / totalBytes in percent, rounded down; 100 only when complete.
pub fn cached_percent(cached: u64, total: u64) -> i32 {
    if total == 0 {
        return 100;
    }
    if cached >= total {
        return 100;
    }
    ((u128::from(cached) * 100 / u128::from(total)).min(99)) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use strata_crds::{NodeDatasetUsage, StrataNodeSpec, StrataNodeStatus};

    fn node(name: &str, heartbeat: i64, reports: &[(&str, &str, Option<&str>, u64)]) -> StrataNode {
        let mut n = StrataNode::new(
            name,
            StrataNodeSpec {
                node_name: name.into(),
                endpoint: None,
            },
        );
        n.status = Some(StrataNodeStatus {
            last_heartbeat: Some(Time(Timestamp::from_second(heartbeat).unwrap())),
            datasets: reports
                .iter()
                .map(|(ns, name, uid, bytes)| NodeDatasetUsage {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    uid: uid.map(Into::into),
                    cached_bytes: *bytes as i64,
                    pinned_bytes: None,
                    files: 1,
                    hits: 2,
                    misses: 1,
                    last_update: None,
                })
                .collect(),
            ..Default::default()
        });
        n
    }

    #[test]
    fn sums_live_nodes_with_matching_uid() {
        let now = Timestamp::from_second(10_000).unwrap();
        let nodes = [
            node(
                "a",
                9_990,
                &[
                    ("ml", "imagenet", Some("u1"), 100),
                    ("ml", "other", None, 7),
                ],
            ),
            node("b", 9_950, &[("ml", "imagenet", None, 50)]),
            node("c", 9_990, &[("ml", "imagenet", Some("old"), 1_000)]),
            node("stale", 1_000, &[("ml", "imagenet", Some("u1"), 5_000)]),
        ];
        let usage = usage_of(
            &nodes,
            "ml",
            "imagenet",
            Some("u1"),
            Duration::from_secs(180),
            now,
        );
        assert_eq!(usage.cached_bytes, 150);
        assert_eq!(usage.hits, 4);
        assert_eq!(usage.nodes, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn percent_rounds_down_and_caps() {
        assert_eq!(cached_percent(0, 10), 0);
        assert_eq!(cached_percent(999, 1000), 99);
        assert_eq!(cached_percent(1000, 1000), 100);
        assert_eq!(cached_percent(5000, 1000), 100);
        assert_eq!(cached_percent(1, 3), 33);
    }
}
