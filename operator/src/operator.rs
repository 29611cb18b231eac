//! Wiring: the metrics endpoint, leader election, and (while leader) the
//! controllers and the node-set loop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{WatchStreamExt, reflector as reflect};
use kube::{Api, Client, ResourceExt};
use strata_crds::{CachePolicy, Dataset, Migration, Replicas, StrataNode};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::context::{Context, Stores};
use crate::leader::LeaderElector;
use crate::metrics::Metrics;
use crate::volume::{LABEL_MANAGED_BY, MANAGED_BY};
use crate::{
    OperatorConfig, Result, dataset_controller, migration_controller, node_set, policy_controller,
};

/// How often the node DaemonSet, CSIDriver and Secrets are re-applied.
const NODE_SET_INTERVAL: Duration = Duration::from_secs(60);
/// Reconciles run at once per controller (bounds API load with many datasets).
const CONCURRENCY: u16 = 16;

/// One operator replica.
pub struct Operator {
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
}

impl Operator {
    /// A replica; checks the flags.
    pub fn new(client: Client, config: OperatorConfig) -> Result<Self> {
        config.validate()?;
        Ok(Operator {
            client,
            config,
            metrics: Metrics::new(),
        })
    }

    /// The replica's metrics (shared with the endpoint).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Runs until `shutdown` resolves (then releases the Lease) or leadership
    /// is lost (then returns `Error::LostLease`; the process should exit and be
    /// restarted). `bound` receives the metrics address once listening.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        bound: Option<oneshot::Sender<SocketAddr>>,
    ) -> Result<()> {
        let (addr, server) = self.metrics.serve(self.config.metrics_addr).await?;
        info!(%addr, "serving /metrics and /healthz");
        if let Some(tx) = bound {
            let _ = tx.send(addr);
        }
        let elector = LeaderElector::new(
            self.client.clone(),
            self.config.lease_namespace(),
            &self.config.lease_name,
            &self.config.identity,
            self.config.lease_duration,
        );
        let work = async {
            elector.acquire().await;
            self.metrics.leader.set(1);
            let result = tokio::select! {
                // Boxed: the controllers' futures are large, and debug builds
                // would otherwise overflow a worker thread's stack.
                r = Box::pin(run_controllers(self.client.clone(), self.config.clone(), self.metrics.clone())) => r,
                lost = elector.hold() => Err(lost),
            };
            self.metrics.leader.set(0);
            result
        };
        tokio::select! {
            () = server => Ok(()),
            r = work => r,
            () = shutdown => {
                elector.release().await;
                Ok(())
            }
        }
    }
}

/// The controllers; runs until dropped (or a watch setup fails fatally).
pub async fn run_controllers(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
) -> Result<()> {
    let wc = watcher::Config::default().any_semantic();
    let scope = Scoped {
        client: client.clone(),
        namespace: config.watch_namespace.clone(),
    };
    let (nodes, node_writer) = reflector::store::<StrataNode>();
    let node_reflector = Box::pin(drain(
        "StrataNodes",
        reflect(
            node_writer,
            watcher(Api::<StrataNode>::all(client.clone()), wc.clone()),
        ),
    ));
    // Reflectors for what reconciles read, so a reconcile costs no list calls.
    let (policies_store, policies_writer) = reflector::store::<CachePolicy>();
    let (jobs_store, jobs_writer) = reflector::store::<Job>();
    let (crons_store, crons_writer) = reflector::store::<CronJob>();
    let (migrations_store, migrations_writer) = reflector::store::<Migration>();
    let ours = watcher::Config::default()
        .any_semantic()
        .labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let policy_reflector = Box::pin(drain(
        "CachePolicies",
        reflect(
            policies_writer,
            watcher(scope.get::<CachePolicy>(), wc.clone()),
        ),
    ));
    let job_reflector = Box::pin(drain(
        "Jobs",
        reflect(jobs_writer, watcher(scope.get::<Job>(), ours.clone())),
    ));
    let cron_reflector = Box::pin(drain(
        "CronJobs",
        reflect(crons_writer, watcher(scope.get::<CronJob>(), ours)),
    ));
    let migration_reflector = Box::pin(drain(
        "Migrations",
        reflect(
            migrations_writer,
            watcher(scope.get::<Migration>(), wc.clone()),
        ),
    ));
    let stores = Stores {
        nodes: nodes.clone(),
        policies: policies_store.clone(),
        jobs: jobs_store.clone(),
        cron_jobs: crons_store.clone(),
        migrations: migrations_store.clone(),
    };
    let ctx = Context::new(client.clone(), config, metrics, stores)?;

    let controller_config = ControllerConfig::default().concurrency(CONCURRENCY);
    let datasets =
        Controller::new(scope.get::<Dataset>(), wc.clone()).with_config(controller_config.clone());
    let dataset_store = datasets.store();
    let store_for_policies = dataset_store.clone();
    let datasets = datasets
        .owns(scope.get::<PersistentVolumeClaim>(), wc.clone())
        .watches(Api::<StrataNode>::all(client.clone()), wc.clone(), |node| {
            node.status
                .map(|s| s.datasets)
                .unwrap_or_default()
                .into_iter()
                .map(|d| ObjectRef::<Dataset>::new(&d.name).within(&d.namespace))
                .collect::<Vec<_>>()
        })
        // A Migration's target and its switch are handed to the agents with its dataset.
        .watches(scope.get::<Migration>(), wc.clone(), |m| {
            let namespace = m.namespace().unwrap_or_default();
            Some(ObjectRef::<Dataset>::new(&m.spec.dataset).within(&namespace))
        })
        .watches(scope.get::<CachePolicy>(), wc.clone(), move |policy| {
            let namespace = policy.namespace();
            store_for_policies
                .state()
                .iter()
                .filter(|d| d.namespace() == namespace)
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(
            dataset_controller::reconcile,
            dataset_controller::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {})
        .boxed();

    let migrations = Controller::new(scope.get::<Migration>(), wc.clone())
        .with_config(controller_config.clone());
    let migrations_for_nodes = migrations.store();
    let migrations = migrations
        .owns(scope.get::<Job>(), wc.clone())
        // Progress comes in the nodes' reports: each copying Migration looks again.
        .watches(
            Api::<StrataNode>::all(client.clone()),
            wc.clone(),
            move |_node| {
                migrations_for_nodes
                    .state()
                    .iter()
                    .filter(|m| migration_controller::awaits_reports(m))
                    .map(|m| ObjectRef::from_obj(m.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(
            migration_controller::reconcile,
            migration_controller::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {})
        .boxed();

    let policies =
        Controller::new(scope.get::<CachePolicy>(), wc.clone()).with_config(controller_config);
    let policy_store = policies.store();
    let policy_store_for_nodes = policy_store.clone();
    let policies = policies
        .owns(scope.get::<Job>(), wc.clone())
        .owns(scope.get::<CronJob>(), wc.clone())
        .watches(scope.get::<Dataset>(), wc.clone(), move |ds| {
            let namespace = ds.namespace();
            policy_store
                .state()
                .iter()
                .filter(|p| p.namespace() == namespace)
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches(Api::<StrataNode>::all(client.clone()), wc, move |_node| {
            // Only pins on every node depend on the set of nodes.
            policy_store_for_nodes
                .state()
                .iter()
                .filter(|p| {
                    let default = p.spec.replicas().ok();
                    p.spec.pin.iter().any(|r| {
                        r.replicas
                            .as_ref()
                            .map(Replicas::parse)
                            .transpose()
                            .ok()
                            .flatten()
                            .or(default)
                            == Some(Replicas::All)
                    })
                })
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(
            policy_controller::reconcile,
            policy_controller::error_policy,
            ctx.clone(),
        )
        .for_each(|_| async {})
        .boxed();

    let node_set_loop = node_set_loop(ctx.clone()).boxed();
    let nudge_ctx = ctx.clone();
    let nudge_loop = async move { node_set::nudge_node_pods_loop(&nudge_ctx).await }.boxed();
    // Reconciles start once the stores they read are filled.
    let controllers = Box::pin(async {
        let ready = futures::future::join5(
            nodes.wait_until_ready(),
            policies_store.wait_until_ready(),
            jobs_store.wait_until_ready(),
            crons_store.wait_until_ready(),
            migrations_store.wait_until_ready(),
        )
        .await;
        if let (Ok(()), Ok(()), Ok(()), Ok(()), Ok(())) = ready {
            tokio::join!(datasets, policies, migrations, node_set_loop, nudge_loop);
        }
    });
    tokio::join!(
        node_reflector,
        policy_reflector,
        job_reflector,
        cron_reflector,
        migration_reflector,
        controllers
    );
    Ok(())
}

/// Api handles for all namespaces or the one watched namespace.
struct Scoped {
    client: Client,
    namespace: String,
}

impl Scoped {
    fn get<K>(&self) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        if self.namespace.is_empty() {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &self.namespace)
        }
    }
}

/// Polls a reflector stream for as long as it runs, logging watch errors.
async fn drain<K, S>(what: &'static str, stream: S)
where
    S: futures::Stream<Item = std::result::Result<watcher::Event<K>, watcher::Error>>,
{
    stream
        .default_backoff()
        .for_each(|event| async move {
            if let Err(e) = event {
                warn!(error = %e, "watching {what}");
            }
        })
        .await;
}

async fn node_set_loop(ctx: Arc<Context>) {
    loop {
        match node_set::reconcile(&ctx).await {
            Ok(()) => tokio::time::sleep(NODE_SET_INTERVAL).await,
            Err(e) => {
                warn!(error = %e, "applying the node DaemonSet, CSIDriver and Secrets");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}
