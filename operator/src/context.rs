//! State shared by every reconcile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use strata_crds::{CachePolicy, Dataset, Migration, StrataNode};

use crate::Result;
use crate::config::OperatorConfig;
use crate::jobs::JobSettings;
use crate::metrics::Metrics;
use crate::node_reports;
use crate::source_check::{CheckLimits, SourceChecker};

/// Field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "strata-operator";

/// The reflector stores a Context reads.
pub struct Stores {
    /// StrataNodes.
    pub nodes: Store<StrataNode>,
    /// CachePolicies.
    pub policies: Store<CachePolicy>,
    /// Jobs labelled as the operator's.
    pub jobs: Store<Job>,
    /// CronJobs labelled as the operator's.
    pub cron_jobs: Store<CronJob>,
    /// Migrations.
    pub migrations: Store<Migration>,
}

/// What reconciles share.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Operator settings.
    pub config: OperatorConfig,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Event recorder (reporting controller `strata-operator`, instance = identity).
    pub recorder: Recorder,
    /// The StrataNode reports, kept current by a reflector.
    pub nodes: Store<StrataNode>,
    /// CachePolicies in scope (a reflector: resolving a policy costs no API call).
    pub policies: Store<CachePolicy>,
    /// Jobs the operator made (label-filtered reflector), for Dataset status.
    pub jobs: Store<Job>,
    /// CronJobs the operator made.
    pub cron_jobs: Store<CronJob>,
    /// Migrations in scope: the Dataset controller hands theirs to the agents.
    pub migrations: Store<Migration>,
    /// Hash and time of the last write of each datasets-Secret key, so an
    /// unchanged config is not re-sent on every reconcile.
    written: Mutex<HashMap<String, (u64, Instant)>>,
    /// Cached source checks.
    pub sources: SourceChecker,
    /// Job manifest settings from the flags.
    pub job_settings: JobSettings,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Signalled when the datasets Secret changed, so the node pods are told to refresh it.
    pub datasets_changed: tokio::sync::Notify,
    /// The time of the last upload conflict published as an event, per dataset and node
    /// (`<namespace>/<name>/<node>`).
    conflicts_published: Mutex<HashMap<String, Time>>,
}

impl Context {
    /// Builds the context; fails on bad flags.
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Metrics,
        stores: Stores,
    ) -> Result<Arc<Self>> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(config.identity.clone()),
            },
        );
        let job_settings = JobSettings {
            image: config.agent_image.clone(),
            image_pull_policy: config.image_pull_policy.clone(),
            agent_port: config.agent_port,
            tolerations: config.toleration_list()?,
            node_selector: config.node_selector_map()?,
            token_audience: config.job_token_audience.clone(),
        };
        // Refuse a bad --allowed-local-paths at start, not at the first local source.
        config.allowed_local_path_list()?;
        Ok(Arc::new(Context {
            client,
            config,
            metrics,
            recorder,
            nodes: stores.nodes,
            policies: stores.policies,
            jobs: stores.jobs,
            cron_jobs: stores.cron_jobs,
            migrations: stores.migrations,
            written: Mutex::new(HashMap::new()),
            sources: SourceChecker::default(),
            job_settings,
            failures: Mutex::new(HashMap::new()),
            datasets_changed: tokio::sync::Notify::new(),
            conflicts_published: Mutex::new(HashMap::new()),
        }))
    }

    /// Timeouts of source checks.
    pub fn check_limits(&self) -> CheckLimits {
        CheckLimits {
            check_timeout: self.config.source_check_timeout,
            listing_timeout: self.config.listing_timeout,
            success_ttl: self.config.resync_interval,
        }
    }

    /// What the live nodes report about `ds`, summed (see [`node_reports::usage_of`]).
    pub fn dataset_usage(&self, ds: &Dataset) -> node_reports::DatasetUsage {
        node_reports::usage_of(
            self.nodes.state().iter().map(|n| n.as_ref()),
            &ds.namespace().unwrap_or_default(),
            &ds.name_any(),
            ds.uid().as_deref(),
            self.config.node_stale_after,
            Timestamp::now(),
        )
    }

    /// StrataNodes whose heartbeat is recent.
    pub fn live_nodes(&self) -> Vec<Arc<StrataNode>> {
        let now = Timestamp::now();
        self.nodes
            .state()
            .into_iter()
            .filter(|n| node_reports::is_live(n, self.config.node_stale_after, now))
            .collect()
    }

    /// Publishes an event about `object`; a failure to publish is logged, not fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }

    /// Whether the conflict at `time` under `key` is new (not published yet); marks it
    /// published.
    pub fn conflict_is_new(&self, key: &str, time: &Time) -> bool {
        let mut published = self
            .conflicts_published
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if published.get(key) == Some(time) {
            return false;
        }
        published.insert(key.to_string(), time.clone());
        true
    }

    /// Backoff after a failure of `key`: 1s, 2s, 4s ... capped at 5 minutes.
    pub fn backoff(&self, key: &str) -> Action {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let secs = 1u64 << (*n - 1).min(8);
        Action::requeue(Duration::from_secs(secs.min(300)))
    }

    /// Whether `key` must be (re)written with content hashing to `hash`: it
    /// changed, or the last write is older than the resync interval (so a
    /// Secret edited by hand is repaired).
    pub fn needs_write(&self, key: &str, hash: u64) -> bool {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        !written
            .get(key)
            .is_some_and(|(h, at)| *h == hash && at.elapsed() < self.config.resync_interval)
    }

    /// Records a successful write of `key` (`None`: the key was removed).
    pub fn wrote(&self, key: &str, hash: Option<u64>) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match hash {
            Some(h) => written.insert(key.to_string(), (h, Instant::now())),
            None => written.remove(key),
        };
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}
